"""What a synthetic dataset holds: its config, its recordings and nested splits, and the audio
of each recording.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from asc_jax.data.synthetic import dsp, profiles
from asc_jax.data.synthetic.devices import apply_device
from asc_jax.data.synthetic.dsp import F32
from asc_jax.data.synthetic.scenes import SCENES
from asc_jax.data.tau import CLASSES, DEVICES, SEEN_DEVICES

TRAIN_SPLITS = (5, 10, 25, 50, 100)
CITIES = ("amsterdam", "barcelona", "helsinki", "lisbon", "london",
          "lyon", "milan", "paris", "prague", "stockholm", "vienna")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of a generated dataset (everything that changes its content)."""

    n_train_per_class_device: int = 50  # clips per (class, seen device) in split100
    n_test_per_class_device: int = 10  # clips per (class, device) in test.csv, all 9 devices
    clips_per_recording: int = 5  # 1-s clips cut from one continuous recording
    train_locations_per_class: int = 6  # distinct "places" per class in development-train
    test_locations_per_class: int = 3  # test places, disjoint from the training ones
    sample_rate: int = 44100  # TAU sample rate
    seed: int = 0  # root of every random choice
    # Difficulty (asc_jax.data.synthetic.profiles): "easy" (unit tests) or "realistic" (demos).
    profile: str = "easy"

    def __post_init__(self):
        profiles.check_profile(self.profile)
        for name in ("n_train_per_class_device", "n_test_per_class_device"):
            value = getattr(self, name)
            if value <= 0 or value % self.clips_per_recording:
                raise ValueError(
                    f"{name}={value} must be a positive multiple of "
                    f"clips_per_recording={self.clips_per_recording}"
                )
        if min(self.train_locations_per_class, self.test_locations_per_class, self.clips_per_recording) < 1:
            raise ValueError("locations per class and clips_per_recording must be >= 1")


@dataclass(frozen=True)
class Recording:
    """One continuous synthetic recording, cut into clips_per_recording clips."""

    scene: int
    city: str
    location: int
    segment: int
    device: str
    test: bool

    @property
    def identifier(self) -> str:
        return f"{self.city}-{self.location}"

    def filename(self, clip: int) -> str:
        return (f"audio/{CLASSES[self.scene]}-{self.city}-{self.location}-"
                f"{self.segment}-{clip}-{self.device}.wav")


def _seed(cfg: SyntheticConfig, *parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, *parts]))


def render_recording(rec: Recording, cfg: SyntheticConfig) -> np.ndarray:
    """Renders one recording; returns float32 (clips_per_recording * sample_rate,) in [-1, 1]."""
    sr = cfg.sample_rate
    n_out = cfg.clips_per_recording * sr
    # Render a little longer at an FFT-friendly size that is a multiple of 4 (see sources.babble).
    n = 4 * sfft.next_fast_len(-(-n_out // 4), real=True)
    loc = _seed(cfg, 1, rec.location)
    rng = _seed(cfg, 2, rec.segment)
    canvas = dsp.Canvas(n, sr)
    SCENES.get(CLASSES[rec.scene])(canvas, loc, rng)
    spec = canvas.spectrum(rng)
    profile = profiles.check_profile(cfg.profile)
    if profile != profiles.PROFILES["easy"]:
        spec = _shared_mix(spec, rec, cfg, profile, n)
    # Loudness is a property of the place (plus a little per recording), not of the class.
    level_db = loc.uniform(-32.0, -22.0) + rng.uniform(-2.0, 2.0)
    spec *= F32(10.0 ** (level_db / 20.0) / dsp.spec_rms(spec, n))
    audio = apply_device(spec, n, sr, rec.device, rng, profile.strength(rec.device))[:n_out]
    return np.clip(audio, -1.0, 32767.0 / 32768.0).astype(F32)


def _unit(spec: np.ndarray, n: int) -> np.ndarray:
    return spec * F32(1.0 / max(dsp.spec_rms(spec, n), 1e-20))


def _shared_mix(own: np.ndarray, rec: Recording, cfg: SyntheticConfig, profile: profiles.Profile,
                n: int) -> np.ndarray:
    """The recording's own scene mixed with its location's neighbour scenes, the shared urban
    background and the location's colouration (see `profiles`).

    Draws from streams of their own (3-6), so the own scene's audio is the easy profile's.
    """
    sr = cfg.sample_rate
    place = _seed(cfg, 3, rec.location)  # which neighbours this place hears, how loud, its colour
    rng = _seed(cfg, 4, rec.segment)  # this recording's drift, background and SNR
    scenes = place.choice(len(CLASSES), size=profile.neighbours, replace=False,
                          p=profiles.neighbour_weights(rec.scene, profile))
    levels = place.uniform(*profile.neighbour_db, size=profile.neighbours)
    mix = _unit(own, n)
    for k, (scene, db) in enumerate(zip(scenes, levels)):
        canvas = dsp.Canvas(n, sr)
        other = _seed(cfg, 6, rec.segment, k)
        # The neighbour's character belongs to the place too: same recipe draws at every visit.
        SCENES.get(CLASSES[scene])(canvas, _seed(cfg, 5, rec.location, k), other)
        part = _unit(canvas.spectrum(other), n) * F32(10.0 ** (db / 20.0))
        mix = mix + profiles.drifting(part, rng, n, sr, profile.neighbour_swing_db)
    if profile.background_snr_db is not None:
        snr = rng.uniform(*profile.background_snr_db)
        background = _unit(profiles.urban_background(rng, n, sr), n)
        mix = mix + background * F32(dsp.spec_rms(mix, n) * 10.0 ** (-snr / 20.0))
    return (mix * profiles.location_colour(place, n, sr, profile)).astype(np.complex64)


def plan(cfg: SyntheticConfig) -> tuple[list[Recording], dict[int, list[Recording]]]:
    """Decides every recording and the nested training splits (no audio).

    Returns:
      (all recordings in meta.csv order, {percentage: training recordings of that split}).
    """
    rng = _seed(cfg, 0)
    n_loc = cfg.train_locations_per_class + cfg.test_locations_per_class
    cities = rng.choice(CITIES, size=len(CLASSES) * n_loc)
    recordings: list[Recording] = []
    segment = 0
    location = 0
    by_class_device: dict[tuple[int, str], list[Recording]] = {}
    for scene in range(len(CLASSES)):
        locations = list(range(location, location + n_loc))
        location += n_loc
        for test, locs, devices, per_device in (
            (False, locations[: cfg.train_locations_per_class], SEEN_DEVICES, cfg.n_train_per_class_device),
            (True, locations[cfg.train_locations_per_class:], DEVICES, cfg.n_test_per_class_device),
        ):
            for device in devices:
                for k in range(per_device // cfg.clips_per_recording):
                    loc_id = locs[(k + devices.index(device)) % len(locs)]
                    recording = Recording(scene, str(cities[loc_id]), loc_id, segment, device, test)
                    segment += 1
                    recordings.append(recording)
                    if not test:
                        by_class_device.setdefault((scene, device), []).append(recording)

    splits: dict[int, list[Recording]] = {p: [] for p in TRAIN_SPLITS}
    for scene in range(len(CLASSES)):
        # Interleave devices (random order per class, random recordings per device) so any
        # prefix of the ordering has a near-uniform device mix; prefixes make splits nested.
        device_order = [SEEN_DEVICES[i] for i in rng.permutation(len(SEEN_DEVICES))]
        pools = []
        for device in device_order:
            recs = by_class_device[(scene, device)]
            pools.append([recs[i] for i in rng.permutation(len(recs))])
        ordering = [pool[i] for i in range(max(map(len, pools))) for pool in pools if i < len(pool)]
        for p in TRAIN_SPLITS:
            count = max(1, round(len(ordering) * p / 100))
            splits[p].extend(ordering[:count])
    return recordings, splits
