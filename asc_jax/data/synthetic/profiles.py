"""Difficulty profiles of the synthetic set: how much scenes overlap, places differ and devices
distort.

"easy" is the original generator: every recording is its own class's recipe alone, through
mildly coloured devices. A small CNN nearly solves it (configs/demo.py: 0.90-0.93 macro accuracy
at split 100 in earlier measurements), so
teachers have nothing left to teach. It stays for unit tests, which need a set that trains fast.

"realistic" (the demos' profile) adds what makes TAU hard, each part a field of `Profile`:
  - shared sources: every recording also carries other scenes' recipes (babble, announcements,
    traffic, rail, birds, wind, music...), picked per location, each class of the scene's
    acoustic group (indoor halls, streets and parks, vehicles) 4x as likely as any other class
    (53-67 % of neighbours come from the own group), the way airport, shopping mall and metro
    station overlap in TAU;
  - per-clip mixture: those neighbours' levels drift over the recording, so the 1-s clips cut
    from it differ in how much of their own class they hold; a shared urban background (HVAC,
    distant traffic, wind) sits at a per-recording SNR;
  - places: each location colours its whole mix (resonances, tilt), and test locations are
    unseen (as in both profiles);
  - devices: the responses of `devices.DEVICE_MODELS` exaggerated (in dB) by a factor, larger
    for the unseen devices s4-s6.
The numbers were tuned against difficulty targets of the no-KD Rep-Mobile baseline only (README,
"The embedded dataset"), never against KD or pruning results.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import fft as sfft

from asc_jax.data.synthetic import dsp
from asc_jax.data.synthetic.dsp import F32
from asc_jax.data.tau import CLASSES, UNSEEN_DEVICES


# TAU's confusable groups: most confusions stay inside them.
GROUPS: tuple[tuple[str, ...], ...] = (
    ("airport", "shopping_mall", "metro_station"),
    ("park", "public_square", "street_pedestrian", "street_traffic"),
    ("bus", "metro", "tram"),
)


@dataclasses.dataclass(frozen=True)
class Profile:
    neighbours: int = 0  # Other scenes' recipes mixed into every recording.
    # Level of each neighbour relative to the recording's own scene, drawn per location.
    neighbour_db: tuple[float, float] = (-12.0, 0.0)
    neighbour_swing_db: float = 0.0  # Peak drift of a neighbour's level over the recording.
    cross_group_weight: float = 1.0  # Odds of a neighbour from another group vs. the same group.
    # Scene mix to shared urban background, in dB, drawn per recording (None: no background).
    background_snr_db: tuple[float, float] | None = None
    location_eq_db: float = 0.0  # Std of the per-location colouration peaks' gains (dB).
    location_tilt_db: float = 0.0  # Per-location spectral tilt drawn within +-this dB/octave.
    device_strength: float = 1.0  # Seen devices' responses, in dB, times this.
    unseen_device_strength: float = 1.0  # The same for s4-s6.

    def __post_init__(self):
        # Checked here, not halfway through rendering in a worker thread.
        lo, hi = self.neighbour_db
        if lo > hi or self.neighbours < 0 or self.cross_group_weight < 0 or self.neighbour_swing_db < 0:
            raise ValueError(f"invalid synthetic profile {self}")
        if self.neighbours > min(len(g) for g in GROUPS) - 1 and self.cross_group_weight == 0:
            raise ValueError(f"{self.neighbours} neighbours need cross_group_weight > 0 (smallest group: "
                             f"{min(len(g) for g in GROUPS)} classes)")
        if self.neighbours > len(CLASSES) - 1:
            raise ValueError(f"{self.neighbours} neighbours, but only {len(CLASSES) - 1} other classes")
        if self.background_snr_db is not None and self.background_snr_db[0] > self.background_snr_db[1]:
            raise ValueError(f"background_snr_db {self.background_snr_db} is not (low, high)")

    def strength(self, device: str) -> float:
        return self.unseen_device_strength if device in UNSEEN_DEVICES else self.device_strength


PROFILES: dict[str, Profile] = {
    "easy": Profile(),
    "realistic": Profile(
        neighbours=2,
        neighbour_db=(-20.0, -6.0),
        neighbour_swing_db=6.0,
        cross_group_weight=0.25,
        background_snr_db=(5.0, 20.0),
        location_eq_db=3.0,
        location_tilt_db=1.0,
        device_strength=1.6,
        unseen_device_strength=2.2,
    ),
}

def check_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown synthetic profile {name!r}; known: {sorted(PROFILES)}")
    return PROFILES[name]


def neighbour_weights(scene: int, profile: Profile) -> np.ndarray:
    """Probability of each class being one of `scene`'s neighbours (0 for itself)."""
    group = next(g for g in GROUPS if CLASSES[scene] in g)
    w = np.array([0.0 if k == scene else (1.0 if c in group else profile.cross_group_weight)
                  for k, c in enumerate(CLASSES)])
    return w / w.sum()


def location_colour(loc: np.random.Generator, n: int, sr: int, profile: Profile) -> np.ndarray:
    """A place's colouration of everything heard there: three log-frequency resonances or notches
    and a tilt (surfaces, room modes, where the microphone stood)."""
    mag = dsp.slope(n, sr, float(loc.uniform(-1.0, 1.0) * profile.location_tilt_db))
    for _ in range(3):
        fc = float(np.exp(loc.uniform(np.log(100.0), np.log(8000.0))))
        mag = mag * dsp.peak(n, sr, fc, float(loc.normal(0.0, profile.location_eq_db)), float(loc.uniform(0.3, 1.0)))
    return mag


def urban_background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Spectrum of the background every city shares: HVAC hum, distant traffic rumble, wind."""
    canvas = dsp.Canvas(n, sr)
    canvas.bed(rng, canvas.bp(20.0, 300.0) * canvas.tilt(-6.0), float(rng.uniform(-6.0, 0.0)))
    canvas.bed(rng, canvas.bp(100.0, 4000.0) * canvas.tilt(-3.0), float(rng.uniform(-12.0, -3.0)))
    canvas.bed(rng, canvas.bp(20.0, 500.0) * canvas.tilt(-6.0), float(rng.uniform(-15.0, 0.0)),
               env=0.2 + dsp.slow(rng, n, sr, 0.7))
    return canvas.spectrum(rng)


def drifting(spec: np.ndarray, rng: np.random.Generator, n: int, sr: int, swing_db: float) -> np.ndarray:
    """`spec` with its level drifting within +-swing_db over the recording (about every 2 s)."""
    if swing_db <= 0:
        return spec
    gain = F32(10.0) ** (F32(swing_db / 20.0) * (F32(2.0) * dsp.slow(rng, n, sr, 0.5) - F32(1.0)))
    return sfft.rfft(sfft.irfft(spec, n=n) * gain)
