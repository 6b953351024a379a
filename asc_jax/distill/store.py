"""The teacher-logit store: writing, reading and checking it, and choosing teachers from it.

Store layout (a directory, written atomically by ``write_store``):

  header.json      format, version, n_clips, n_views, teacher_names, class_names, meta (frontend,
                   augment, seed, ...), created_with, and every array's shape and dtype
  filenames.json   the clip keys, row order of every array
  logits.npy       float32 (N, V, K, C)
  aug.<name>.<field>.npy   one array per augmentation parameter, leading dims (N, V)

Teachers are selected from a store by name or by ensemble (``resolve_teachers``). Which
student may use a store (its augmentation) is checked in ``asc_jax.distill.extras``.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

import asc_jax
from asc_jax.distill.ensembles import ENSEMBLES

STORE_FORMAT = "asc_jax.teacher_store"
STORE_VERSION = 1
_REQUIRED_META = ("frontend", "augment", "seed")


class StoreError(ValueError):
    """A teacher-logit store is corrupt or does not match what it is used with."""


# ----------------------------------------------------------------------------------------------
# Choosing teachers
# ----------------------------------------------------------------------------------------------
def resolve_teachers(spec: str | Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    """Teacher names selected by ``spec``, in store order.

    Args:
      spec: an ensemble name ("cnn", "transformer", "all", ...), a comma-separated string of
        teacher names, or a sequence of teacher names.
      available: the teacher names a store holds.

    Raises:
      StoreError: an unknown teacher name, or a selection that is empty.
    """
    if isinstance(spec, str) and spec in ENSEMBLES:
        names = ENSEMBLES.get(spec)(available)
    else:
        wanted = spec.split(",") if isinstance(spec, str) else list(spec)
        unknown = [n for n in wanted if n not in available]
        if unknown:
            raise StoreError(
                f"unknown teacher(s) {unknown}; the store has {list(available)}, "
                f"ensembles are {ENSEMBLES.names()}"
            )
        names = tuple(n for n in available if n in wanted)
    if not names:
        raise StoreError(f"teacher selection {spec!r} matches none of {list(available)}")
    return names


def teacher_columns(spec: str | Sequence[str], available: Sequence[str]) -> np.ndarray:
    """Indices into the K axis of a store's logits for the teachers selected by ``spec``."""
    index = {n: i for i, n in enumerate(available)}
    return np.array([index[n] for n in resolve_teachers(spec, available)], np.int64)


# ----------------------------------------------------------------------------------------------
# Writing and reading
# ----------------------------------------------------------------------------------------------
def _flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"roll": {"shift": a}} -> {"roll.shift": a}; only str-keyed dicts of arrays are storable."""
    flat = {}
    for k, v in tree.items():
        if not isinstance(k, str) or not k or "." in k or "/" in k or k != k.strip():
            raise ValueError(f"augmentation parameter key {prefix + str(k)!r} is not a plain name")
        if isinstance(v, Mapping):
            flat.update(_flatten_params(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat


def _unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _describe_some(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return f"{len(names)} (e.g. {shown}{', ...' if len(names) > n else ''})"


def require_finite(logits: np.ndarray, filenames: Sequence[str], teacher_names: Sequence[str],
                  where: str, chunk: int = 4096) -> None:
    """Raise naming the first clip/teacher with a NaN or inf logit; scans in chunks so a
    memory-mapped store is never loaded whole."""
    for lo in range(0, logits.shape[0], chunk):
        block = np.asarray(logits[lo:lo + chunk])
        bad = ~np.isfinite(block)
        if bad.any():
            n, v, k, _ = np.argwhere(bad)[0]
            n_bad_clips = int(bad.any(axis=(1, 2, 3)).sum())
            raise StoreError(
                f"{where}: non-finite teacher logits, first at clip {filenames[lo + n]!r} view {v} "
                f"teacher {teacher_names[k]!r} ({n_bad_clips} clip(s) affected in rows "
                f"{lo}..{lo + len(block) - 1})"
            )


def _save_array(directory: Path, name: str, array: np.ndarray) -> None:
    with open(directory / name, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_store(
    path: str | os.PathLike,
    *,
    filenames: Sequence[str],
    teacher_names: Sequence[str],
    logits: np.ndarray,
    aug_params: Mapping[str, Any],
    class_names: Sequence[str],
    meta: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a teacher-logit store atomically.

    Everything is written into a hidden temporary directory next to ``path`` and renamed into
    place at the end, so an interrupted precompute leaves either no store or the previous one.

    Args:
      path: the store directory to create.
      filenames: N unique clip keys (the dataset's relative filenames, e.g. "audio/x.wav").
      teacher_names: K unique teacher names (see ``resolve_teachers``).
      logits: (N, V, K, C) finite floating logits, stored as float32.
      aug_params: nested str-keyed dict of arrays with leading dims (N, V), e.g.
        {"roll": {"shift": (N, V)}, "freq_mask": {"start": ..., "width": ..., "n_mels": ...}}.
      class_names: C class names, in logit order.
      meta: JSON-able dict; must hold "frontend" (the teachers' feature settings), "augment"
        (``augment.config_to_dict`` of the config the parameters were sampled with) and "seed".
      overwrite: replace an existing store at ``path``.

    Returns:
      The store path.
    """
    path = Path(path)
    filenames = [str(f) for f in filenames]
    teacher_names = [str(t) for t in teacher_names]
    class_names = [str(c) for c in class_names]
    if not np.issubdtype(np.asarray(logits).dtype, np.floating):
        raise StoreError(f"logits must be floating point, got {np.asarray(logits).dtype}")
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 4:
        raise StoreError(f"logits must be (N, V, K, C), got shape {logits.shape}")
    n, v, k, c = logits.shape
    for what, names, expected in (("filenames", filenames, n), ("teacher_names", teacher_names, k),
                                  ("class_names", class_names, c)):
        if len(names) != expected:
            raise StoreError(f"{len(names)} {what} for logits of shape {logits.shape}")
        dupes = sorted(x for x, count in collections.Counter(names).items() if count > 1)
        if dupes:
            raise StoreError(f"duplicate {what}: {_describe_some(dupes)}")
    missing_meta = [key for key in _REQUIRED_META if key not in meta]
    if missing_meta:
        raise StoreError(f"store meta lacks {missing_meta} (required: {list(_REQUIRED_META)})")
    flat = {name: np.asarray(a) for name, a in _flatten_params(aug_params).items()}
    for name, a in flat.items():
        if a.shape[:2] != (n, v):
            raise StoreError(f"aug param {name!r} has shape {a.shape}, expected leading dims {(n, v)}")
        if a.dtype == object:
            raise StoreError(f"aug param {name!r} has dtype object; store plain numeric arrays")
    require_finite(logits, filenames, teacher_names, "write_store")
    if path.exists() and not overwrite:
        raise FileExistsError(f"teacher store {path} already exists (pass overwrite=True)")

    arrays = {"logits": ("logits.npy", logits)}
    arrays.update({f"aug.{name}": (f"aug.{name}.npy", a) for name, a in flat.items()})
    header = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "n_clips": n,
        "n_views": v,
        "teacher_names": teacher_names,
        "class_names": class_names,
        "meta": dict(meta),
        "created_with": {
            "asc_jax": asc_jax.__version__, "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "arrays": {key: {"file": fname, "shape": list(a.shape), "dtype": a.dtype.str}
                   for key, (fname, a) in arrays.items()},
    }
    # Serialise the header first: a non-JSON-able meta must fail before any file is written.
    header_text = json.dumps(header, indent=1)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for fname, a in arrays.values():
            _save_array(tmp, fname, a)
        _write_json(tmp / "filenames.json", filenames)
        with open(tmp / "header.json", "w") as f:
            f.write(header_text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if path.exists():
            # A directory cannot be os.replace'd over a non-empty one: move the old store aside
            # first; it is only deleted once the new one is in place.
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherStore:
    """A read-only, memory-mapped teacher-logit store (see ``read_store``).

    Attributes:
      path: store directory.
      header: the parsed header.json.
      filenames: N clip keys, row order.
      logits: float32 (N, V, K, C) memory map.
      aug: nested dict of (N, V, ...) memory maps.
    """

    path: Path
    header: dict
    filenames: tuple[str, ...]
    logits: np.ndarray
    aug: dict
    _row: dict = dataclasses.field(repr=False)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        return tuple(self.header["teacher_names"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.header["class_names"])

    @property
    def n_views(self) -> int:
        return int(self.header["n_views"])

    @property
    def meta(self) -> dict:
        return self.header["meta"]

    def __len__(self) -> int:
        return len(self.filenames)

    def rows(self, keys: Sequence[str] | Sequence[int] | np.ndarray) -> np.ndarray:
        """Row indices of clip filenames (or pass-through of integer row indices).

        Raises:
          StoreError: naming a few of the missing clips and how many there are.
        """
        keys = list(keys) if not isinstance(keys, np.ndarray) else keys
        if len(keys) and not isinstance(keys[0], str):
            rows = np.asarray(keys, np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
                raise StoreError(f"row index out of range [0, {len(self)}) in {self.path}")
            return rows
        missing = [k for k in keys if k not in self._row]
        if missing:
            raise StoreError(f"teacher store {self.path} lacks {_describe_some(missing)} clip(s)")
        return np.array([self._row[k] for k in keys], np.int64)

    def check_dataset(self, filenames: Sequence[str], class_names: Sequence[str]) -> None:
        """Raise unless every dataset clip is in the store and the classes match in order."""
        if tuple(class_names) != self.class_names:
            if len(class_names) != len(self.class_names):
                raise StoreError(
                    f"teacher store {self.path} has {len(self.class_names)} classes, the dataset "
                    f"{len(class_names)}: {self.class_names} vs {tuple(class_names)}"
                )
            raise StoreError(
                f"teacher store {self.path} class order {self.class_names} differs from the "
                f"dataset's {tuple(class_names)}"
            )
        self.rows(filenames)

    def lookup(
        self,
        keys: Sequence[str] | Sequence[int] | np.ndarray,
        views: int | Sequence[int] | np.ndarray,
        teachers: str | Sequence[str] | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Teacher logits and augmentation parameters of some clips.

        Args:
          keys: B clip filenames, or B row indices.
          views: one view index for all, or B view indices.
          teachers: optional ensemble name / teacher names (``resolve_teachers``); default all.

        Returns:
          (logits float32 (B, K', C), aug params {name: {field: (B, ...)}}).
        """
        rows = self.rows(keys)
        views = np.broadcast_to(np.asarray(views, np.int64), rows.shape)
        if views.size and (views.min() < 0 or views.max() >= self.n_views):
            raise StoreError(f"view index out of range [0, {self.n_views}) in {self.path}")
        logits = self.logits[rows, views]
        if teachers is not None:
            logits = logits[:, teacher_columns(teachers, self.teacher_names)]
        aug = jax.tree.map(lambda a: np.asarray(a[rows, views]), self.aug)
        return np.asarray(logits), aug


def _load_header(path: Path) -> dict:
    header_path = path / "header.json"
    if not header_path.is_file():
        raise StoreError(f"{path} is not a teacher store: {header_path} is missing")
    try:
        header = json.loads(header_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"corrupt teacher store header {header_path}: {e}") from None
    if not isinstance(header, dict):
        raise StoreError(f"corrupt teacher store header {header_path}: not a JSON object")
    required = ("format", "version", "n_clips", "n_views", "teacher_names", "class_names", "meta",
                "arrays")
    missing = [k for k in required if k not in header]
    if missing:
        raise StoreError(f"corrupt teacher store header {header_path}: missing {missing}")
    if header["format"] != STORE_FORMAT or header["version"] != STORE_VERSION:
        raise StoreError(
            f"{header_path}: format {header['format']!r} version {header['version']!r}, this code "
            f"reads {STORE_FORMAT!r} version {STORE_VERSION}"
        )
    if "logits" not in header["arrays"]:
        raise StoreError(f"corrupt teacher store header {header_path}: no 'logits' array")
    return header


def read_store(path: str | os.PathLike, *, check_finite: bool = True) -> TeacherStore:
    """Open a store written by ``write_store``; arrays are memory-mapped, not loaded.

    Args:
      path: store directory.
      check_finite: scan the logits (in chunks) for NaN/inf and raise naming the culprit.

    Raises:
      StoreError: missing/corrupt header or arrays, shapes disagreeing with the header, or
        non-finite logits.
    """
    path = Path(path)
    header = _load_header(path)
    try:
        filenames = tuple(json.loads((path / "filenames.json").read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"teacher store {path}: cannot read filenames.json: {e}") from None
    n, v = header["n_clips"], header["n_views"]
    k, c = len(header["teacher_names"]), len(header["class_names"])
    if len(filenames) != n:
        raise StoreError(f"teacher store {path}: {len(filenames)} filenames, header says {n} clips")
    arrays = {}
    for key, spec in header["arrays"].items():
        file = path / spec["file"]
        try:
            a = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"teacher store {path}: cannot read {file.name}: {e}") from None
        if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"] or a.shape[:2] != (n, v):
            raise StoreError(
                f"teacher store {path}: {file.name} is {a.dtype.str} {list(a.shape)}, header says "
                f"{spec['dtype']} {spec['shape']} with leading dims {[n, v]}"
            )
        arrays[key] = a
    logits = arrays.pop("logits")
    if logits.shape != (n, v, k, c) or logits.dtype != np.float32:
        raise StoreError(f"teacher store {path}: logits are {logits.dtype} {logits.shape}, "
                         f"expected float32 {(n, v, k, c)}")
    if check_finite:
        require_finite(logits, filenames, header["teacher_names"], f"teacher store {path}")
    aug = _unflatten_params({key[len("aug."):]: a for key, a in arrays.items()})
    return TeacherStore(path, header, filenames, logits, aug, {f: i for i, f in enumerate(filenames)})
