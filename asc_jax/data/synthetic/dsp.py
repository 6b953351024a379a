"""DSP primitives of the synthetic dataset, and the Canvas a recording is mixed on.

Everything is float32 and mixed in the frequency domain: a recording is one spectrum that
every component adds to, reverberation and the device response are multiplications, and a
single inverse FFT produces the waveform. That keeps the default set well under a minute.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft as sfft

F32 = np.float32


def readonly(x: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by all recordings (and threads): forbid in-place edits."""
    x.setflags(write=False)
    return x


@lru_cache(maxsize=4)
def _freqs(n: int, sr: int) -> np.ndarray:
    return readonly(np.fft.rfftfreq(n, 1.0 / sr).astype(F32))


@lru_cache(maxsize=256)
def bandpass(n: int, sr: int, lo: float | None, hi: float | None, order: int = 2) -> np.ndarray:
    """Butterworth-like magnitude response (zero phase); cached since most corners are fixed."""
    f = _freqs(n, sr).astype(np.float64)
    mag = np.ones_like(f)
    if lo is not None:
        mag /= np.sqrt(1.0 + (lo / np.maximum(f, 1e-3)) ** (2 * order))
    if hi is not None:
        mag /= np.sqrt(1.0 + (f / hi) ** (2 * order))
    return readonly(mag.astype(F32))


@lru_cache(maxsize=32)
def slope(n: int, sr: int, db_per_octave: float) -> np.ndarray:
    """Spectral tilt around 1 kHz: -3 dB/oct is pink, -6 dB/oct brown."""
    f = np.maximum(_freqs(n, sr), F32(20.0))
    return readonly((10.0 ** (db_per_octave * np.log2(f / 1000.0) / 20.0)).astype(F32))


def peak(n: int, sr: int, fc: float, gain_db: float, octaves: float) -> np.ndarray:
    """Gaussian bump in log-frequency: a resonance (gain > 0) or a notch (gain < 0)."""
    octs = np.log2(np.maximum(_freqs(n, sr), F32(1.0)) / F32(fc))
    return (10.0 ** (F32(gain_db / 20.0) * np.exp(-0.5 * (octs / F32(octaves)) ** 2))).astype(F32)


def spec_rms(spec: np.ndarray, n: int) -> float:
    """RMS of irfft(spec, n) by Parseval, without the inverse transform."""
    power = spec.real**2 + spec.imag**2
    total = 2.0 * float(power.sum()) - float(power[0]) - (float(power[-1]) if n % 2 == 0 else 0.0)
    return np.sqrt(max(total, 0.0)) / n


def noise_spec(rng: np.random.Generator, mag: np.ndarray) -> np.ndarray:
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


def slow(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """A smooth random process in [0, 1] that changes about `rate` times per second."""
    step = 32  # interpolate on a coarse grid and hold: far below audible modulation rates
    coarse = -(-n // step)
    knots = int(np.ceil(coarse * step / sr * rate)) + 2
    values = rng.random(knots)
    curve = np.interp(np.arange(coarse) * (step * rate / sr), np.arange(knots), values).astype(F32)
    return np.repeat(curve, step)[:n]


def times(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """Poisson event onsets (in samples) with `rate` events per second."""
    return np.sort(rng.integers(0, n, size=rng.poisson(rate * n / sr)))


def place(out: np.ndarray, start: int, event: np.ndarray) -> None:
    end = min(len(out), start + len(event))
    if end > start:
        out[start:end] += event[: end - start]


def phase(freq: np.ndarray | float, sr: int, n: int) -> np.ndarray:
    """Phase in cycles (float64, so long recordings keep their pitch) of a frequency track."""
    if np.isscalar(freq):
        return np.arange(n) * (float(freq) / sr)
    return np.cumsum(freq, dtype=np.float64) / sr


def _frac(cycles: np.ndarray) -> np.ndarray:
    """cycles mod 1 as float32 (in place on a floor temporary: np.mod is several times slower)."""
    out = np.floor(cycles)
    np.subtract(cycles, out, out=out)
    return out.astype(F32)


def saw(cycles: np.ndarray) -> np.ndarray:
    """Sawtooth (all harmonics at 1/k): the cheap voice / engine source."""
    return F32(2.0) * _frac(cycles) - F32(1.0)


def sines(cycles: np.ndarray, partials: tuple[float, ...], amps: tuple[float, ...]) -> np.ndarray:
    out = np.zeros(len(cycles), F32)
    for p, a in zip(partials, amps):
        out += F32(a) * np.sin(F32(2 * np.pi) * _frac(cycles * p))
    return out


def decay(n: int, sr: int, tau: float) -> np.ndarray:
    return np.exp(-np.arange(n, dtype=F32) / F32(sr * tau))


class Canvas:
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
        return bandpass(self.n, self.sr, lo, hi, order)

    def tilt(self, db_per_octave: float) -> np.ndarray:
        return slope(self.n, self.sr, db_per_octave)

    def add_spectrum(self, spec: np.ndarray, db: float) -> None:
        rms = spec_rms(spec, self.n)
        if rms > 0:
            self.spec += spec * F32(10.0 ** (db / 20.0) / rms)

    def bed(self, rng: np.random.Generator, mag: np.ndarray, db: float, env: np.ndarray | None = None) -> None:
        """Stationary noise with magnitude spectrum `mag`, optionally amplitude-modulated."""
        spec = noise_spec(rng, mag)
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
