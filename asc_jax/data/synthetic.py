"""The embedded demo dataset: synthetic acoustic scenes in the exact TAU22 / DCASE2024 layout.

Why: the real TAU Urban Acoustic Scenes 2022 Mobile set is 23 GB and cannot ship with the
repo, but every pipeline stage (splits, devices, KD stores, evaluation per device) should run
end to end out of the box. This generator writes 1-s, 44.1 kHz, 16-bit PCM clips whose ten
classes have genuinely different textures and whose recording devices are distinct filters
plus noise and gain, so that both the class signal and the device mismatch are real.

Structure mirrors TAU: a *location* (identifier `city-N`) fixes a scene's character (talker
count, reverberation, tonal frequencies, event rates); a *recording* (10-s segment in TAU,
`clips_per_recording` seconds here) is rendered continuously from its own seed and cut into
1-s clips, so the clips of one recording share their sound; each recording comes from one
device. Development-train and test use disjoint locations; training uses devices a, b, c,
s1-s3, the test split all nine devices (s4-s6 are unseen). Nested splits split5 ⊂ split10 ⊂
split25 ⊂ split50 ⊂ split100 select whole recordings, equally many per class, interleaving
devices so every split keeps a similar device mix (the DCASE2024 split rules).

Everything derives from `seed` through per-location / per-recording seed sequences, so output
is bit-identical whatever the worker count or generation order.

CLI: python -m asc_jax.data.synthetic --out data/synthetic
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
from scipy import fft as sfft

from asc_jax import setup_logging
from asc_jax.data.tau import CLASSES, DEVICES, SEEN_DEVICES, SPLIT_SUBDIR
from asc_jax.registry import Registry

log = logging.getLogger(__name__)

# Bump whenever the rendered audio or the layout changes: ensure_dataset then regenerates.
GENERATOR_VERSION = "1"
MARKER = ".asc_synthetic.json"
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

    def __post_init__(self):
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


# ----------------------------------------------------------------------------- DSP primitives
# Everything is float32 and mixed in the frequency domain: a recording is one spectrum that
# every component adds to, reverberation and the device response are multiplications, and a
# single inverse FFT produces the waveform. That keeps the default set well under a minute.

F32 = np.float32


def _readonly(x: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by all recordings (and threads): forbid in-place edits."""
    x.setflags(write=False)
    return x


@lru_cache(maxsize=4)
def _freqs(n: int, sr: int) -> np.ndarray:
    return _readonly(np.fft.rfftfreq(n, 1.0 / sr).astype(F32))


@lru_cache(maxsize=256)
def _bandpass(n: int, sr: int, lo: float | None, hi: float | None, order: int = 2) -> np.ndarray:
    """Butterworth-like magnitude response (zero phase); cached since most corners are fixed."""
    f = _freqs(n, sr).astype(np.float64)
    mag = np.ones_like(f)
    if lo is not None:
        mag /= np.sqrt(1.0 + (lo / np.maximum(f, 1e-3)) ** (2 * order))
    if hi is not None:
        mag /= np.sqrt(1.0 + (f / hi) ** (2 * order))
    return _readonly(mag.astype(F32))


@lru_cache(maxsize=32)
def _slope(n: int, sr: int, db_per_octave: float) -> np.ndarray:
    """Spectral tilt around 1 kHz: -3 dB/oct is pink, -6 dB/oct brown."""
    f = np.maximum(_freqs(n, sr), F32(20.0))
    return _readonly((10.0 ** (db_per_octave * np.log2(f / 1000.0) / 20.0)).astype(F32))


def _peak(n: int, sr: int, fc: float, gain_db: float, octaves: float) -> np.ndarray:
    """Gaussian bump in log-frequency: a resonance (gain > 0) or a notch (gain < 0)."""
    octs = np.log2(np.maximum(_freqs(n, sr), F32(1.0)) / F32(fc))
    return (10.0 ** (F32(gain_db / 20.0) * np.exp(-0.5 * (octs / F32(octaves)) ** 2))).astype(F32)


def _spec_rms(spec: np.ndarray, n: int) -> float:
    """RMS of irfft(spec, n) by Parseval, without the inverse transform."""
    power = spec.real**2 + spec.imag**2
    total = 2.0 * float(power.sum()) - float(power[0]) - (float(power[-1]) if n % 2 == 0 else 0.0)
    return np.sqrt(max(total, 0.0)) / n


def _noise_spec(rng: np.random.Generator, mag: np.ndarray) -> np.ndarray:
    """Spectrum of Gaussian noise shaped by `mag` (no DC)."""
    spec = rng.standard_normal(len(mag), dtype=F32) + 1j * rng.standard_normal(len(mag), dtype=F32)
    spec *= mag
    spec[0] = 0.0
    return spec


def _unit(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return x * F32(1.0 / rms) if rms > 0 else x


def _events(x: np.ndarray) -> np.ndarray:
    """Scales a sparse event track to peak 3 (about the peak of unit-RMS noise), so its level
    reads relative to the background however many events happened; an empty track stays
    silent (RMS normalisation would blow a single event up)."""
    peak = float(np.max(np.abs(x)))
    return x * F32(3.0 / peak) if peak > 0 else x


def _slow(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """A smooth random process in [0, 1] that changes about `rate` times per second."""
    step = 32  # interpolate on a coarse grid and hold: far below audible modulation rates
    coarse = -(-n // step)
    knots = int(np.ceil(coarse * step / sr * rate)) + 2
    values = rng.random(knots)
    curve = np.interp(np.arange(coarse) * (step * rate / sr), np.arange(knots), values).astype(F32)
    return np.repeat(curve, step)[:n]


def _times(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """Poisson event onsets (in samples) with `rate` events per second."""
    return np.sort(rng.integers(0, n, size=rng.poisson(rate * n / sr)))


def _place(out: np.ndarray, start: int, event: np.ndarray) -> None:
    end = min(len(out), start + len(event))
    if end > start:
        out[start:end] += event[: end - start]


def _cycles(freq: np.ndarray | float, sr: int, n: int) -> np.ndarray:
    """Phase in cycles (float64, so long recordings keep their pitch) of a frequency track."""
    if np.isscalar(freq):
        return np.arange(n) * (float(freq) / sr)
    return np.cumsum(freq, dtype=np.float64) / sr


def _frac(cycles: np.ndarray) -> np.ndarray:
    """cycles mod 1 as float32 (in place on a floor temporary: np.mod is several times slower)."""
    out = np.floor(cycles)
    np.subtract(cycles, out, out=out)
    return out.astype(F32)


def _saw(cycles: np.ndarray) -> np.ndarray:
    """Sawtooth (all harmonics at 1/k): the cheap voice / engine source."""
    return F32(2.0) * _frac(cycles) - F32(1.0)


def _sines(cycles: np.ndarray, partials: tuple[float, ...], amps: tuple[float, ...]) -> np.ndarray:
    out = np.zeros(len(cycles), F32)
    for p, a in zip(partials, amps):
        out += F32(a) * np.sin(F32(2 * np.pi) * _frac(cycles * p))
    return out


def _decay(n: int, sr: int, tau: float) -> np.ndarray:
    return np.exp(-np.arange(n, dtype=F32) / F32(sr * tau))


class _Canvas:
    """One recording under construction, accumulated as a spectrum of length-n signals.

    Parts are given a level in dB: stationary beds and dense sources are normalised to unit
    RMS first, sparse event tracks by _events. Time-domain parts that need no filter of their
    own are summed and transformed once in spectrum().
    """

    def __init__(self, n: int, sr: int):
        self.n, self.sr = n, sr
        self.spec = np.zeros(n // 2 + 1, np.complex64)
        self.time = np.zeros(n, F32)
        self.rt60 = 0.0
        self.wet = 0.0

    def bp(self, lo: float | None, hi: float | None, order: int = 2) -> np.ndarray:
        return _bandpass(self.n, self.sr, lo, hi, order)

    def tilt(self, db_per_octave: float) -> np.ndarray:
        return _slope(self.n, self.sr, db_per_octave)

    def add_spectrum(self, spec: np.ndarray, db: float) -> None:
        rms = _spec_rms(spec, self.n)
        if rms > 0:
            self.spec += spec * F32(10.0 ** (db / 20.0) / rms)

    def bed(self, rng: np.random.Generator, mag: np.ndarray, db: float, env: np.ndarray | None = None) -> None:
        """Stationary noise with magnitude spectrum `mag`, optionally amplitude-modulated."""
        spec = _noise_spec(rng, mag)
        if env is None:
            self.add_spectrum(spec, db)
        else:
            self.signal(sfft.irfft(spec, n=self.n) * env, db)

    def signal(self, x: np.ndarray, db: float, mag: np.ndarray | None = None) -> None:
        """A dense time-domain source, optionally filtered by `mag`."""
        if mag is None:
            self.time += _unit(x) * F32(10.0 ** (db / 20.0))
        else:
            self.add_spectrum(sfft.rfft(x) * mag, db)

    def events(self, x: np.ndarray, db: float, mag: np.ndarray | None = None) -> None:
        """A sparse event track (see _events), optionally filtered by `mag`."""
        x = _events(x) * F32(10.0 ** (db / 20.0))
        if mag is None:
            self.time += x
        else:
            self.spec += sfft.rfft(x) * mag

    def reverb(self, rt60: float, wet: float) -> None:
        self.rt60, self.wet = rt60, wet

    def spectrum(self, rng: np.random.Generator) -> np.ndarray:
        """The finished dry+reverberant scene spectrum."""
        spec = self.spec + sfft.rfft(self.time)
        if self.wet > 0:
            # Diffuse tail: exponentially decaying noise IR, darkened. Circular convolution
            # (a product of spectra) wraps the tail to the start, i.e. a steady-state room.
            length = int(min(self.rt60, 1.5) * self.sr)
            ir = rng.standard_normal(length, dtype=F32) * np.exp(F32(-6.9 / (self.rt60 * self.sr)) * np.arange(length, dtype=F32))
            room = sfft.rfft(ir, n=self.n) * self.bp(80.0, 6000.0, 1)
            room *= F32(1.0 / np.sqrt(np.mean(room.real**2 + room.imag**2)))
            spec = spec * (F32(1.0 - self.wet) + F32(self.wet) * room)
        return spec


# ----------------------------------------------------------------------------- sound sources

# Vowel formants (F1, F2, F3) in Hz; babble talkers move between them syllable by syllable.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


@lru_cache(maxsize=2)
def _vowel_filters(n: int, sr: int) -> np.ndarray:
    bank = [sum(_peak(n, sr, fc, 24.0, 0.12) for fc in formants) for formants in _VOWELS]
    return _readonly(np.stack(bank) * _bandpass(n, sr, 80.0, 5000.0, 2))


def _babble(rng: np.random.Generator, n: int, sr: int, talkers: int) -> np.ndarray:
    """Spectrum (length n at sr) of voice-like babble: gliding glottal sawtooths, syllabic
    gating, formants.

    Each syllable gets its own pitch glide and vowel; syllables of a vowel are filtered
    together, so the cost is one FFT per vowel however many talkers there are. Speech here
    lives below 5 kHz, so it is rendered at sr / 4 (when that divides) and its spectrum placed
    in the low bins of the full-rate one (the same bin spacing): a quarter of the work.
    """
    step = next((d for d in (4, 2) if sr % d == 0 and n % d == 0 and sr // d >= 11025), 1)
    m, rate = n // step, sr // step
    per_vowel = np.zeros((len(_VOWELS), m), F32)
    for _ in range(talkers):
        f0 = rng.uniform(95.0, 240.0)
        gain = F32(rng.uniform(0.4, 1.0))
        for onset in _times(rng, m, rate, rng.uniform(2.5, 5.0)):
            length = min(int(rng.uniform(0.08, 0.25) * rate), m - onset)
            t = np.arange(length, dtype=F32) / F32(rate)  # float32 is exact enough for 0.25 s
            glide = F32(f0 * rng.uniform(-0.6, 0.6))  # Hz per second of intonation
            cycles = t * (F32(f0 * rng.uniform(0.9, 1.1)) + F32(0.5) * glide * t)
            src = F32(2.0) * (cycles - np.floor(cycles)) - F32(1.0)
            env = np.sin(np.linspace(0.0, np.pi, length, dtype=F32)) ** 2
            per_vowel[rng.integers(len(_VOWELS)), onset:onset + length] += gain * src * env
    low = (sfft.rfft(per_vowel, axis=-1) * _vowel_filters(m, rate)).sum(axis=0)
    spec = np.zeros(n // 2 + 1, np.complex64)
    spec[: len(low) - 1] = low[:-1]  # drop the decimated Nyquist bin (formants end far below)
    return spec


def _engine(rng: np.random.Generator, n: int, sr: int, f0: float) -> np.ndarray:
    """Harmonic engine source whose rpm drifts (acceleration / braking); lowpass it."""
    return _saw(_cycles(f0 * (0.8 + 0.5 * _slow(rng, n, sr, 0.4)), sr, n))


def _whine(rng: np.random.Generator, n: int, sr: int, f_lo: float, ratio: float) -> np.ndarray:
    """Electric motor whine sweeping between f_lo and f_lo * ratio (metro, tram)."""
    freq = f_lo * F32(ratio) ** _slow(rng, n, sr, 0.5)
    return _sines(_cycles(freq, sr, n), (1.0, 2.0, 3.0), (1.0, 0.5, 0.25))


def _impacts(rng: np.random.Generator, n: int, sr: int, rate: float, tau: float, thump: float = 0.0) -> np.ndarray:
    """Short decaying noise bursts (footsteps, rattles) with an optional low body thump."""
    out = np.zeros(n, F32)
    length = int(6 * tau * sr)
    body = np.sin(F32(2 * np.pi * rng.uniform(70, 130) / sr) * np.arange(length, dtype=F32)) * _decay(length, sr, 2 * tau)
    burst_env = _decay(length, sr, tau)
    for onset in _times(rng, n, sr, rate):
        burst = rng.standard_normal(length, dtype=F32) * burst_env + F32(thump) * body
        _place(out, onset, F32(rng.uniform(0.5, 1.0)) * burst)
    return out


def _clatter(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """Rail joints: periodic click pairs (wheel bogies) with a ringing resonance."""
    out = np.zeros(n, F32)
    length = int(0.04 * sr)
    ring = np.sin(F32(2 * np.pi * rng.uniform(600.0, 1400.0) / sr) * np.arange(length, dtype=F32))
    env = _decay(length, sr, 0.006)
    period = sr / rate
    gap = int(rng.uniform(0.08, 0.15) * sr)
    for onset in np.arange(rng.uniform(0, period), n, period).astype(int):
        for k in (0, gap):
            _place(out, onset + k, (rng.standard_normal(length, dtype=F32) + 2 * ring) * env)
    return out


def _chirps(rng: np.random.Generator, n: int, sr: int, rate: float, center: float) -> np.ndarray:
    """Birdsong: trills of fast FM sweeps around `center` Hz."""
    out = np.zeros(n, F32)
    for onset in _times(rng, n, sr, rate):
        pos = onset
        for _ in range(rng.integers(1, 6)):
            length = int(rng.uniform(0.03, 0.12) * sr)
            f_start, f_end = center * rng.uniform(0.7, 1.4, size=2)
            wobble = 1 + 0.08 * np.sin(np.linspace(0, rng.uniform(6, 30), length))
            freq = np.linspace(f_start, f_end, length) * wobble
            env = np.sin(np.linspace(0.0, np.pi, length, dtype=F32)) ** 2
            _place(out, pos, env * _sines(_cycles(freq, sr, length), (1.0, 2.0), (1.0, 0.15)))
            pos += length + int(rng.uniform(0.01, 0.06) * sr)
    return out


def _bell(rng: np.random.Generator, n: int, sr: int, base: float, rate: float,
          partials: tuple[float, ...], tau: float) -> np.ndarray:
    """Struck bells, chimes, horns: partials (inharmonic for bells) with exponential decay."""
    out = np.zeros(n, F32)
    length = int(4 * tau * sr)
    amps = tuple(0.7**k for k in range(len(partials)))
    strike = _sines(_cycles(base, sr, length), partials, amps) * _decay(length, sr, tau)
    for onset in _times(rng, n, sr, rate):
        for k in range(rng.integers(1, 4)):  # rung in quick repeats
            _place(out, onset + int(k * 0.25 * sr), F32(rng.uniform(0.6, 1.0)) * strike)
    return out


def _vehicles(canvas: _Canvas, rng: np.random.Generator, rate: float, width: float, db: float) -> None:
    """Passing vehicles: tyre noise + engine tone with a Doppler glide and a pass-by swell."""
    n, sr = canvas.n, canvas.sr
    t = np.arange(n, dtype=F32) / F32(sr)
    swell = np.zeros(n, F32)
    tone = np.zeros(n, F32)
    for t0 in rng.uniform(-width, n / sr + width, size=max(1, rng.poisson(rate * n / sr))):
        w = F32(width * rng.uniform(0.6, 1.4))
        dt = t - F32(t0)
        env = 1.0 / (1.0 + (dt / w) ** 2)
        doppler = 1.0 - 0.08 * dt / np.sqrt(dt**2 + (0.3 * w) ** 2)
        swell += env
        tone += env * _saw(_cycles(rng.uniform(60.0, 140.0) * doppler, sr, n))
    canvas.bed(rng, canvas.bp(150.0, 2500.0) * canvas.tilt(-3.0), db, env=swell)
    canvas.signal(tone, db - 3.0, canvas.bp(40.0, 1200.0))


def _music(rng: np.random.Generator, n: int, sr: int, key: float) -> np.ndarray:
    """Background music: a chord progression of soft harmonic notes."""
    out = np.zeros(n, F32)
    scale = key * 2.0 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16]) / 12.0)
    beat = int(rng.uniform(0.4, 0.8) * sr)
    length = 2 * beat
    env = _decay(length, sr, 0.5)
    notes: dict[int, np.ndarray] = {}  # a progression reuses few pitches: synthesise each once
    for start in range(0, n, beat):
        root = int(rng.integers(0, 6))
        for degree in (root, root + 2, root + 4):
            if degree not in notes:
                notes[degree] = env * _sines(_cycles(scale[degree], sr, length), (1.0, 2.0, 3.0), (1.0, 0.4, 0.2))
            _place(out, start, notes[degree])
    return out


# ----------------------------------------------------------------------------- scenes

# A scene adds its parts to the canvas from two generators: `loc` draws the location's
# character (identical for every recording of that place, always drawn in the same order)
# and `rec` the recording's own events.
SceneFn = Callable[[_Canvas, np.random.Generator, np.random.Generator], None]
SCENES: Registry[SceneFn] = Registry("synthetic scene")


@SCENES.register("airport")
def _airport(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, rt60, hum, chime = loc.integers(4, 8), loc.uniform(1.2, 2.0), loc.uniform(50, 120), loc.uniform(500, 800)
    c.bed(rec, c.bp(60, 5000) * c.tilt(-3), 0.0)
    c.add_spectrum(_babble(rec, n, sr, talkers), -2.0)
    c.signal(_engine(rec, n, sr, hum), -12.0, c.bp(20, 400, 3))  # air handling
    c.bed(rec, c.bp(200, 2000), -8.0, env=_slow(rec, n, sr, 1.5) ** 2)  # rolling suitcases
    c.events(_bell(rec, n, sr, chime, 0.3, (1.0, 2.0, 3.0), 0.4), -4.0)
    c.reverb(rt60, 0.6)


@SCENES.register("bus")
def _bus(c, loc, rec):
    n, sr = c.n, c.sr
    f0, talkers = loc.uniform(25, 45), loc.integers(1, 4)
    c.signal(_engine(rec, n, sr, f0), 0.0, c.bp(20, 350, 3))
    c.bed(rec, c.bp(20, 250) * c.tilt(-6), -3.0)
    c.add_spectrum(_babble(rec, n, sr, talkers), -9.0)
    c.events(_impacts(rec, n, sr, 3.0, 0.004), -15.0, c.bp(2000, 6000))  # rattles
    c.reverb(0.3, 0.3)


@SCENES.register("metro")
def _metro(c, loc, rec):
    n, sr = c.n, c.sr
    whine_lo, rate, resonance = loc.uniform(150, 300), loc.uniform(1.5, 3.0), loc.uniform(500, 2000)
    c.bed(rec, c.bp(100, 4000) * _peak(n, sr, resonance, 10, 0.3), 0.0)
    c.signal(_whine(rec, n, sr, whine_lo, 3.0), -4.0)
    c.events(_clatter(rec, n, sr, rate), -3.0)
    c.add_spectrum(_babble(rec, n, sr, 2), -15.0)
    c.reverb(0.5, 0.3)


@SCENES.register("metro_station")
def _metro_station(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, rt60, squeal = loc.integers(5, 10), loc.uniform(1.6, 2.6), loc.uniform(2500, 4500)
    arrival = _slow(rec, n, sr, 0.3) ** 3
    c.bed(rec, c.bp(50, 6000) * c.tilt(-3), -3.0)
    c.add_spectrum(_babble(rec, n, sr, talkers), 0.0)
    c.signal(arrival * (_whine(rec, n, sr, 120, 4.0) + 0.5 * _sines(_cycles(squeal, sr, n), (1.0,), (1.0,))), -2.0)
    c.events(_bell(rec, n, sr, 1000.0, 0.15, (1.0,), 0.08), -8.0)  # PA beeps
    c.reverb(rt60, 0.7)


@SCENES.register("park")
def _park(c, loc, rec):
    n, sr = c.n, c.sr
    bird, rate, wind_cut = loc.uniform(2500, 5000), loc.uniform(2.0, 6.0), loc.uniform(300, 600)
    c.bed(rec, c.bp(100, 8000) * c.tilt(-3), -10.0)
    c.bed(rec, c.bp(20, wind_cut) * c.tilt(-6), -2.0, env=0.2 + _slow(rec, n, sr, 0.7))  # wind gusts
    c.events(_chirps(rec, n, sr, rate, bird), 0.0)
    c.bed(rec, c.bp(20, 150) * c.tilt(-6), -10.0)  # distant traffic


@SCENES.register("public_square")
def _public_square(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, fountain = loc.integers(6, 13), loc.uniform(-12, -3)
    c.add_spectrum(_babble(rec, n, sr, talkers), 0.0)
    c.events(_impacts(rec, n, sr, rec.uniform(3, 6), 0.012, thump=1.0), -6.0, c.bp(150, 4000))  # footsteps
    c.bed(rec, c.bp(800, 10000), fountain)
    c.bed(rec, c.bp(20, 200) * c.tilt(-6), -8.0)
    c.reverb(0.4, 0.15)


@SCENES.register("shopping_mall")
def _shopping_mall(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, music_db, rt60, key = loc.integers(8, 15), loc.uniform(-8, -3), loc.uniform(1.0, 1.6), loc.uniform(180, 330)
    c.add_spectrum(_babble(rec, n, sr, talkers), 0.0)
    c.signal(_music(rec, n, sr, key), music_db)
    c.events(_impacts(rec, n, sr, rec.uniform(2, 4), 0.01, thump=0.5), -10.0, c.bp(200, 5000))
    c.reverb(rt60, 0.6)


@SCENES.register("street_pedestrian")
def _street_pedestrian(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, traffic = loc.integers(3, 7), loc.uniform(0.1, 0.3)
    c.add_spectrum(_babble(rec, n, sr, talkers), 0.0)
    c.events(_impacts(rec, n, sr, rec.uniform(4, 8), 0.012, thump=1.0), -3.0, c.bp(150, 4000))
    _vehicles(c, rec, traffic, 1.2, -5.0)
    c.bed(rec, c.bp(50, 4000) * c.tilt(-3), -6.0)
    c.reverb(0.3, 0.15)


@SCENES.register("street_traffic")
def _street_traffic(c, loc, rec):
    n, sr = c.n, c.sr
    rate, width, horn = loc.uniform(0.5, 1.2), loc.uniform(0.5, 1.5), loc.uniform(350, 500)
    c.bed(rec, c.bp(20, 200) * c.tilt(-6), 0.0)
    _vehicles(c, rec, rate, width, 0.0)
    c.events(_bell(rec, n, sr, horn, 0.1, (1.0, 2.0, 3.0, 4.0), 0.6), -4.0)  # horns


@SCENES.register("tram")
def _tram(c, loc, rec):
    n, sr = c.n, c.sr
    whine_lo, bell, squeal = loc.uniform(80, 200), loc.uniform(900, 1600), loc.uniform(2000, 4000)
    c.bed(rec, c.bp(60, 400) * c.tilt(-6), -2.0)
    c.signal(_whine(rec, n, sr, whine_lo, 2.5), -3.0)
    c.events(_bell(rec, n, sr, bell, 0.25, (1.0, 2.0, 2.4, 3.0, 4.5, 5.3), 0.35), 0.0)
    c.events(_slow(rec, n, sr, 0.5) ** 6 * _sines(_cycles(squeal, sr, n), (1.0,), (1.0,)), -8.0)  # rail squeal
    c.add_spectrum(_babble(rec, n, sr, loc.integers(1, 4)), -10.0)
    c.reverb(0.4, 0.3)


# ----------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceModel:
    """A recording device: band limits, resonances, tilt, self-noise, mains hum, gain, drive."""

    highpass: float
    lowpass: float
    peaks: tuple[tuple[float, float, float], ...] = ()  # (center Hz, gain dB, width octaves)
    tilt_db_per_octave: float = 0.0
    noise_db: float = -90.0  # self-noise RMS in dBFS
    hum_hz: float = 0.0  # mains hum fundamental (0: none)
    gain_db: float = 0.0
    drive: float = 0.0  # tanh soft clipping (cheap front ends)

    def response(self, n: int, sr: int) -> np.ndarray:
        mag = _bandpass(n, sr, self.highpass, self.lowpass, 2) * _slope(n, sr, self.tilt_db_per_octave)
        for fc, gain, width in self.peaks:
            mag = mag * _peak(n, sr, fc, gain, width)
        return mag


# a: the reference binaural mic (near flat); b, c: phones; s1-s6: simulated devices. s4-s6
# only occur in test.csv, with responses unlike any training device, like DCASE's unseen ones.
DEVICE_MODELS: dict[str, DeviceModel] = {
    "a": DeviceModel(20, 20000, noise_db=-85),
    "b": DeviceModel(150, 12000, ((3000, 5, 0.5),), -1.0, noise_db=-70, gain_db=-3),
    "c": DeviceModel(100, 15000, ((1500, 6, 0.4), (6000, -6, 0.5)), noise_db=-65, gain_db=2),
    "s1": DeviceModel(300, 8000, ((2500, 6, 0.4),), noise_db=-60, gain_db=-5, drive=1.5),
    "s2": DeviceModel(80, 6000, ((900, 8, 0.3),), -1.5, noise_db=-62, hum_hz=50, gain_db=1),
    "s3": DeviceModel(200, 10000, (), 2.0, noise_db=-58, gain_db=-2),
    "s4": DeviceModel(400, 7000, ((1200, 9, 0.3),), noise_db=-55, hum_hz=60, gain_db=-6, drive=2.5),
    "s5": DeviceModel(50, 5000, ((2000, -10, 0.4), (400, 6, 0.5)), -2.5, noise_db=-60, gain_db=3),
    "s6": DeviceModel(600, 11000, ((4000, 8, 0.3), (1500, -8, 0.4)), 1.5, noise_db=-52, gain_db=-4),
}


@lru_cache(maxsize=16)
def _device_response(device: str, n: int, sr: int) -> np.ndarray:
    return _readonly(DEVICE_MODELS[device].response(n, sr))


def apply_device(spec: np.ndarray, n: int, sr: int, device: str, rng: np.random.Generator) -> np.ndarray:
    """Records a scene (given as its spectrum) through a device; returns the float32 waveform.

    Filter, gain (with +-1 dB unit spread), self-noise in the device's band, soft clipping,
    then mains hum (after the front end, as it couples into the wiring).
    """
    model = DEVICE_MODELS[device]
    gain = F32(10.0 ** ((model.gain_db + rng.uniform(-1.0, 1.0)) / 20.0))
    spec = spec * (_device_response(device, n, sr) * gain)
    hiss = _noise_spec(rng, _bandpass(n, sr, model.highpass, model.lowpass, 1) * _slope(n, sr, -1.0))
    spec += hiss * F32(10.0 ** (model.noise_db / 20.0) / _spec_rms(hiss, n))
    y = sfft.irfft(spec, n=n)
    if model.drive:
        # Level-independent soft clipping: compresses peaks, keeps the peak value.
        peak = F32(np.max(np.abs(y)) + 1e-12)
        y = np.tanh(F32(model.drive) * y / peak) * (peak / F32(np.tanh(model.drive)))
    if model.hum_hz:
        hum = _sines(_cycles(model.hum_hz, sr, n), (1.0, 2.0, 3.0), (1.0, 0.5, 0.33))
        y += hum * F32(10.0 ** ((model.noise_db + 6.0) / 20.0))
    return y


# ----------------------------------------------------------------------------- rendering


def _seed(cfg: SyntheticConfig, *parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, *parts]))


def render_recording(rec: Recording, cfg: SyntheticConfig) -> np.ndarray:
    """Renders one recording; returns float32 (clips_per_recording * sample_rate,) in [-1, 1]."""
    sr = cfg.sample_rate
    n_out = cfg.clips_per_recording * sr
    # Render a little longer at an FFT-friendly size that is a multiple of 4 (see _babble).
    n = 4 * sfft.next_fast_len(-(-n_out // 4), real=True)
    loc = _seed(cfg, 1, rec.location)
    rng = _seed(cfg, 2, rec.segment)
    canvas = _Canvas(n, sr)
    SCENES.get(CLASSES[rec.scene])(canvas, loc, rng)
    spec = canvas.spectrum(rng)
    # Loudness is a property of the place (plus a little per recording), not of the class.
    level_db = loc.uniform(-32.0, -22.0) + rng.uniform(-2.0, 2.0)
    spec *= F32(10.0 ** (level_db / 20.0) / _spec_rms(spec, n))
    audio = apply_device(spec, n, sr, rec.device, rng)[:n_out]
    return np.clip(audio, -1.0, 32767.0 / 32768.0).astype(F32)


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(x * 32768.0).clip(-32768, 32767).astype(np.int16)


def _write_recording(args: tuple[Recording, SyntheticConfig, str]) -> None:
    rec, cfg, root = args
    audio = _to_pcm16(render_recording(rec, cfg))
    sr = cfg.sample_rate
    for k in range(cfg.clips_per_recording):
        sf.write(os.path.join(root, rec.filename(k)), audio[k * sr:(k + 1) * sr], sr, subtype="PCM_16")


# ----------------------------------------------------------------------------- layout


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


def _write_tsv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _readme(cfg: SyntheticConfig, n_clips: int) -> str:
    params = "\n".join(f"- {k}: {v}" for k, v in asdict(cfg).items())
    return f"""# Synthetic acoustic scenes (NOT real recordings)

Generated by `asc_jax.data.synthetic` (generator version {GENERATOR_VERSION}); {n_clips} clips.
Every file here is procedurally synthesised noise, tones and events; no real audio was
recorded or used. The layout mirrors TAU Urban Acoustic Scenes 2022 Mobile / DCASE2024 Task 1
(meta.csv, audio/, {SPLIT_SUBDIR}/split{{5,10,25,50,100}}.csv, {SPLIT_SUBDIR}/test.csv) so that
the code paths are the same, but results on this data say nothing about real scenes.

Parameters:
{params}

Regenerate with: python -m asc_jax.data.synthetic --out <dir> --seed {cfg.seed}

## License
The generated data is dedicated to the public domain (CC0 1.0): use it for anything.
"""


def _owned_paths(root: Path) -> list[Path]:
    return [root / "audio", root / "meta.csv", root / SPLIT_SUBDIR, root / "README.md", root / MARKER]


def _clear(root: Path) -> None:
    for path in _owned_paths(root):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _write_marker(root: Path, cfg: SyntheticConfig, complete: bool, n_clips: int) -> None:
    marker = {"generator_version": GENERATOR_VERSION, "params": asdict(cfg),
              "complete": complete, "n_clips": n_clips}
    (root / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))


def _make_config(**params) -> SyntheticConfig:
    known = {f.name for f in fields(SyntheticConfig)}
    unknown = set(params) - known
    if unknown:
        raise TypeError(f"unknown synthetic dataset parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    return SyntheticConfig(**params)


def generate(root: str | Path, *, workers: int | None = None, **params) -> Path:
    """Writes a synthetic dataset in the TAU layout into root.

    Args:
      root: output directory; must be empty, absent, or a previous synthetic dataset (which
        is replaced). A non-empty directory without the marker is never touched.
      workers: rendering threads (default: min(2, available CPUs)); the output does not
        depend on it.
      **params: SyntheticConfig fields (n_train_per_class_device, n_test_per_class_device,
        clips_per_recording, train_locations_per_class, test_locations_per_class,
        sample_rate, seed).

    Returns:
      root as a Path.
    """
    cfg = _make_config(**params)
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise FileExistsError(
            f"{root} is not empty and has no {MARKER}; refusing to overwrite it (use an empty directory)"
        )
    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    recordings, splits = plan(cfg)
    n_clips = len(recordings) * cfg.clips_per_recording
    _write_marker(root, cfg, complete=False, n_clips=n_clips)
    (root / "audio").mkdir()

    jobs = [(rec, cfg, str(root)) for rec in recordings]
    workers = workers if workers is not None else min(2, len(os.sched_getaffinity(0)))
    # Threads, not processes: FFTs and large ufuncs release the GIL, and threads need neither
    # a __main__ guard (spawn) nor forking a possibly multithreaded (JAX) parent.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_write_recording, jobs))

    def rows(recs: list[Recording], with_meta: bool) -> list[tuple[str, ...]]:
        out = []
        for rec in sorted(recs, key=lambda r: r.segment):
            for k in range(cfg.clips_per_recording):
                row = (rec.filename(k), CLASSES[rec.scene])
                out.append(row + (rec.identifier, rec.device) if with_meta else row)
        return out

    _write_tsv(root / "meta.csv", ("filename", "scene_label", "identifier", "source_label"),
               rows(recordings, True))
    (root / SPLIT_SUBDIR).mkdir()
    for p, recs in splits.items():
        _write_tsv(root / SPLIT_SUBDIR / f"split{p}.csv", ("filename", "scene_label"), rows(recs, False))
    _write_tsv(root / SPLIT_SUBDIR / "test.csv", ("filename", "scene_label"),
               rows([r for r in recordings if r.test], False))
    (root / "README.md").write_text(_readme(cfg, n_clips))
    _write_marker(root, cfg, complete=True, n_clips=n_clips)
    log.info("wrote %d synthetic clips to %s", n_clips, root)
    return root


def _status(root: Path, cfg: SyntheticConfig) -> str | None:
    """None when root holds a complete dataset for cfg, else why not."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError) as err:
        return f"unreadable marker ({err})"
    if not marker.get("complete"):
        return "generation did not finish (partial dataset)"
    if marker.get("generator_version") != GENERATOR_VERSION:
        return f"generator version {marker.get('generator_version')} != {GENERATOR_VERSION}"
    old, new = marker.get("params") or {}, asdict(cfg)
    if old != new:
        changes = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
                            if old.get(k) != new.get(k))
        return f"parameters differ ({changes})"
    n_wav = sum(1 for _ in (root / "audio").glob("*.wav")) if (root / "audio").is_dir() else 0
    if n_wav != marker.get("n_clips"):
        return f"{n_wav} wav files, expected {marker.get('n_clips')}"
    missing = [name for name in ("meta.csv", *(f"{SPLIT_SUBDIR}/split{p}.csv" for p in TRAIN_SPLITS),
                                 f"{SPLIT_SUBDIR}/test.csv") if not (root / name).is_file()]
    if missing:
        return f"missing {missing}"
    return None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialises concurrent ensure_dataset calls (e.g. parallel test workers) on one root."""
    lock_path = root.parent / f".{root.name}.lock"
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_dataset(root: str | Path, *, workers: int | None = None, **params) -> Path:
    """Returns root after making sure it holds the synthetic dataset for these parameters.

    Generates it on first use. A dataset from another generator version or other parameters,
    or a partial one (interrupted generation, deleted files) is logged and regenerated; a
    non-empty directory that is not a synthetic dataset raises FileExistsError.
    """
    cfg = _make_config(**params)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if (root / MARKER).exists():
            reason = _status(root, cfg)
            if reason is None:
                return root
            log.warning("regenerating synthetic dataset in %s: %s", root, reason)
        return generate(root, workers=workers, **asdict(cfg))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    defaults = SyntheticConfig()
    for field in fields(SyntheticConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=getattr(defaults, field.name))
    parser.add_argument("--workers", type=int, default=None, help="rendering threads")
    args = parser.parse_args(argv)
    setup_logging("%(message)s")
    params = {field.name: getattr(args, field.name) for field in fields(SyntheticConfig)}
    ensure_dataset(args.out, workers=args.workers, **params)
    print(args.out)


if __name__ == "__main__":
    main()
