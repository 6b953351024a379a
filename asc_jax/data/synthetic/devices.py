"""Recording devices: frequency response, gain, self-noise, soft clipping and mains hum."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as sfft

from asc_jax.data.synthetic import dsp
from asc_jax.data.synthetic.dsp import F32


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
        mag = dsp.bandpass(n, sr, self.highpass, self.lowpass, 2) * dsp.slope(n, sr, self.tilt_db_per_octave)
        for fc, gain, width in self.peaks:
            mag = mag * dsp.peak(n, sr, fc, gain, width)
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


@lru_cache(maxsize=32)
def _device_response(device: str, n: int, sr: int, strength: float) -> np.ndarray:
    # strength scales the response in dB (a power of the magnitude): band edges get steeper,
    # resonances and notches deeper, and the device's overall colour stays the same.
    mag = DEVICE_MODELS[device].response(n, sr).astype(np.float64)
    return dsp.readonly((mag if strength == 1.0 else mag ** strength).astype(F32))


def apply_device(spec: np.ndarray, n: int, sr: int, device: str, rng: np.random.Generator,
                 strength: float = 1.0) -> np.ndarray:
    """Records a scene (given as its spectrum) through a device; returns the float32 waveform.

    Filter (its dB response times `strength`, see `profiles.Profile`), gain (with +-1 dB unit
    spread), self-noise in the device's band, soft clipping, then mains hum (after the front end,
    as it couples into the wiring).
    """
    model = DEVICE_MODELS[device]
    gain = F32(10.0 ** ((model.gain_db + rng.uniform(-1.0, 1.0)) / 20.0))
    spec = spec * (_device_response(device, n, sr, float(strength)) * gain)
    hiss = dsp.noise_spec(rng, dsp.bandpass(n, sr, model.highpass, model.lowpass, 1) * dsp.slope(n, sr, -1.0))
    spec += hiss * F32(10.0 ** (model.noise_db / 20.0) / dsp.spec_rms(hiss, n))
    y = sfft.irfft(spec, n=n)
    if model.drive:
        # Level-independent soft clipping: compresses peaks, keeps the peak value.
        peak = F32(np.max(np.abs(y)) + 1e-12)
        y = np.tanh(F32(model.drive) * y / peak) * (peak / F32(np.tanh(model.drive)))
    if model.hum_hz:
        hum = dsp.sines(dsp.phase(model.hum_hz, sr, n), (1.0, 2.0, 3.0), (1.0, 0.5, 0.33))
        y += hum * F32(10.0 ** ((model.noise_db + 6.0) / 20.0))
    return y
