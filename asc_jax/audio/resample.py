"""Resampling of decoded clips to a frontend's rate: soxr (the default) or torchaudio's sinc.

Two resamplers are offered because they differ audibly above ~12 kHz:

* ``"soxr"`` (`soxr.resample`, quality "HQ"): a steep anti-aliasing filter. Used for everything
  trained here.
* ``"torchaudio"``: what `torchaudio.transforms.Resample(orig, new)` computes with its defaults
  (``sinc_interp_hann``, ``lowpass_filter_width=6``, ``rolloff=0.99``), the resampler inside the
  DCASE2024 baseline's mel module. Its short windowed-sinc filter lets energy near the new
  Nyquist fold back: a 17 kHz tone resampled from 44.1 to 32 kHz aliases to 15 kHz with rms
  0.10 (soxr: 0.001). A model trained on torchaudio-resampled audio (a converted DCASE2024
  baseline checkpoint) predicts like the original only when fed the same resampling, so its
  frontend names this one (`asc_jax.audio.frontends`).

The torchaudio resampler is re-implemented here (numpy, float64 kernel like torchaudio's, cast
to float32) rather than imported: torchaudio is not a dependency, and its wheels for this
project's CPU torch do not import. tests/test_torch_frontends.py checks it against a torch
transcription of `_get_sinc_resample_kernel` / `_apply_sinc_resample_kernel`.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import soxr

RESAMPLERS = ("soxr", "torchaudio")


@functools.lru_cache(maxsize=8)
def sinc_kernel(orig: int, new: int, lowpass_filter_width: int = 6,
                rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """torchaudio's ``_get_sinc_resample_kernel`` (sinc_interp_hann): ((new, 2 width + orig)
    float32 kernel, width) for the gcd-reduced rates ``orig -> new``."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    # torchaudio computes this offset in float32 (an int arange divided by an int), then adds
    # the float64 index: reproduced so the kernels agree to the last bit.
    offset = (np.arange(0, -new, -1) / np.float32(new)).astype(np.float32)[:, None]
    t = np.clip((offset + idx) * base, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    return (kernel * window * (base / orig)).astype(np.float32), width


def torchaudio_resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """``torchaudio.transforms.Resample(orig_sr, new_sr)(wave)`` for a 1-D float waveform."""
    gcd = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // gcd, int(new_sr) // gcd
    kernel, width = sinc_kernel(orig, new)
    x = np.pad(np.asarray(wave, np.float32), (width, width + orig))
    # conv1d(stride=orig) with `new` output channels: frame f, channel c is output sample
    # f * new + c (torchaudio's transpose + reshape).
    n_frames = (x.shape[0] - kernel.shape[1]) // orig + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[1])[::orig][:n_frames]
    out = (frames.astype(np.float64) @ kernel.T.astype(np.float64)).reshape(-1)
    return out[:math.ceil(new * wave.shape[0] / orig)].astype(np.float32)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int, method: str = "soxr") -> np.ndarray:
    """Resamples a 1-D float32 waveform from ``orig_sr`` to ``new_sr`` with ``method``
    (one of `RESAMPLERS`); a no-op when the rates are equal."""
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampler {method!r}; known: {RESAMPLERS}")
    if orig_sr == new_sr:
        return np.asarray(wave, np.float32)
    if method == "soxr":
        return np.asarray(soxr.resample(wave, orig_sr, new_sr, quality="HQ"), np.float32)
    return torchaudio_resample(wave, orig_sr, new_sr)
