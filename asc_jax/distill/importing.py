"""Import teacher logits computed elsewhere (PyTorch, e.g. the CPJKU DCASE23 ensemble) into a
regular teacher-logit store.

  python -m asc_jax.distill import --logits ensemble_logits.pt --filenames meta.csv \
      --classes airport,bus,metro,...,tram --name cpjku_ensemble \
      --config configs/kd_tau.py:split=25 [--set data.root=...] [--out DIR]

(``--classes``: all ten names, in the order of the logits' columns.)

What is read:

  * logits: a torch ``.pt``/``.pth`` (``torch.load(weights_only=True)``: a tensor, or a dict
    holding one tensor; ``--key`` picks one of several), a ``.npy`` / ``.npz`` array, of shape
    (N, C) or (N, V, C); or a CSV/TSV with a ``filename`` column and one column per class, whose
    header names the classes.
  * filenames (arrays only: a CSV names its own clips): row i of the logits is the clip on line
    i of ``--filenames``, a text file with one name per line or a CSV/TSV with a ``filename``
    column (meta.csv, a split csv; the delimiter is sniffed). A row count that matches no list
    fails and says which known list (meta.csv, every split file of the dataset) N does match,
    or which one it is a multiple of (logits of several splits or views stacked along the rows).
  * classes: ``--classes`` gives the array's column order by name ("dataset": the dataset's
    own order, said explicitly); it must be a permutation of the dataset's classes, and the
    columns are reordered to the dataset's order. Never guessed: a silently permuted class axis
    would train a student on wrong targets without any error.

Which clips the store holds (the target set): those of the student's training split
(``--config``: its ``data.root`` and ``data.train_split``, as precompute reads them; clips whose
metadata training would skip are left out) or of a split csv (``--split FILE``). Clips are
matched on their base name, since TAU keeps every clip in audio/: "audio/x.wav", "x.wav" and
"/data/TAU/audio/x.wav" are one clip; the store names them as the dataset does
("audio/x.wav"). Logits of clips outside the target set but in the dataset (meta.csv) are
dropped with a logged count: the normal case of logits computed for the whole dataset. Rows
naming clips that are not in the dataset at all fail (another dataset version, or names that
do not match), as does any clip of the target set without logits; both name the first few
clips and give the count. Without a known meta.csv (``--split`` outside a dataset root and no
``--meta``), every row outside the target set is dropped with a warning instead.

Views: the store keeps one view per clip (V = 1) and no augmentation parameters, since nothing
the teacher saw can be replayed. (N, 1, C) is taken as is; V > 1 (logits of V augmented views,
or of V ensemble members) is refused unless ``--reduce mean`` averages the logits over that axis
(the arithmetic mean of the logits, not of the probabilities).

Values: non-finite logits fail, naming the source row, its clip and the class. Rows that all
look like probabilities (in [0, 1], summing to 1, e.g. a DCASE output.csv) are refused unless
``--probabilities`` takes their log (zeros become log of the smallest normal float32, about
-87, so the softmax gives them ~0 instead of NaN).

The store is written by ``store.write_store`` (the precompute format) with one teacher
(``--name``; its arch, the text before the first "-", decides which ensembles select it:
"passt-cpjku" is a "transformer", "cpjku_ensemble" is only in "all"), and its header records the
provenance under ``meta["import"]``: the source file and its sha256, the filename and target
files with theirs, the source shape, classes and reduction, the rows dropped and the command.
``meta["augment"]`` has every augmentation disabled: the store replays nothing. The student's
store-vs-config check (``extras.check_augment``) recognises an imported store by
``meta["import"]`` and accepts it whatever the student's augmentation, which the student then
samples fresh (roll on the host, masks on device), as for a run without a store.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import logging
import re
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from asc_jax.audio import augment
from asc_jax.config import Config
from asc_jax.data import sources, tau
from asc_jax.distill.ensembles import ENSEMBLES
from asc_jax.distill.store import StoreError, TeacherStore, read_store, write_store

log = logging.getLogger(__name__)

ARRAY_SUFFIXES = (".pt", ".pth", ".npy", ".npz")
TABLE_SUFFIXES = (".csv", ".tsv")
# What an imported store replays: nothing (see the module docstring).
NO_AUGMENT = augment.AugmentConfig(**{f.name: None for f in dataclasses.fields(augment.AugmentConfig)})
_TEACHER_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_SHOWN = 5
_MAX_STACKED = 16  # the largest multiple of a known list that a row count is reported as


def _some(names: Sequence, n: int = _SHOWN) -> str:
    """'3 (e.g. 'a', 'b', 'c')' / '12 (e.g. 'a', ..., ...)': a count and the first few names."""
    shown = ", ".join(repr(x) for x in list(names)[:n])
    return f"{len(names)} (e.g. {shown}{', ...' if len(names) > n else ''})"


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clip_key(name: str) -> str:
    """The name a clip is matched on: its base name ("audio/x.wav", "C:\\TAU\\audio\\x.wav" ->
    "x.wav"); TAU keeps every clip in one folder, so the directory says nothing about the clip."""
    return PurePosixPath(name.strip().replace("\\", "/")).name


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------
def _sniff_delimiter(line: str) -> str | None:
    """The delimiter of a CSV/TSV header line (tab, comma or semicolon), None for a plain line."""
    counts = {d: line.count(d) for d in ("\t", ",", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def _read_table(path: Path) -> tuple[list[str], list[list[str]], str | None]:
    """(header, rows, delimiter) of a CSV/TSV; (["filename"], [[name], ...], None) for a plain
    list whose first line is no header. utf-8-sig: a spreadsheet's byte-order mark is no part of
    the first column's name."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        first = f.readline().rstrip("\r\n")
        delimiter = _sniff_delimiter(first)
        if delimiter is None and first.strip() != "filename":
            f.seek(0)
            lines = f.read().splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
            if blank:
                raise StoreError(f"{path}: blank line(s) {blank[:_SHOWN]} in a list of one filename per "
                                 "line (the rows would no longer line up with the logits)")
            return ["filename"], [[line.strip()] for line in lines], None
        delimiter = delimiter or "\t"
        header = [h.strip() for h in next(csv.reader([first], delimiter=delimiter))]
        # Blank lines are skipped, as csv.DictReader (and so tau's meta.csv reader) does.
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    return header, rows, delimiter


def read_filenames(path: str | Path) -> list[str]:
    """The clip names of a filename list: a text file (one per line) or a CSV/TSV with a
    ``filename`` column (meta.csv, a split csv), in file order.

    Raises:
      StoreError: a CSV without a ``filename`` column (naming the columns found), a short row,
        or a blank line inside a plain list.
    """
    path = Path(path)
    header, rows, _ = _read_table(path)
    if "filename" not in header:
        raise StoreError(f"{path}: no 'filename' column; found {header} (a list of filenames is one "
                         "name per line, or a CSV/TSV with a 'filename' column)")
    col = header.index("filename")
    short = [i + 2 for i, row in enumerate(rows) if len(row) <= col or not row[col].strip()]
    if short:
        raise StoreError(f"{path}: line(s) {short[:_SHOWN]} have no filename")
    return [row[col].strip() for row in rows]


@dataclasses.dataclass(frozen=True)
class SourceLogits:
    """Logits as read from a file.

    Attributes:
      values: float (N, C) or (N, V, C), not yet reordered.
      filenames: the clips of the rows when the file names them (a CSV), else None.
      classes: the column order by name when the file gives it (a CSV header), else None.
      format: "pt", "npy", "npz" or "csv".
      key: the dict / npz entry the array came from, if any.
      dtype: the values' dtype in the file.
    """

    values: np.ndarray
    filenames: list[str] | None
    classes: list[str] | None
    format: str
    key: str | None
    dtype: str


def _pick_entry(entries: dict, key: str | None, path: Path, what: str):
    """The one array among ``entries`` (or the one named ``key``)."""
    if key is not None:
        if key not in entries:
            raise StoreError(f"{path}: no {what} named {key!r}; it holds {sorted(entries)}")
        return key, entries[key]
    if len(entries) != 1:
        described = {k: tuple(getattr(v, "shape", ())) for k, v in entries.items()}
        raise StoreError(f"{path}: {len(entries)} {what}s {described}; pick one with --key NAME")
    return next(iter(entries.items()))


def _load_torch(path: Path, key: str | None) -> tuple[np.ndarray, str | None, str]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path} needs PyTorch (pip install torch), or save the logits "
                          "with numpy.save and import the .npy") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, runtime and zip errors alike
        raise StoreError(f"{path}: torch.load(weights_only=True) failed ({type(e).__name__}: {e}); save "
                         "a plain tensor or a dict of tensors (torch.save(logits, path))") from None
    if isinstance(obj, dict):
        entries = obj
        tensors = {str(k): v for k, v in entries.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise StoreError(f"{path}: a dict without tensors (keys {sorted(map(str, obj))})")
        key, obj = _pick_entry(tensors, key, path, "tensor")
        ignored = sorted(str(k) for k in entries if str(k) != key)
        if ignored:
            log.info("%s: took tensor %r, ignoring entries %s", path, key, ignored)
    elif isinstance(obj, torch.Tensor):
        if key is not None:
            raise StoreError(f"{path} holds one tensor, not a dict: drop --key {key}")
    else:
        raise StoreError(f"{path}: holds a {type(obj).__name__}; expected a tensor or a dict of tensors")
    if not obj.is_floating_point():
        raise StoreError(f"{path}: logits must be floating point, got {obj.dtype}")
    # numpy has no bfloat16: widen it (the store is float32 anyway).
    dtype = str(obj.dtype).removeprefix("torch.")
    obj = obj.detach()
    return (obj.float() if obj.dtype == torch.bfloat16 else obj).numpy(), key, dtype


def _load_numpy(path: Path, key: str | None) -> tuple[np.ndarray, str | None]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: cannot read as a numpy array ({e}); save it with numpy.save "
                         "(no pickled objects)") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            key, array = _pick_entry({k: loaded[k] for k in loaded.files}, key, path, "array")
    else:
        if key is not None:
            raise StoreError(f"{path} holds one array, not an .npz archive: drop --key {key}")
        array = loaded
    if not np.issubdtype(array.dtype, np.floating):
        raise StoreError(f"{path}: logits must be floating point, got {array.dtype}")
    return array, key


def _load_csv(path: Path, classes: Sequence[str] | None) -> SourceLogits:
    header, rows, delimiter = _read_table(path)
    if "filename" not in header or len(header) < 2:
        raise StoreError(f"{path}: a logits table needs a 'filename' column and one column per class; "
                         f"found columns {header}")
    name_col = header.index("filename")
    if classes is None:
        # An unnamed column is the row index pandas writes by default (to_csv(index=True)).
        unnamed = [i for i, h in enumerate(header) if not h]
        cols = [i for i, h in enumerate(header) if h and i != name_col]
        unknown = [header[i] for i in cols if header[i] not in tau.CLASS_TO_INDEX]
        if unknown:
            raise StoreError(f"{path}: column(s) {unknown} are neither 'filename' nor a class of the "
                             f"dataset {list(tau.CLASSES)}; pass --classes to pick the class columns")
        if unnamed:
            log.info("%s: ignoring %d unnamed column(s) (an index)", path, len(unnamed))
    else:
        absent = [c for c in classes if c not in header]
        if absent:
            raise StoreError(f"{path}: no column(s) {absent} given by --classes; the header is {header}")
        cols = [header.index(c) for c in classes]
        ignored = [h for i, h in enumerate(header) if i not in cols and i != name_col]
        if ignored:
            log.info("%s: ignoring column(s) %s (not given by --classes)", path, ignored)
    width = max(cols + [name_col]) + 1
    short = [i + 2 for i, row in enumerate(rows) if len(row) < width]
    if short:
        raise StoreError(f"{path}: line(s) {short[:_SHOWN]} have fewer than {width} fields "
                         f"(delimiter {delimiter!r})")
    cells = [[row[i] for i in cols] for row in rows]
    try:
        values = np.asarray(cells, np.float64).reshape(len(rows), len(cols))
    except ValueError:
        for line, row in enumerate(cells, start=2):
            for col, cell in zip(cols, row):
                try:
                    float(cell)
                except ValueError:
                    raise StoreError(f"{path}: line {line} ({rows[line - 2][name_col]!r}) column "
                                     f"{header[col]!r}: {cell!r} is not a number") from None
        raise
    return SourceLogits(values, [row[name_col].strip() for row in rows], [header[i] for i in cols], "csv",
                        None, "text")


def load_logits(path: str | Path, *, classes: Sequence[str] | None = None,
                key: str | None = None) -> SourceLogits:
    """Reads a logits file (see the module docstring for the formats).

    Args:
      path: .pt / .pth / .npy / .npz array, or .csv / .tsv table.
      classes: a table's class columns by name (default: every column but filename).
      key: the dict / .npz entry holding the logits, when there are several.

    Raises:
      FileNotFoundError: no such file.
      ImportError: a .pt without PyTorch installed.
      StoreError: an unsupported suffix, an unreadable file, several candidate arrays without
        ``key``, non-floating logits, or a table cell that is not a number (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: logits file not found")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        if key is not None:
            raise StoreError(f"{path} is a table: --key applies to .pt / .npz files only")
        return _load_csv(path, classes)
    if suffix in (".pt", ".pth"):
        values, key, dtype = _load_torch(path, key)
        fmt = "pt"
    elif suffix in (".npy", ".npz"):
        values, key = _load_numpy(path, key)
        fmt, dtype = suffix[1:], str(values.dtype)
    else:
        raise StoreError(f"{path}: unknown logits format {suffix!r}; expected one of "
                         f"{ARRAY_SUFFIXES + TABLE_SUFFIXES}")
    if values.ndim not in (2, 3):
        raise StoreError(f"{path}: logits of shape {values.shape}; expected (N, C) or (N, V, C)")
    return SourceLogits(values, None, None if classes is None else list(classes), fmt, key, dtype)


# ----------------------------------------------------------------------------------------------
# The target clip set
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TargetClips:
    """The clips an imported store holds.

    Attributes:
      filenames: the clips, named as the dataset names them ("audio/x.wav"), in store order.
      description: what they are, for messages ("split 25 of /data/TAU").
      dataset: the ``clip_key`` of every clip of the dataset (meta.csv); None if unknown.
      lists: {label: number of clips} of every list known (meta.csv, the split files), which a
        row count that matches no list is compared with.
      files: {role: path} of the files read, recorded with their sha256 in the store header.
      data: what the store header records under ``meta["data"]``.
    """

    filenames: tuple[str, ...]
    description: str
    dataset: frozenset[str] | None
    lists: dict[str, int]
    files: dict[str, Path]
    data: dict


def _dataset_lists(meta_path: Path) -> tuple[list[str], dict[str, int]]:
    """The filenames of a meta.csv, and the length of it and of every split file beside it."""
    meta = read_filenames(meta_path)
    lists = {meta_path.name: len(meta)}
    for split in tau.SPLITS:
        try:
            path = tau.find_split_file(meta_path.parent, split)
        except (FileNotFoundError, ValueError):
            continue
        lists[path.name] = len(read_filenames(path))
    return meta, lists


def _unique_keys(names: Sequence[str], where: str) -> frozenset[str]:
    keys = collections.Counter(clip_key(n) for n in names)
    dupes = sorted(k for k, c in keys.items() if c > 1)
    if dupes:
        raise StoreError(f"{where}: {_some(dupes)} clip name(s) occur more than once (clips are "
                         "matched on their base name)")
    return frozenset(keys)


def target_from_config(config: Config) -> TargetClips:
    """The clips of the student's training split: ``data.root`` (generated first if
    ``data.generate``) and ``data.train_split``, from the metadata alone (no audio is read).
    Clips whose metadata training would skip are left out; those it would fail on under
    ``data.on_error="raise"`` fail there, not here."""
    root = sources.dataset_root(config.data.root, generate=config.data.generate,
                                synthetic_params=config.data.synthetic)
    split = str(config.data.train_split)
    clips, skipped = tau.load_split(root, split, verify="none", on_error="skip", report=False)
    if skipped:
        log.warning("split %s: %s", split, tau.describe_skipped(skipped, len(clips) + len(skipped)))
    if not clips:
        raise StoreError(f"split {split} under {root} has no clips")
    meta, lists = _dataset_lists(Path(root) / "meta.csv")
    files = {"meta": Path(root) / "meta.csv", "split": tau.find_split_file(root, split)}
    description = f"split {split} of {root}"
    filenames = tuple(c.filename for c in clips)
    _unique_keys(filenames, description)
    # Membership only: a clip meta.csv lists twice is one training skips, not an import error.
    return TargetClips(filenames, description, frozenset(clip_key(n) for n in meta), lists, files,
                       {"root": str(Path(root).absolute()), "split": split})


def target_from_split(path: str | Path, meta: str | Path | None = None) -> TargetClips:
    """The clips a split csv (or any filename list) lists, in its order.

    Args:
      path: the split file.
      meta: the dataset's meta.csv; default: one next to ``path`` or, for a split in
        ``split_setup/``, in the folder above. None found: the dataset is unknown.
    """
    path = Path(path)
    names = read_filenames(path)
    if not names:
        raise StoreError(f"{path}: lists no clips")
    _unique_keys(names, str(path))
    if meta is None:
        candidates = [path.parent / "meta.csv"]
        if path.parent.name == tau.SPLIT_SUBDIR:
            candidates.append(path.parent.parent / "meta.csv")
        meta = next((c for c in candidates if c.is_file()), None)
    lists, files = {path.name: len(names)}, {"split": path}
    dataset = None
    data = {"split_file": str(path.absolute())}
    if meta is not None:
        meta = Path(meta)
        meta_names, more = _dataset_lists(meta)
        lists, files = {**more, **lists}, {"meta": meta, **files}
        dataset = frozenset(clip_key(n) for n in meta_names)
        outside = [n for n in names if clip_key(n) not in dataset]
        if outside:
            raise StoreError(f"{path}: {_some(outside)} clip(s) are not in {meta}")
        data["root"] = str(meta.parent.absolute())
    return TargetClips(tuple(names), f"the clips of {path}", dataset, lists, files, data)


# ----------------------------------------------------------------------------------------------
# Checks and alignment
# ----------------------------------------------------------------------------------------------
def describe_row_count(n: int, lists: dict[str, int]) -> str:
    """What a row count N equals and what it is a multiple of, among known lists.

    e.g. "460700 matches none of meta.csv (230350), split100.csv (139620), ...; it is 2 x
    meta.csv (230350): logits of several splits or views stacked along the rows?"
    """
    shown = ", ".join(f"{label} ({count})" for label, count in lists.items())
    matches = [label for label, count in lists.items() if count == n]
    if matches:
        return (f"{n} matches {' and '.join(f'{m} ({n})' for m in matches)}: if the logits are in its "
                "order, pass it as --filenames (clips outside the target set are then dropped)")
    # A small factor only: a large one is a coincidence of sizes, no stacking.
    multiples = [f"{n // count} x {label} ({count})" for label, count in lists.items()
                 if count and n > count and n % count == 0 and n // count <= _MAX_STACKED]
    text = f"{n} matches none of {shown}"
    if multiples:
        text += (f"; it is {' or '.join(multiples)}: logits of several splits or views stacked along "
                 "the rows? Slice out one block before importing, or reshape views to (N, V, C) and pass "
                 "--reduce mean")
    return text


def class_order(source: Sequence[str], where: str, dataset: Sequence[str] = tau.CLASSES) -> np.ndarray:
    """Column indices taking logits in ``source`` class order to ``dataset`` order
    (``out = values[..., order]``).

    Raises:
      StoreError: names not in the dataset, dataset classes missing, or a name given twice.
    """
    source = list(source)
    dupes = sorted(c for c, k in collections.Counter(source).items() if k > 1)
    unknown = [c for c in source if c not in dataset]
    missing = [c for c in dataset if c not in source]
    problems = []
    if dupes:
        problems.append(f"given twice: {dupes}")
    if unknown:
        problems.append(f"not classes of the dataset: {unknown}")
    if missing:
        problems.append(f"missing: {missing}")
    if problems:
        raise StoreError(f"{where}: the logits' classes {source} are not the dataset's "
                         f"{list(dataset)} in some order ({'; '.join(problems)})")
    return np.array([source.index(c) for c in dataset], np.int64)


def reduce_views(values: np.ndarray, reduce: str | None, where: str) -> np.ndarray:
    """(N, C) logits: (N, 1, C) squeezed, (N, V, C) averaged under ``reduce="mean"``."""
    if reduce not in (None, "mean"):
        raise ValueError(f"reduce must be None or 'mean', got {reduce!r}")
    if values.ndim == 2:
        if reduce is not None:
            raise StoreError(f"{where}: --reduce {reduce} given, but the logits {values.shape} have no view "
                             "axis (N, V, C); are views stacked along the rows instead?")
        return values
    if values.shape[1] == 1:
        return values[:, 0]
    if reduce is None:
        raise StoreError(
            f"{where}: logits of shape {values.shape} hold {values.shape[1]} views per clip. An imported "
            "store keeps one view and no augmentation parameters, so no view could be replayed to the "
            "student: pass --reduce mean to average the logits over the views (or ensemble members), "
            "or import the logits of one view")
    return values.mean(axis=1)


def looks_like_probabilities(values: np.ndarray) -> bool:
    """Every row in [0, 1] and summing to 1: softmax outputs, not logits."""
    return bool(values.size and values.min() >= 0 and values.max() <= 1
                and np.allclose(values.sum(-1), 1, atol=1e-3))


def align(source: Sequence[str], target: TargetClips, where: str) -> tuple[np.ndarray, list[str]]:
    """The source row of every target clip, and the source names dropped.

    Raises:
      StoreError: a clip named by two rows, rows naming clips outside the dataset, or target
        clips without a row; each naming the first few clips and the count.
    """
    rows: dict[str, int] = {}
    dupes: dict[str, list[int]] = {}
    for i, name in enumerate(source):
        key = clip_key(name)
        if key in rows:
            dupes.setdefault(key, [rows[key]]).append(i)
        else:
            rows[key] = i
    if dupes:
        shown = "; ".join(f"{k!r} at rows {v}" for k, v in list(dupes.items())[:_SHOWN])
        raise StoreError(f"{where}: {len(dupes)} clip(s) have more than one row ({shown}"
                         f"{'; ...' if len(dupes) > _SHOWN else ''}); logits of several splits or "
                         "views concatenated?")
    wanted = {clip_key(n) for n in target.filenames}
    extra = [source[i] for k, i in rows.items() if k not in wanted]
    if target.dataset is not None:
        foreign = [n for n in extra if clip_key(n) not in target.dataset]
        if foreign:
            raise StoreError(f"{where}: {_some(foreign)} row(s) name clips that are not in the dataset "
                             f"({target.files.get('meta', 'its meta.csv')}; clips are matched on their base "
                             "name): logits of another dataset or version?")
    missing = [n for n in target.filenames if clip_key(n) not in rows]
    if missing:
        raise StoreError(f"{where}: no logits for {_some(missing)} clip(s) of {target.description} "
                         f"({len(target.filenames)} clips; the logits cover {len(source)})")
    return np.array([rows[clip_key(n)] for n in target.filenames], np.int64), extra


def check_finite(values: np.ndarray, names: Sequence[str], classes: Sequence[str], rows: np.ndarray,
                 where: str) -> None:
    """Raise naming the first kept source row (its index, clip and class) with a NaN or inf."""
    bad = ~np.isfinite(values[rows])
    if bad.any():
        i, c = np.argwhere(bad)[0]
        n_bad = int(bad.any(-1).sum())
        raise StoreError(f"{where}: non-finite logit {values[rows[i], c]} at row {rows[i]} "
                         f"({names[rows[i]]!r}), class {classes[c]!r}; {n_bad} clip(s) affected")


def check_teacher_name(name: str) -> None:
    if not _TEACHER_NAME.fullmatch(name or ""):
        raise ValueError(f"teacher name {name!r}: use letters, digits, '_', '.', '-' (e.g. "
                         "cpjku_ensemble, or passt-cpjku to be selected by the 'transformer' ensemble)")
    if name in ENSEMBLES.names():
        raise ValueError(f"teacher name {name!r} is an ensemble name ({ENSEMBLES.names()}); choose another")


# ----------------------------------------------------------------------------------------------
# The import
# ----------------------------------------------------------------------------------------------
def parse_classes(text: str | None) -> list[str] | None:
    """``--classes``: "a,b,c" -> ["a", "b", "c"]; "dataset" -> the dataset's order; None stays."""
    if text is None:
        return None
    if text.strip() == "dataset":
        return list(tau.CLASSES)
    return [c.strip() for c in text.split(",")]


def import_logits(
    out: str | Path,
    *,
    logits: str | Path,
    target: TargetClips,
    name: str,
    filenames: str | Path | None = None,
    classes: Sequence[str] | None = None,
    key: str | None = None,
    reduce: str | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    command: str | None = None,
) -> TeacherStore:
    """Writes a teacher store of one teacher from logits computed elsewhere (module docstring).

    Args:
      out: store directory (written atomically).
      logits: the logits file.
      target: the clips the store holds (``target_from_config`` / ``target_from_split``).
      name: the teacher's name in the store.
      filenames: the list the rows of an array are aligned with (not for a table).
      classes: the array's column order by name (required for an array; for a table, picks
        its class columns).
      key: the dict / .npz entry holding the logits.
      reduce: "mean" averages an (N, V, C) array over V (required for V > 1).
      probabilities: the values are probabilities; the store gets their log.
      overwrite: replace an existing store.
      command: the command line, recorded in the header.

    Returns:
      The written store, read back.

    Raises:
      FileExistsError: ``out`` exists and not ``overwrite``.
      ValueError: a teacher name that is not a plain name, or is an ensemble's.
      StoreError: see the module docstring; every message names the file and the culprit.
    """
    check_teacher_name(name)
    if Path(out).exists() and not overwrite:  # before reading a large file, not after
        raise FileExistsError(f"teacher store {out} already exists (pass --overwrite)")
    logits = Path(logits)
    where = str(logits)
    source = load_logits(logits, classes=classes, key=key)
    if source.filenames is not None:
        if filenames is not None:
            raise StoreError(f"{where} is a table naming its own clips: drop --filenames {filenames}")
        names = source.filenames
    else:
        if filenames is None:
            raise StoreError(f"{where}: an array needs --filenames, the list its rows are aligned with")
        names = read_filenames(filenames)
        where = f"{logits} (rows aligned with {filenames})"
    if source.classes is None:
        raise StoreError(f"{logits}: give the class order of its columns by name (--classes a,b,..., "
                         f"or 'dataset' for {','.join(tau.CLASSES)})")
    n = source.values.shape[0]
    if n != len(names):
        label = Path(filenames).name if filenames is not None else "its filename column"
        raise StoreError(f"{logits}: {n} logit rows, but {label} lists {len(names)} clips; row i "
                         f"is the clip on line i, so the counts must agree. "
                         f"{describe_row_count(n, target.lists)}")
    values = reduce_views(source.values, reduce, where)
    if values.shape[-1] != len(source.classes):
        raise StoreError(f"{where}: {values.shape[-1]} logit columns, {len(source.classes)} class names "
                         f"{source.classes}")
    values = values[:, class_order(source.classes, where)]
    rows, dropped = align(names, target, where)
    if dropped:
        # Unchecked against a dataset, a dropped row may be a clip whose name failed to match.
        report = log.info if target.dataset is not None else log.warning
        report("%s: dropped %s row(s) of clips outside %s", logits, _some(dropped), target.description)
    check_finite(values, names, tau.CLASSES, rows, where)
    kept = values[rows]
    if probabilities:
        if not looks_like_probabilities(kept):
            raise StoreError(f"{where}: --probabilities given, but the rows are not in [0, 1] summing to 1")
        kept = np.log(np.maximum(kept, np.finfo(np.float32).tiny))
    elif looks_like_probabilities(kept):
        raise StoreError(f"{where}: every row is in [0, 1] and sums to 1: these are probabilities "
                         "(softmax outputs), not logits; pass --probabilities to import their log")
    inputs = {"logits": logits, **({"filenames": Path(filenames)} if filenames is not None else {}),
              **target.files}
    meta = {
        # The teacher's frontend, augmentation and seed are unknown: nothing is replayed.
        "frontend": {name: None},
        "augment": augment.config_to_dict(NO_AUGMENT),
        "seed": None,
        "teachers": {name: {"imported": str(logits.absolute())}},
        "data": dict(target.data),
        "import": {
            "source": str(logits.absolute()),
            "sha256": sha256(logits),
            "format": source.format,
            "key": source.key,
            "shape": list(source.values.shape),
            "dtype": source.dtype,
            "classes": list(source.classes),
            "reduce": reduce,
            "probabilities": probabilities,
            "rows": n,
            "dropped": len(dropped),
            "files": {role: {"path": str(Path(p).absolute()), "sha256": sha256(p)} for role, p in inputs.items()},
            "command": command,
        },
    }
    write_store(out, filenames=target.filenames, teacher_names=[name],
                logits=kept[:, None, None, :].astype(np.float32), aug_params={}, class_names=tau.CLASSES,
                meta=meta, overwrite=overwrite)
    return read_store(out)
