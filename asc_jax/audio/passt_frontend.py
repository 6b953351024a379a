"""CPJKU's `AugmentMelSTFT` in JAX: PaSST's own log-mel, and the CPJKU DCASE2023 students'.

The class (hear21passt `AugmentMelSTFT`, copied into cpjku_dcase23 `models/mel.py`) is one
frontend with two published settings, both registered in `asc_jax.audio.frontends`:
"passt" (the defaults here: 128 mels, hop 320) and "cpjku" (`CPJKU_STUDENT`: 256 mels, window
3072, n_fft 4096, hop 500, fmax_aug_range 1000). PaSST teachers were trained on these features,
not on the students' frontend, so their logits must be computed with it:

  waveform (32 kHz) -> preemphasis y[n] = x[n+1] - 0.97 x[n]  (one sample shorter)
  -> |STFT|^2 (n_fft 1024, symmetric Hann window of 800 zero-padded to 1024, hop 320, centred with
     reflect padding) -> Kaldi mel filterbank (128 bins, fmin 0, fmax 15 kHz, zero weight for the
     Nyquist bin) -> log(x + 1e-5) -> (x + 4.5) / 5.

Of AugmentMelSTFT's training-time augmentations, the fmin/fmax jitter of the filterbank is an
option here (``mel_jitter``, off by default; `passt_logmel_train`); its SpecAugment-style masks
are the augmentations of `asc_jax.audio.augment` (frequency and time masking).
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
    resampler: str = "soxr"  # how audio is brought to sample_rate (asc_jax.audio.resample)
    n_mels: int = 128  # Mel bins.
    win_length: int = 800  # Hann window length (samples), centred in the n_fft frame.
    hop_length: int = 320  # Frame hop (samples); 10 ms at 32 kHz.
    n_fft: int = 1024  # FFT size.
    fmin: float = 0.0  # Lowest filterbank edge (Hz).
    # Highest filterbank edge (Hz). None: sample_rate // 2 - fmax_aug_range // 2, as AugmentMelSTFT
    # leaves room for its training-time fmax jitter (15 kHz for hear21passt's fmax_aug_range=2000).
    fmax: float | None = None
    # Training-time jitter ranges of AugmentMelSTFT (Hz): fmax_aug_range also sets the default
    # fmax. With mel_jitter, each training batch uses fmin + U{0 .. fmin_aug_range - 1} and
    # fmax + fmax_aug_range // 2 - U{0 .. fmax_aug_range - 1} (one draw per batch, torch.randint
    # as in the reference); evaluation always uses fmin and fmax.
    fmax_aug_range: int = 2000
    fmin_aug_range: int = 10
    mel_jitter: bool = False  # the fmin/fmax jitter in training (CPJKU trains with it on)
    preemphasis: float = 0.97  # Preemphasis coefficient.

    def __post_init__(self):
        if self.fmin_aug_range < 1 or self.fmax_aug_range < 1:
            raise ValueError(f"fmin_aug_range and fmax_aug_range must be >= 1 (torch.randint's "
                             f"bound), got {self.fmin_aug_range} and {self.fmax_aug_range}")

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


def _triangles(xp, mel_low, mel_high, n_mels: int, n_fft: int, sample_rate: float):
    """Kaldi's triangles between mel_low and mel_high, in numpy (float64) or jnp (traceable
    edges, float32), (n_mels, n_fft // 2) without the Nyquist column."""
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + xp.arange(n_mels)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    mel = xp.asarray(_mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :])
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return xp.maximum(0.0, xp.minimum(up, down))


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
    banks = _triangles(np, _mel(np.float64(fmin)), _mel(np.float64(fmax)), n_mels, n_fft, sample_rate)
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


def jitter_edges(key: jax.Array, config: PaSSTFrontendConfig) -> tuple[jax.Array, jax.Array]:
    """One training batch's filterbank edges (fmin, fmax) in Hz, drawn as AugmentMelSTFT does:
    ``fmin + randint(fmin_aug_range)``, ``fmax + fmax_aug_range // 2 - randint(fmax_aug_range)``
    (capped at Nyquist)."""
    k_min, k_max = jax.random.split(key)
    fmin = config.fmin + jax.random.randint(k_min, (), 0, config.fmin_aug_range)
    fmax = (config.resolved_fmax + config.fmax_aug_range // 2
            - jax.random.randint(k_max, (), 0, config.fmax_aug_range))
    return (jnp.asarray(fmin, jnp.float32),
            jnp.minimum(jnp.asarray(fmax, jnp.float32), config.sample_rate / 2))


def traced_mel_banks(fmin: jax.Array, fmax: jax.Array, config: PaSSTFrontendConfig) -> jax.Array:
    """`kaldi_mel_banks` for traced edges, on device in float32 (the eval banks are float64
    numpy; for equal edges they agree to 3e-5 of a weight, as torchaudio's float32 get_mel_banks
    does, and the features to 1e-4: tests/test_torch_frontends.py)."""
    mel = lambda f: 1127.0 * jnp.log1p(f / 700.0)  # noqa: E731  (_mel, traceable)
    banks = _triangles(jnp, mel(fmin), mel(fmax), config.n_mels, config.n_fft, config.sample_rate)
    return jnp.pad(banks.astype(jnp.float32), ((0, 0), (0, 1)))


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
    return mel_from_banks(waveform, _constants(config)[1], config)


def passt_logmel_train(waveform: jax.Array, key: jax.Array,
                       config: PaSSTFrontendConfig = PaSSTFrontendConfig()) -> jax.Array:
    """`passt_logmel` as in training: with ``config.mel_jitter``, through the filterbank of
    edges drawn from ``key`` (`jitter_edges`); else the eval features."""
    if not config.mel_jitter:
        return passt_logmel(waveform, config)
    return mel_from_banks(waveform, traced_mel_banks(*jitter_edges(key, config), config), config)


def mel_from_banks(waveform: jax.Array, banks, config: PaSSTFrontendConfig) -> jax.Array:
    """The frontend's features through a given (n_mels, n_fft // 2 + 1) filterbank."""
    if waveform.ndim not in (1, 2):
        raise ValueError(f"waveform must be (n_samples,) or (B, n_samples), got shape {waveform.shape}")
    if waveform.shape[-1] <= config.n_fft // 2 + 1:
        raise ValueError(f"waveform of {waveform.shape[-1]} samples is too short for reflect "
                         f"padding by n_fft // 2 = {config.n_fft // 2}")
    window = _constants(config)[0]
    x = jnp.asarray(waveform, jnp.float32)
    x = x[..., 1:] - config.preemphasis * x[..., :-1]
    power = stft_power(x, window, config.hop_length, pad_mode="reflect")  # (..., frames, bins)
    # HIGHEST: the filterbank sum must stay float32-exact on accelerators (TF32 would drift).
    mel = jnp.einsum("mf,...tf->...mt", banks, power, precision=jax.lax.Precision.HIGHEST)
    return (jnp.log(mel + 1e-5) + 4.5) / 5.0


# cpjku_dcase23's student frontend (`AugmentMelSTFT(n_mels=256, sr=32000, win_length=3072,
# hopsize=500, n_fft=4096, fmin_aug_range=1, fmax_aug_range=1000)`): 64 frames per 1-s clip,
# fmax = 16000 - 500 = 15.5 kHz. The "cpjku" frontend; its checkpoints come in through
# convert_weights.py.
CPJKU_STUDENT = PaSSTFrontendConfig(n_mels=256, win_length=3072, hop_length=500, n_fft=4096,
                                    fmin_aug_range=1, fmax_aug_range=1000)
