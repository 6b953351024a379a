"""Scene prediction for audio files with a saved model, written as a DCASE submission file.

    python -m asc_jax.predict --checkpoint <workdir>/deploy audio1.wav some/dir/ ... \
        [--output output.csv] [--batch-size 64] [--min-last-window 0.5]

* The checkpoint is a saved model dir (`checkpoint.load_model`): the float deploy model, written
  by training to <workdir>/deploy, or an int8 one (`quantize.save_quantized`). Its features are
  computed with the frontend its model.json names (`inference.load`).
* Inputs are files or directories; directories are searched recursively for .wav, .flac and
  .ogg files (sorted). A file listed twice (directly and inside a listed directory) is predicted
  once.
* Audio of any sample rate and channel count is averaged to mono and resampled (soxr, high
  quality) to the sample rate of the model's frontend. It is cut into consecutive 1-s windows,
  the length the models are trained on. A trailing partial window is zero-padded when it holds at least
  `--min-last-window` (default 0.5) of a window and dropped otherwise; a file shorter than one
  window is always zero-padded into one window. The file's class probabilities are the mean of
  the windows' softmax probabilities; its scene label is their argmax.
* Windows of several files share forward batches of `--batch-size` (the last one zero-padded),
  so the model is compiled once.
* Output: `--output` (default output.csv), tab-separated `filename, scene_label, <one
  probability column per class>` (`evaluate.write_dcase_output`). Filenames are written as given
  for files, and as `<directory name>/<path inside it>` for files found in a directory, so
  `predict ... DATASET/audio` writes `audio/<name>.wav` as in TAU's meta.csv. A table of the
  predictions is printed to stdout.
* A missing, unreadable, corrupt or empty file (or a directory without audio) gets one line
  `error: <path>: <reason>` on stderr and the batch goes on. Exit status: 0 when every input was
  predicted, 1 when any failed (output.csv then lists the others; it is not written when none
  succeeded), 2 for command-line errors. A missing or damaged model (`checkpoint.CorruptModelError`)
  is one `error: ...` line naming the directory and the damaged file or array, and exit status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Iterable, Sequence

import jax
import numpy as np

from asc_jax import evaluate, inference
from asc_jax.checkpoint import CorruptModelError
from asc_jax.data import tau

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
WINDOW_SECONDS = 1.0  # DCASE2024 Task 1 clip length: what the models see in training.
MIN_LAST_WINDOW = 0.5  # Fraction of a window a trailing partial window needs to be kept.


@dataclasses.dataclass(frozen=True)
class AudioInput:
    path: Path  # where to read it
    name: str  # how it appears in output.csv


@dataclasses.dataclass(frozen=True)
class InputError:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"error: {self.name}: {self.reason}"


@dataclasses.dataclass
class Predictions:
    """Per-file results in input order; failed files are in `errors` only."""

    filenames: list[str]
    probs: np.ndarray  # (n_files, n_classes) mean window probabilities
    n_windows: list[int]
    class_names: list[str]
    errors: list[InputError]


def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[AudioInput], list[InputError]]:
    """Expands files and directories (recursively) into audio inputs, without duplicates."""
    inputs: list[AudioInput] = []
    errors: list[InputError] = []
    seen: set[Path] = set()

    def add(path: Path, name: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            inputs.append(AudioInput(path, name))

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                errors.append(InputError(str(raw), f"no {'/'.join(AUDIO_SUFFIXES)} files in this directory"))
            base = path.resolve().name
            for p in found:
                add(p, (Path(base) / p.relative_to(path)).as_posix())
        elif path.is_file():
            add(path, str(raw))
        else:
            errors.append(InputError(str(raw), "no such file or directory"))
    return inputs, errors


def split_windows(wave: np.ndarray, window: int, min_last: float = MIN_LAST_WINDOW) -> np.ndarray:
    """(n_windows, window) consecutive windows of a 1-D waveform (see module docstring)."""
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {wave.shape}")
    n_full, rest = divmod(wave.size, window)
    keep_rest = rest > 0 and (n_full == 0 or rest >= min_last * window)
    n = n_full + int(keep_rest)
    out = np.zeros((n, window), np.float32)
    out.reshape(-1)[:min(wave.size, n * window)] = wave[:n * window]
    return out


class Predictor:
    """A saved model's jitted waveform-batch -> probabilities, run in batches of a fixed size."""

    def __init__(self, model_dir: str | Path, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.saved = inference.load(model_dir)
        self.sample_rate = self.saved.frontend.sample_rate
        self.class_names = list(self.saved.spec.get("class_names", tau.CLASSES))
        self.batch_size = batch_size
        self.window = round(WINDOW_SECONDS * self.sample_rate)

    def window_probs(self, windows: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities of (n, window) waveforms, in padded fixed-size batches."""
        logits = inference.predict(self.saved.fn, windows, self.batch_size)
        return np.asarray(jax.nn.softmax(logits, axis=-1))

    def load_windows(self, path: Path, min_last: float = MIN_LAST_WINDOW) -> np.ndarray:
        """Windows of one file; raises tau.ClipError (naming the file) on bad audio."""
        wave = tau.load_audio(path, self.sample_rate, expected_sr=None,
                              resampler=self.saved.frontend.resampler)
        return split_windows(wave, self.window, min_last)


def predict_files(model_dir: str | Path, paths: Sequence[str | Path], *, batch_size: int = 64,
                  min_last: float = MIN_LAST_WINDOW) -> Predictions:
    """Predicts every audio file in `paths` (files or directories); bad inputs become errors."""
    if not 0.0 < min_last <= 1.0:
        raise ValueError(f"min_last must be in (0, 1], got {min_last}")
    predictor = Predictor(model_dir, batch_size)
    inputs, errors = collect_inputs(paths)
    names, per_file = [], []
    for item in inputs:
        try:
            per_file.append(predictor.load_windows(item.path, min_last))
        except (tau.ClipError, OSError, ValueError, RuntimeError) as err:
            errors.append(InputError(item.name, getattr(err, "reason", None) or str(err)))
            continue
        names.append(item.name)
    counts = [len(w) for w in per_file]
    probs = predictor.window_probs(np.concatenate(per_file) if per_file else np.zeros((0, predictor.window)))
    bounds = np.cumsum([0, *counts])
    file_probs = np.stack([probs[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]) if counts \
        else np.zeros((0, len(predictor.class_names)), np.float32)
    return Predictions(names, file_probs, counts, predictor.class_names, errors)


def format_table(pred: Predictions) -> str:
    width = max([len("filename"), *map(len, pred.filenames)])
    lines = [f"{'filename':<{width}}  {'scene_label':<18}{'prob':>6}{'windows':>9}"]
    for name, p, n in zip(pred.filenames, pred.probs, pred.n_windows):
        k = int(np.argmax(p))
        lines.append(f"{name:<{width}}  {pred.class_names[k]:<18}{p[k]:>6.3f}{n:>9}")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Predict acoustic scenes of audio files with a saved model and write a DCASE output.csv "
                    "(exit status 1 if any input failed).")
    parser.add_argument("inputs", nargs="+", help="audio files or directories (searched recursively for "
                                                  f"{', '.join(AUDIO_SUFFIXES)})")
    parser.add_argument("--checkpoint", required=True, type=Path, help="saved model dir (<workdir>/deploy)")
    parser.add_argument("--output", type=Path, default=Path("output.csv"),
                        help="DCASE output file (default output.csv)")
    parser.add_argument("--batch-size", type=int, default=64, help="1-s windows per forward pass (default 64)")
    parser.add_argument("--min-last-window", type=float, default=MIN_LAST_WINDOW,
                        help="keep a trailing partial window (zero-padded) if it holds at least this fraction "
                             f"of a window (default {MIN_LAST_WINDOW})")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not 0.0 < args.min_last_window <= 1.0:
        parser.error("--min-last-window must be in (0, 1]")

    try:
        pred = predict_files(args.checkpoint, args.inputs, batch_size=args.batch_size,
                             min_last=args.min_last_window)
    except (CorruptModelError, FileNotFoundError) as err:  # the model, not an input: nothing to predict with
        print(f"error: {err}", file=sys.stderr)
        return 1
    for error in pred.errors:
        print(error, file=sys.stderr)
    if pred.filenames:
        evaluate.write_dcase_output(args.output, pred.filenames, pred.probs, pred.class_names)
        print(format_table(pred))
        print(f"wrote {len(pred.filenames)} predictions to {args.output}")
    if pred.errors:
        print(f"{len(pred.errors)} input(s) failed" + ("" if pred.filenames else "; no output written"),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
