"""Scene prediction for audio files with a saved model or a device model set, written as a DCASE
submission file.

    python -m asc_jax.predict --checkpoint <workdir>/deploy audio1.wav some/dir/ ... \
        [--output output.csv] [--batch-size 64] [--min-last-window 0.5] [--devices devices.csv]

* The checkpoint is a saved model dir (`checkpoint.load_model`): the float deploy model, written
  by training to <workdir>/deploy, or an int8 one (`quantize.save_quantized`). Its features are
  computed with the frontend its model.json names (`inference.load`).
* Or it is a device model set (`asc_jax.device_set`, DCASE2025: a general model plus one model
  per known device). Every file then goes to the model of its recording device: the device id
  comes from `--devices FILE` (a tab- or comma-separated table with columns `filename` and
  `device_id`), or, without it, from the file name in TAU naming (the last `-` field of the
  stem: `airport-lisbon-1000-40000-0-s4.wav` -> `s4`; a stem without `-` has no device). A
  file whose device has no model of its own goes to the general (base) model: a missing id (not
  in the table, empty, or a name without one), the id "unknown", or a device the set was not
  fine-tuned for ("unseen"). After the table, a routing summary gives the files per member and
  these fallbacks by kind. A table row matches a file by the name it gets in output.csv, else by
  its path as given, else by its base name when that base name occurs once in the table. For a
  single saved model the device ids are not needed (a note says so when `--devices` is given).
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
  so the model is compiled once (once per member of a set).
* Output: `--output` (default output.csv), tab-separated `filename, scene_label, <one
  probability column per class>` (`evaluate.write_dcase_output`). Filenames are written as given
  for files, and as `<directory name>/<path inside it>` for files found in a directory, so
  `predict ... DATASET/audio` writes `audio/<name>.wav` as in TAU's meta.csv. A table of the
  predictions is printed to stdout.
* A missing, unreadable, corrupt or empty file (or a directory without audio) gets one line
  `error: <path>: <reason>` on stderr and the batch goes on. Exit status: 0 when every input was
  predicted, 1 when any failed (output.csv then lists the others; it is not written when none
  succeeded), 2 for command-line errors. A missing or damaged model or set
  (`checkpoint.CorruptModelError`, a bad device_set.json) or an unreadable `--devices` table is
  one `error: ...` line naming the directory or file and what is wrong, and exit status 1.
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np

from asc_jax import device_set as ds
from asc_jax import evaluate, inference
from asc_jax.checkpoint import CorruptModelError, resolve_model_dir
from asc_jax.data import tau

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
WINDOW_SECONDS = 1.0  # DCASE2024 Task 1 clip length: what the models see in training.
MIN_LAST_WINDOW = 0.5  # Fraction of a window a trailing partial window needs to be kept.
# Why a clip went to the base model of a set although it names a device (see `fallback_reason`).
FALLBACKS = ("missing", "unknown", "unseen")


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


@dataclasses.dataclass(frozen=True)
class Routing:
    """Where the files of a device-set prediction went.

    Attributes:
      per_member: {member key: files} for every member of the set (the base first), zeros included.
      fallbacks: {reason: files} routed to the base for one of `FALLBACKS`, zeros included.
      unseen: {device id: files} of the "unseen" fallbacks.
    """

    per_member: Mapping[str, int]
    fallbacks: Mapping[str, int]
    unseen: Mapping[str, int]

    @property
    def n_fallback(self) -> int:
        return sum(self.fallbacks.values())

    def summary(self) -> str:
        members = ", ".join(f"{k} {n}" for k, n in self.per_member.items())
        lines = [f"routing: {members} (files per model)"]
        if self.n_fallback:
            kinds = []
            for reason in FALLBACKS:
                n = self.fallbacks[reason]
                if n and reason == "unseen":
                    ids = ", ".join(f"{d} {c}" for d, c in sorted(self.unseen.items()))
                    kinds.append(f"{n} of a device without its own model ({ids})")
                elif n:
                    kinds.append(f"{n} with {'no device id' if reason == 'missing' else 'device unknown'}")
            lines.append(f"{self.n_fallback} file(s) fell back to the base model: {'; '.join(kinds)}")
        else:
            lines.append("0 files fell back to the base model")
        return "\n".join(lines)


@dataclasses.dataclass
class Predictions:
    """Per-file results in input order; failed files are in `errors` only."""

    filenames: list[str]
    probs: np.ndarray  # (n_files, n_classes) mean window probabilities
    n_windows: list[int]
    class_names: list[str]
    errors: list[InputError]
    devices: list[str | None] = dataclasses.field(default_factory=list)  # device id of each file
    members: list[str] = dataclasses.field(default_factory=list)  # the model each file went to
    routing: Routing | None = None  # None for a single saved model


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


def device_from_name(name: str) -> str | None:
    """The device of a TAU-named file (`...-s4.wav` -> "s4"); None for a stem without '-'
    (the evaluation set's numbered clips name no device)."""
    return tau.device_from_filename(name) if "-" in Path(name).stem else None


def read_device_table(path: str | Path) -> dict[str, str]:
    """{filename: device_id} from a tab- or comma-separated table with those two columns
    (the separator is the one the header line uses; other columns are ignored).

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file and the row, for missing columns or a filename listed twice
        with different devices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: device table not found")
    with path.open(newline="", encoding="utf-8") as f:
        header = f.readline()
        f.seek(0)
        reader = csv.DictReader(f, delimiter="\t" if "\t" in header else ",")
        missing = [c for c in ("filename", "device_id") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames} "
                             "(a tab- or comma-separated table with filename and device_id)")
        table: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            name, device = (row["filename"] or "").strip(), (row["device_id"] or "").strip()
            if name in table and table[name] != device:
                raise ValueError(f"{path} line {line}: {name} is listed with devices "
                                 f"{table[name]!r} and {device!r}")
            table[name] = device
    return table


def devices_of(inputs: Sequence[AudioInput], table: Mapping[str, str] | None) -> list[str | None]:
    """Each input's device id: from `table` (`read_device_table`; matched as the module
    docstring says) or, without one, from its file name. None where none is found."""
    if table is None:
        return [device_from_name(item.name) for item in inputs]
    base_names = collections.Counter(Path(k).name for k in table)
    by_base = {Path(k).name: v for k, v in table.items() if base_names[Path(k).name] == 1}
    found = []
    for item in inputs:
        for key, lookup in ((item.name, table), (str(item.path), table), (item.path.name, by_base)):
            if key in lookup:
                found.append(lookup[key] or None)
                break
        else:
            found.append(None)
    return found


def fallback_reason(device_set: ds.DeviceModelSet, device_id: str | None) -> str | None:
    """Why a clip of `device_id` goes to the base model ("missing", "unknown", "unseen"), or
    None when its device has a model of its own."""
    if device_set.route(device_id) != ds.BASE:
        return None
    if not device_id:
        return "missing"
    return "unknown" if device_id == ds.UNKNOWN else "unseen"


def routing_of(device_set: ds.DeviceModelSet, device_ids: Sequence[str | None]) -> Routing:
    per_member = {key: 0 for key in device_set.members()}
    fallbacks = {reason: 0 for reason in FALLBACKS}
    unseen: dict[str, int] = collections.Counter()
    for device in device_ids:
        per_member[device_set.route(device)] += 1
        reason = fallback_reason(device_set, device)
        if reason:
            fallbacks[reason] += 1
        if reason == "unseen":
            unseen[device] += 1
    return Routing(per_member, fallbacks, dict(unseen))


class Predictor:
    """A saved model or a device model set, loaded: jitted waveform batches -> logits, run in
    batches of a fixed size, each window through the model its device routes to.

    A single saved model is held as a set with only a base model (`is_set` False), so both
    predict through `device_set.predict_routed`.
    """

    def __init__(self, checkpoint: str | Path, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.is_set = ds.is_device_set(checkpoint)
        if self.is_set:
            self.device_set = ds.read_device_set(checkpoint)
            self.members = ds.load_members(self.device_set)
        else:
            directory = resolve_model_dir(checkpoint)
            saved = inference.load(directory)
            names = tuple(saved.spec.get("class_names", tau.CLASSES))
            self.device_set = ds.DeviceModelSet(directory, directory, {}, names, {})
            self.members = {ds.BASE: saved}
        self.class_names = list(self.device_set.class_names)
        self.sample_rate = self.saved.frontend.sample_rate
        self.batch_size = batch_size
        self.window = round(WINDOW_SECONDS * self.sample_rate)

    @property
    def saved(self) -> inference.SavedModel:
        """The base model (the only one of a single saved model)."""
        return self.members[ds.BASE]

    def route(self, device_id: str | None) -> str:
        return self.device_set.route(device_id or None)

    def window_logits(self, windows: np.ndarray, device_ids: Sequence[str | None] | None = None) -> np.ndarray:
        """(n, n_classes) logits of (n, window) waveforms, each from the member its device id
        routes to (all from the base without ids), in padded fixed-size batches."""
        ids = [None] * len(windows) if device_ids is None else list(device_ids)
        return ds.predict_routed(self.device_set, windows, ids, batch_size=self.batch_size,
                                 loaded=self.members).logits

    def window_probs(self, windows: np.ndarray, device_ids: Sequence[str | None] | None = None) -> np.ndarray:
        """Softmax of `window_logits`."""
        return np.asarray(jax.nn.softmax(self.window_logits(windows, device_ids), axis=-1))

    def load_windows(self, path: Path, min_last: float = MIN_LAST_WINDOW) -> np.ndarray:
        """Windows of one file; raises tau.ClipError (naming the file) on bad audio."""
        wave = tau.load_audio(path, self.sample_rate, expected_sr=None,
                              resampler=self.saved.frontend.resampler)
        return split_windows(wave, self.window, min_last)


def per_window(values: Sequence, counts: Sequence[int]) -> list:
    """Each file's value repeated once per window of that file."""
    return [v for v, n in zip(values, counts) for _ in range(n)]


def file_means(window_values: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """(n_files, C) means of consecutive groups of `counts` rows of (sum(counts), C) values."""
    bounds = np.cumsum([0, *counts])
    if not counts:
        return np.zeros((0, window_values.shape[-1]), np.float32)
    return np.stack([window_values[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])


def predict_files(model: str | Path | Predictor, paths: Sequence[str | Path], *, batch_size: int = 64,
                  min_last: float = MIN_LAST_WINDOW, device_table: Mapping[str, str] | None = None
                  ) -> Predictions:
    """Predicts every audio file in `paths` (files or directories); bad inputs become errors.

    Args:
      model: a saved model / device set directory, or a loaded `Predictor` (its batch size wins).
      device_table: {filename: device_id} (`read_device_table`); None: devices from file names.
        Only a device set uses them.
    """
    if not 0.0 < min_last <= 1.0:
        raise ValueError(f"min_last must be in (0, 1], got {min_last}")
    predictor = model if isinstance(model, Predictor) else Predictor(model, batch_size)
    inputs, errors = collect_inputs(paths)
    good, per_file = [], []
    for item in inputs:
        try:
            per_file.append(predictor.load_windows(item.path, min_last))
        except (tau.ClipError, OSError, ValueError, RuntimeError) as err:
            errors.append(InputError(item.name, getattr(err, "reason", None) or str(err)))
            continue
        good.append(item)
    counts = [len(w) for w in per_file]
    devices = devices_of(good, device_table) if predictor.is_set else [None] * len(good)
    windows = np.concatenate(per_file) if per_file else np.zeros((0, predictor.window), np.float32)
    probs = predictor.window_probs(windows, per_window(devices, counts))
    routing = routing_of(predictor.device_set, devices) if predictor.is_set else None
    return Predictions([item.name for item in good], file_means(probs, counts), counts,
                       predictor.class_names, errors, devices, [predictor.route(d) for d in devices],
                       routing)


def format_table(pred: Predictions) -> str:
    width = max([len("filename"), *map(len, pred.filenames)])
    routed = pred.routing is not None
    header = f"{'filename':<{width}}  {'scene_label':<18}{'prob':>6}{'windows':>9}"
    lines = [header + (f"  {'device':<8}model" if routed else "")]
    for i, (name, p, n) in enumerate(zip(pred.filenames, pred.probs, pred.n_windows)):
        k = int(np.argmax(p))
        line = f"{name:<{width}}  {pred.class_names[k]:<18}{p[k]:>6.3f}{n:>9}"
        if routed:
            line += f"  {pred.devices[i] or '-':<8}{pred.members[i]}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Predict acoustic scenes of audio files with a saved model or a device model set and "
                    "write a DCASE output.csv (exit status 1 if any input failed).")
    parser.add_argument("inputs", nargs="+", help="audio files or directories (searched recursively for "
                                                  f"{', '.join(AUDIO_SUFFIXES)})")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="saved model dir (<workdir>/deploy) or device model set dir (device_set.json)")
    parser.add_argument("--output", type=Path, default=Path("output.csv"),
                        help="DCASE output file (default output.csv)")
    parser.add_argument("--batch-size", type=int, default=64, help="1-s windows per forward pass (default 64)")
    parser.add_argument("--min-last-window", type=float, default=MIN_LAST_WINDOW,
                        help="keep a trailing partial window (zero-padded) if it holds at least this fraction "
                             f"of a window (default {MIN_LAST_WINDOW})")
    parser.add_argument("--devices", type=Path, default=None,
                        help="table (tab- or comma-separated) with columns filename and device_id, for a device "
                             "set; default: the device from each file name (TAU naming, '...-s4.wav')")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not 0.0 < args.min_last_window <= 1.0:
        parser.error("--min-last-window must be in (0, 1]")

    try:  # the model and the device table, not an input: nothing to predict with
        predictor = Predictor(args.checkpoint, args.batch_size)
        table = None if args.devices is None else read_device_table(args.devices)
    except (CorruptModelError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if table is not None and not predictor.is_set:
        print(f"note: {args.checkpoint} is a single model; the device ids of {args.devices} are not used",
              file=sys.stderr)
    pred = predict_files(predictor, args.inputs, min_last=args.min_last_window, device_table=table)
    for error in pred.errors:
        print(error, file=sys.stderr)
    if pred.filenames:
        evaluate.write_dcase_output(args.output, pred.filenames, pred.probs, pred.class_names)
        print(format_table(pred))
        if pred.routing is not None:
            print(pred.routing.summary())
        print(f"wrote {len(pred.filenames)} predictions to {args.output}")
    if pred.errors:
        print(f"{len(pred.errors)} input(s) failed" + ("" if pred.filenames else "; no output written"),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
