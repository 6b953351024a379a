"""Device impulse responses for DIR augmentation: a folder of IR wavs, loaded and checked once,
and the convolution that applies one of them to a waveform on the host.

The IRs are the user's (e.g. MicIRP, as in Morocutti et al. 2023); nothing is downloaded. A
folder is read as every ``*.wav`` in it (not its subfolders), sorted by file name, so an IR's
index, which a teacher store records per clip, means the same file on every machine. Each file
must be at the pipeline's sample rate: a 44.1 kHz IR under a 32 kHz pipeline is refused rather
than resampled, so that the IR the store's teachers heard is exactly the one the student hears.
Multi-channel IRs are averaged to mono, like the clips (``tau.load_audio``); amplitudes are used
as stored (no normalisation), so an IR may change a clip's level, as the recording device would.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf


class IRError(ValueError):
    """A bad impulse-response folder or file; the message names it."""


@dataclasses.dataclass(frozen=True, eq=False)
class IRBank:
    """The IRs of one folder at one sample rate (``load_irs``), in file-name order.

    Attributes:
      folder: where they were read from.
      sr: their sample rate (the pipeline's).
      names: file names within ``folder``; ``irs[i]`` was read from ``names[i]``.
      irs: float32 mono IRs, read-only.
    """

    folder: Path
    sr: int
    names: tuple[str, ...]
    irs: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.irs)

    def __repr__(self) -> str:  # grain prints its transforms; the samples would flood that
        return f"IRBank({str(self.folder)!r}, {len(self.irs)} IRs at {self.sr} Hz)"

    def identity(self) -> dict:
        """What a teacher store records of the IR set, and a student's set must equal: the file
        names (their order is the index) and a SHA-256 of names, lengths and float32 samples. The
        folder's path is not part of it: the same IRs elsewhere are the same set."""
        digest = hashlib.sha256()
        for name, ir in zip(self.names, self.irs):
            digest.update(name.encode())
            digest.update(np.int64(ir.shape[0]).tobytes())
            digest.update(np.ascontiguousarray(ir, "<f4").tobytes())
        return {"files": list(self.names), "sha256": digest.hexdigest(), "sample_rate": self.sr}

    def ir(self, index: int) -> np.ndarray:
        """IR ``index``; an index outside the bank (e.g. replayed from a store made with more
        IRs) is an error naming the folder and its size."""
        if not 0 <= index < len(self.irs):
            raise IRError(f"IR index {index} is outside the {len(self.irs)} IRs of {self.folder}")
        return self.irs[index]


def load_irs(folder: str | Path, sr: int) -> IRBank:
    """Reads every ``*.wav`` of ``folder`` (sorted by name) as a float32 mono IR at ``sr`` Hz.

    Raises:
      IRError: naming the folder if it is unset, missing or holds no wav; naming the file if it
        is unreadable, at another sample rate (both rates given), empty, non-finite or all zero.
    """
    if not str(folder):
        raise IRError("augment.dir.folder is empty: set it to a folder of impulse-response wavs")
    folder = Path(folder)
    if not folder.is_dir():
        raise IRError(f"impulse-response folder {folder} does not exist or is not a directory")
    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".wav" and p.is_file()),
                   key=lambda p: p.name)
    if not paths:
        raise IRError(f"impulse-response folder {folder} holds no .wav files")
    irs = tuple(_read_ir(path, sr) for path in paths)
    return IRBank(folder, sr, tuple(p.name for p in paths), irs)


def _read_ir(path: Path, sr: int) -> np.ndarray:
    try:
        rate = sf.info(str(path)).samplerate
        if rate == sr:
            data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise IRError(f"impulse response {path}: unreadable or corrupt audio ({err})") from err
    if rate != sr:
        raise IRError(f"impulse response {path}: sample rate {rate} Hz, the pipeline's is {sr} Hz; "
                      f"resample the IRs to {sr} Hz")
    ir = data.mean(axis=1)
    if ir.shape[0] == 0:
        raise IRError(f"impulse response {path}: empty (0 samples)")
    if not np.all(np.isfinite(ir)):
        raise IRError(f"impulse response {path}: contains NaN or Inf")
    if not np.any(ir):
        raise IRError(f"impulse response {path}: all zeros (it would silence every clip)")
    ir = np.ascontiguousarray(ir, np.float32)
    ir.setflags(write=False)  # shared by every clip and, pickled, by every grain worker
    return ir


def convolve_ir(wave: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """``np.convolve(wave, ir, "full")[:n]`` along the last axis (n = wave's length), float32.

    The 'full' convolution cut to the clip's length keeps the clip aligned (output sample t sees
    input samples t, t-1, ...) and drops the IR's tail past the clip's end, as CPJKU's
    ``scipy.signal.convolve(x, ir, 'full')[:len(x)]``. Computed by FFT in float64 (a direct
    convolution costs n * len(ir) multiplies per clip, too slow for a host pipeline with long
    IRs); it agrees with NumPy's direct float64 convolution to ~1e-15 relative before the
    rounding to float32, i.e. to within one float32 rounding.

    Args:
      wave: (..., n) waveform(s).
      ir: (m,) impulse response.

    Returns:
      float32 array of ``wave``'s shape.
    """
    n = wave.shape[-1]
    n_fft = 1 << (n + ir.shape[0] - 2).bit_length()  # a power of two >= the full length n + m - 1
    spectrum = np.fft.rfft(np.asarray(wave, np.float64), n_fft) * np.fft.rfft(np.asarray(ir, np.float64), n_fft)
    return np.fft.irfft(spectrum, n_fft)[..., :n].astype(np.float32)
