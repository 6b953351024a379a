"""Sound sources of the synthetic scenes: babble, engines, motor whine, impacts, rail clatter,
birdsong, bells, passing vehicles, music.

Each draws from the generator it is given and returns a float32 signal of n samples at sr
(`babble`: its spectrum); `vehicles` adds its parts to a `dsp.Canvas` itself. The scene recipes
(`scenes`) mix them.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft as sfft

from asc_jax.data.synthetic import dsp
from asc_jax.data.synthetic.dsp import F32

# Vowel formants (F1, F2, F3) in Hz; babble talkers move between them syllable by syllable.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


@lru_cache(maxsize=2)
def _vowel_filters(n: int, sr: int) -> np.ndarray:
    bank = [sum(dsp.peak(n, sr, fc, 24.0, 0.12) for fc in formants) for formants in _VOWELS]
    return dsp.readonly(np.stack(bank) * dsp.bandpass(n, sr, 80.0, 5000.0, 2))


def babble(rng: np.random.Generator, n: int, sr: int, talkers: int) -> np.ndarray:
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
        for onset in dsp.times(rng, m, rate, rng.uniform(2.5, 5.0)):
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


def engine(rng: np.random.Generator, n: int, sr: int, f0: float) -> np.ndarray:
    """Harmonic engine source whose rpm drifts (acceleration / braking); lowpass it."""
    return dsp.saw(dsp.phase(f0 * (0.8 + 0.5 * dsp.slow(rng, n, sr, 0.4)), sr, n))


def whine(rng: np.random.Generator, n: int, sr: int, f_lo: float, ratio: float) -> np.ndarray:
    """Electric motor whine sweeping between f_lo and f_lo * ratio (metro, tram)."""
    freq = f_lo * F32(ratio) ** dsp.slow(rng, n, sr, 0.5)
    return dsp.sines(dsp.phase(freq, sr, n), (1.0, 2.0, 3.0), (1.0, 0.5, 0.25))


def impacts(rng: np.random.Generator, n: int, sr: int, rate: float, tau: float, thump: float = 0.0) -> np.ndarray:
    """Short decaying noise bursts (footsteps, rattles) with an optional low body thump."""
    out = np.zeros(n, F32)
    length = int(6 * tau * sr)
    body = np.sin(F32(2 * np.pi * rng.uniform(70, 130) / sr) * np.arange(length, dtype=F32)) * dsp.decay(length, sr, 2 * tau)
    burst_env = dsp.decay(length, sr, tau)
    for onset in dsp.times(rng, n, sr, rate):
        burst = rng.standard_normal(length, dtype=F32) * burst_env + F32(thump) * body
        dsp.place(out, onset, F32(rng.uniform(0.5, 1.0)) * burst)
    return out


def clatter(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """Rail joints: periodic click pairs (wheel bogies) with a ringing resonance."""
    out = np.zeros(n, F32)
    length = int(0.04 * sr)
    ring = np.sin(F32(2 * np.pi * rng.uniform(600.0, 1400.0) / sr) * np.arange(length, dtype=F32))
    env = dsp.decay(length, sr, 0.006)
    period = sr / rate
    gap = int(rng.uniform(0.08, 0.15) * sr)
    for onset in np.arange(rng.uniform(0, period), n, period).astype(int):
        for k in (0, gap):
            dsp.place(out, onset + k, (rng.standard_normal(length, dtype=F32) + 2 * ring) * env)
    return out


def chirps(rng: np.random.Generator, n: int, sr: int, rate: float, center: float) -> np.ndarray:
    """Birdsong: trills of fast FM sweeps around `center` Hz."""
    out = np.zeros(n, F32)
    for onset in dsp.times(rng, n, sr, rate):
        pos = onset
        for _ in range(rng.integers(1, 6)):
            length = int(rng.uniform(0.03, 0.12) * sr)
            f_start, f_end = center * rng.uniform(0.7, 1.4, size=2)
            wobble = 1 + 0.08 * np.sin(np.linspace(0, rng.uniform(6, 30), length))
            freq = np.linspace(f_start, f_end, length) * wobble
            env = np.sin(np.linspace(0.0, np.pi, length, dtype=F32)) ** 2
            dsp.place(out, pos, env * dsp.sines(dsp.phase(freq, sr, length), (1.0, 2.0), (1.0, 0.15)))
            pos += length + int(rng.uniform(0.01, 0.06) * sr)
    return out


def bell(rng: np.random.Generator, n: int, sr: int, base: float, rate: float,
          partials: tuple[float, ...], tau: float) -> np.ndarray:
    """Struck bells, chimes, horns: partials (inharmonic for bells) with exponential decay."""
    out = np.zeros(n, F32)
    length = int(4 * tau * sr)
    amps = tuple(0.7**k for k in range(len(partials)))
    strike = dsp.sines(dsp.phase(base, sr, length), partials, amps) * dsp.decay(length, sr, tau)
    for onset in dsp.times(rng, n, sr, rate):
        for k in range(rng.integers(1, 4)):  # rung in quick repeats
            dsp.place(out, onset + int(k * 0.25 * sr), F32(rng.uniform(0.6, 1.0)) * strike)
    return out


def vehicles(canvas: dsp.Canvas, rng: np.random.Generator, rate: float, width: float, db: float) -> None:
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
        tone += env * dsp.saw(dsp.phase(rng.uniform(60.0, 140.0) * doppler, sr, n))
    canvas.bed(rng, canvas.bp(150.0, 2500.0) * canvas.tilt(-3.0), db, env=swell)
    canvas.signal(tone, db - 3.0, canvas.bp(40.0, 1200.0))


def music(rng: np.random.Generator, n: int, sr: int, key: float) -> np.ndarray:
    """Background music: a chord progression of soft harmonic notes."""
    out = np.zeros(n, F32)
    scale = key * 2.0 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16]) / 12.0)
    beat = int(rng.uniform(0.4, 0.8) * sr)
    length = 2 * beat
    env = dsp.decay(length, sr, 0.5)
    notes: dict[int, np.ndarray] = {}  # a progression reuses few pitches: synthesise each once
    for start in range(0, n, beat):
        root = int(rng.integers(0, 6))
        for degree in (root, root + 2, root + 4):
            if degree not in notes:
                notes[degree] = env * dsp.sines(dsp.phase(scale[degree], sr, length), (1.0, 2.0, 3.0), (1.0, 0.4, 0.2))
            dsp.place(out, start, notes[degree])
    return out
