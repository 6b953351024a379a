"""Log-mel frontend in JAX, run on the accelerator inside the jitted step.

Matches `librosa.feature.melspectrogram(center=True, pad_mode="constant", power=2)` with
`log(mel + floor)` on top (the CPJKU/DCASE2024 recipe: 32 kHz, window 3072, hop 512,
n_fft 4096, 256 mel bins). With ``htk=True, norm=None, pad_mode="reflect"`` it is
torchaudio's `MelSpectrogram` (periodic Hann window, HTK mel scale, unnormalised triangles,
reflect padding), the DCASE2024 baseline's frontend ("dcase2024" in `asc_jax.audio.frontends`). The mel matrix comes from `librosa.filters.mel` so the filterbank
is byte-for-byte the reference one. The STFT (`stft_power`, shared with the PaSST frontend) is
a static gather of frames + `jnp.fft.rfft` rather than `jax.scipy.signal.stft`: both run on the
device and agree to 3e-7 of the peak power (tests/test_features.py), but the library computed the
batch-128 spectrogram 1.2-1.3x slower on XLA:CPU (measured in one run), its scaling must be
undone, and matching librosa's frame count needs `boundary="zeros", padded=False` with the
window length as segment length, which is easy to get subtly wrong.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np


@dataclasses.dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 32_000  # Hz; audio is resampled to this rate when it is loaded.
    # How: "soxr" or "torchaudio" (torchaudio.transforms.Resample's default; asc_jax.audio.resample).
    resampler: str = "soxr"
    n_fft: int = 4096  # FFT size; the window is zero-padded to it (centred), as librosa does.
    win_length: int = 3072  # Hann window length in samples.
    hop_length: int = 512  # Frame hop in samples: 1 s at 32 kHz -> 63 frames with centring.
    n_mels: int = 256  # Mel bins (the model's frequency axis).
    f_min: float = 0.0  # Lowest mel band edge in Hz.
    f_max: float | None = None  # Highest band edge in Hz; None = Nyquist.
    htk: bool = False  # librosa's default Slaney mel scale unless True.
    norm: str | None = "slaney"  # librosa's filter normalisation.
    log_floor: float = 1e-5  # log(mel + floor), as in the CPJKU baseline code.
    # How the signal is extended by n_fft // 2 at both ends: "constant" (zeros, librosa
    # pad_mode="constant") or "reflect" (torch.stft / torchaudio.transforms.Spectrogram).
    pad_mode: str = "constant"

    def __post_init__(self):
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {self.pad_mode!r}")

    def n_frames(self, n_samples: int) -> int:
        """Frame count of a centred STFT over `n_samples` samples."""
        return 1 + n_samples // self.hop_length


@functools.lru_cache(maxsize=8)
def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float32 mel matrix from librosa, transposed for `power @ fb`."""
    fb = librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min,
        fmax=cfg.f_max,
        htk=cfg.htk,
        norm=cfg.norm,
    )
    return np.ascontiguousarray(fb.T, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _padded_window(cfg: MelConfig) -> np.ndarray:
    # librosa.filters.get_window + util.pad_center: a periodic Hann window centred in n_fft.
    window = librosa.filters.get_window("hann", cfg.win_length, fftbins=True)
    return librosa.util.pad_center(window, size=cfg.n_fft).astype(np.float32)


def stft_power(wave: jax.Array, window: np.ndarray, hop_length: int, pad_mode: str = "constant") -> jax.Array:
    """|STFT|^2 of a centred STFT, the one STFT core of every frontend (student and PaSST).

    Args:
      wave: (..., n_samples) batch.
      window: the analysis window already placed in an n_fft frame (librosa's `pad_center`,
        torch.stft's centring of a short window); its length is n_fft.
      hop_length: frame hop in samples.
      pad_mode: how the signal is extended by n_fft // 2 on both sides ("constant": librosa
        `pad_mode="constant"`; "reflect": torch.stft / librosa's default).
    Returns:
      (..., 1 + n_samples // hop_length, n_fft // 2 + 1) power.
    """
    n_fft = window.shape[-1]
    pad = n_fft // 2
    padded = jnp.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(pad, pad)], mode=pad_mode)
    n_frames = 1 + (padded.shape[-1] - n_fft) // hop_length
    # Static gather indices: frames are overlapping views of the padded signal. (Building them
    # from hop-sized blocks where the hop divides n_fft, 8 shifted slices for 4096 / 512, measured
    # no faster on XLA:CPU: the (B, frames, n_fft) copy for the FFT dominates either way.)
    idx = np.arange(n_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
    spec = jnp.fft.rfft(padded[..., idx] * window, n=n_fft, axis=-1)
    return jnp.real(spec) ** 2 + jnp.imag(spec) ** 2


def power_spectrogram(wave: jax.Array, cfg: MelConfig) -> jax.Array:
    """|STFT|^2 of a (..., n_samples) batch -> (..., n_frames, n_fft // 2 + 1)."""
    return stft_power(wave, _padded_window(cfg), cfg.hop_length, pad_mode=cfg.pad_mode)


# Mel bands per block of `_mel_blocks`.
_MELS_PER_BLOCK = 16


@functools.lru_cache(maxsize=8)
def _mel_blocks(cfg: MelConfig) -> tuple[tuple[int, int, np.ndarray], ...]:
    """The filterbank as (first bin, end bin, weights (end - first, mels)) per block of
    _MELS_PER_BLOCK consecutive bands, cut to the bins where the block has non-zero weights.

    Mel triangles are narrow and ordered by frequency (each FFT bin feeds at most two bands), so
    the dense (n_fft // 2 + 1, n_mels) product is ~97 % multiplications by zero: for 2049 bins x
    256 mels the blocks hold 6.6 % of it. Leaving out exact zeros changes only the summation order.
    """
    fb = mel_filterbank(cfg)
    blocks = []
    for start in range(0, fb.shape[1], _MELS_PER_BLOCK):
        block = fb[:, start:start + _MELS_PER_BLOCK]
        rows = np.flatnonzero(np.any(block != 0, axis=1))
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 1)
        blocks.append((lo, hi, np.ascontiguousarray(block[lo:hi])))
    return tuple(blocks)


def mel_spectrogram(wave: jax.Array, cfg: MelConfig) -> jax.Array:
    """Mel power spectrogram (..., n_mels, n_frames), the same layout as librosa's."""
    power = power_spectrogram(wave, cfg)
    mel = jnp.concatenate([jnp.matmul(power[..., lo:hi], block, precision=jax.lax.Precision.HIGHEST)
                           for lo, hi, block in _mel_blocks(cfg)], axis=-1)
    return jnp.swapaxes(mel, -1, -2)


def log_mel(wave: jax.Array, cfg: MelConfig = MelConfig()) -> jax.Array:
    """Log-mel features (..., n_mels, n_frames) from a waveform batch (..., n_samples)."""
    return jnp.log(mel_spectrogram(wave, cfg) + cfg.log_floor)
