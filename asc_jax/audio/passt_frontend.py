"""PaSST's own log-mel frontend in JAX (hear21passt `AugmentMelSTFT`, eval mode).

PaSST teachers were trained on these features, not on the students' frontend, so their logits must
be computed with it:

  waveform (32 kHz) -> preemphasis y[n] = x[n+1] - 0.97 x[n]  (one sample shorter)
  -> |STFT|^2 (n_fft 1024, symmetric Hann window of 800 zero-padded to 1024, hop 320, centred with
     reflect padding) -> Kaldi mel filterbank (128 bins, fmin 0, fmax 15 kHz, zero weight for the
     Nyquist bin) -> log(x + 1e-5) -> (x + 4.5) / 5.

Training-time augmentations of AugmentMelSTFT (random fmin/fmax jitter of the filterbank and
SpecAugment-style masking) are not part of this eval frontend.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from asc_jax.audio.features import stft_power


@dataclasses.dataclass(frozen=True)
class PaSSTFrontendConfig:
    sample_rate: int = 32000  # Input sample rate (Hz).
    n_mels: int = 128  # Mel bins.
    win_length: int = 800  # Hann window length (samples), centred in the n_fft frame.
    hop_length: int = 320  # Frame hop (samples); 10 ms at 32 kHz.
    n_fft: int = 1024  # FFT size.
    fmin: float = 0.0  # Lowest filterbank edge (Hz).
    # Highest filterbank edge (Hz). None: sample_rate // 2 - fmax_aug_range // 2, as AugmentMelSTFT
    # leaves room for its training-time fmax jitter (15 kHz for hear21passt's fmax_aug_range=2000).
    fmax: float | None = None
    fmax_aug_range: int = 2000  # hear21passt's training jitter range; only used to derive fmax.
    preemphasis: float = 0.97  # Preemphasis coefficient.

    @property
    def resolved_fmax(self) -> float:
        return float(self.fmax if self.fmax is not None
                     else self.sample_rate // 2 - self.fmax_aug_range // 2)

    def n_frames(self, n_samples: int) -> int:
        """Frames produced from a waveform of n_samples (preemphasis drops one sample)."""
        return 1 + (n_samples - 1) // self.hop_length


def _mel(freq: np.ndarray) -> np.ndarray:
    """Kaldi's mel scale."""
    return 1127.0 * np.log1p(freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, fmin: float,
                    fmax: float) -> np.ndarray:
    """Kaldi triangular mel filterbank (no VTLN warping), shape (n_mels, n_fft // 2 + 1).

    Triangles are linear in Kaldi's mel scale, evaluated at the FFT bin centres 0 .. n_fft/2 - 1;
    the Nyquist bin gets zero weight, as `torchaudio.compliance.kaldi.get_mel_banks` followed by
    AugmentMelSTFT's zero padding of the last column. fmax <= 0 counts down from Nyquist (Kaldi).
    """
    nyquist = 0.5 * sample_rate
    if fmax <= 0.0:
        fmax += nyquist
    if not 0.0 <= fmin < fmax <= nyquist:
        raise ValueError(f"need 0 <= fmin < fmax <= Nyquist, got fmin={fmin}, fmax={fmax}, "
                         f"sample_rate={sample_rate}")
    mel_low, mel_high = _mel(np.float64(fmin)), _mel(np.float64(fmax))
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + np.arange(n_mels)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    mel = _mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _constants(config: PaSSTFrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """(window zero-padded to n_fft, mel filterbank) as float32 numpy arrays."""
    if config.win_length > config.n_fft:
        raise ValueError(f"win_length {config.win_length} exceeds n_fft {config.n_fft}")
    n = np.arange(config.win_length)
    # torch.hann_window(periodic=False): symmetric Hann.
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / (config.win_length - 1))
    left = (config.n_fft - config.win_length) // 2  # torch.stft centres a short window.
    window = np.pad(window, (left, config.n_fft - config.win_length - left))
    banks = kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate, config.fmin,
                            config.resolved_fmax)
    return window.astype(np.float32), banks


def passt_logmel(waveform: jax.Array, config: PaSSTFrontendConfig = PaSSTFrontendConfig()) -> jax.Array:
    """PaSST log-mel features of a waveform batch.

    Args:
      waveform: (B, n_samples) or (n_samples,) float waveform at `config.sample_rate`.
      config: frontend settings (defaults: hear21passt's PaSST-S setup).

    Returns:
      (B, n_mels, config.n_frames(n_samples)) float32 (no batch axis for 1-D input).
    """
    if waveform.ndim not in (1, 2):
        raise ValueError(f"waveform must be (n_samples,) or (B, n_samples), got shape {waveform.shape}")
    if waveform.shape[-1] <= config.n_fft // 2 + 1:
        raise ValueError(f"waveform of {waveform.shape[-1]} samples is too short for reflect "
                         f"padding by n_fft // 2 = {config.n_fft // 2}")
    window, banks = _constants(config)
    x = jnp.asarray(waveform, jnp.float32)
    x = x[..., 1:] - config.preemphasis * x[..., :-1]
    power = stft_power(x, window, config.hop_length, pad_mode="reflect")  # (..., frames, bins)
    # HIGHEST: the filterbank sum must stay float32-exact on accelerators (TF32 would drift).
    mel = jnp.einsum("mf,...tf->...mt", banks, power, precision=jax.lax.Precision.HIGHEST)
    return (jnp.log(mel + 1e-5) + 4.5) / 5.0
