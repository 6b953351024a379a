"""Knowledge distillation: the KD loss, named teacher ensembles and the teacher-logit store.

Teachers never run during student training. ``precompute`` runs them once over the training
clips, each clip under ``n_views`` sampled augmentations, and ``write_store`` saves the logits
together with the augmentation parameters they were computed under. During training
``StoreExtras`` (a grain per-record hook) picks one view per clip and hands the student both the
teacher logits and the parameters, so the student sees exactly the augmented input the teachers
saw: rebuild the store's augmentation config with
``augment.config_from_dict(store.meta["augment"])`` and replay the looked-up parameters with
``augment.apply_augment`` (roll on the waveform, then the frequency mask on the student's log-mel;
bands sampled for another mel resolution are converted exactly, see
``augment.freq_mask_edges``). Freq-MixStyle couples the examples of a batch, so it is not part of
a store: the student applies it fresh on top of the replayed input.

A store is only usable by a student whose ``config.augment`` equals the store's augmentation
(``store_augment``: all but Freq-MixStyle). ``StoreExtras`` refuses any other
(``check_augment``): the student would silently drop stored parameters its config disables, or
sample fresh ones the teachers never saw for augmentations the store lacks. Precompute a store
from the student's own config file (``python -m asc_jax.teachers precompute --config ...``).

Store layout (a directory, written atomically):

  header.json      format, version, n_clips, n_views, teacher_names, class_names, meta (frontend,
                   augment, seed, ...), created_with, and every array's shape and dtype
  filenames.json   the clip keys, row order of every array
  logits.npy       float32 (N, V, K, C)
  aug.<name>.<field>.npy   one array per augmentation parameter, leading dims (N, V)
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
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import asc_jax
from asc_jax.audio import augment
from asc_jax.registry import Registry

STORE_FORMAT = "asc_jax.teacher_store"
STORE_VERSION = 1
_REQUIRED_META = ("frontend", "augment", "seed")


# ----------------------------------------------------------------------------------------------
# KD loss
# ----------------------------------------------------------------------------------------------
def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    lam: float,
    tau: float,
    scale_by_tau_sq: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Label loss plus mean KL to each teacher:

        loss = lam * CE(student, labels)
             + (1 - lam) * s * (1/K) sum_k mean_b KL(softmax(t_bk / tau) || softmax(s_b / tau)),
        s = tau**2 if scale_by_tau_sq else 1.

    KL direction is Hinton's / ``torch.nn.functional.kl_div(log_softmax(s / tau),
    log_softmax(t / tau), log_target=True)``: the teacher distribution is the target, and
    ``KL = sum_c p_t (log p_t - log p_s)`` is summed over classes and averaged over the batch
    ("batchmean"). Note that the CPJKU DCASE code reduces ``KLDivLoss(reduction="none")`` with
    ``.mean()`` over batch *and* classes, i.e. its KD term is this one divided by C; rescale
    ``lam`` accordingly when copying their hyper-parameters. The tau**2 factor keeps the
    gradient magnitude of the soft term independent of tau (Hinton et al.); the paper quotes tau
    as written, so both choices are configurable.

    Both terms use optax (``softmax_cross_entropy_with_integer_labels`` and
    ``kl_divergence_with_log_targets``, which takes the teacher in log space so that a teacher
    probability underflowing at small tau cannot produce ``0 * log 0``).

    Args:
      student_logits: (B, C).
      teacher_logits: (B, K, C), treated as constants.
      labels: (B,) integer class indices.
      lam: weight of the label loss in [0, 1].
      tau: softmax temperature (> 0).
      scale_by_tau_sq: multiply the KL term by tau**2.

    Returns:
      (loss, metrics) with metrics: "loss", "ce", "kl" (mean over teachers, unscaled),
      "kl_per_teacher" (K,), "agree_ensemble" (student top-1 == top-1 of the teachers' mean
      logits, the CPJKU ensemble target), "agree_per_teacher" (K,).
    """
    if teacher_logits.ndim != 3 or teacher_logits.shape[::2] != student_logits.shape:
        raise ValueError(
            f"teacher logits must be (B, K, C) matching student (B, C) = {student_logits.shape}, "
            f"got {teacher_logits.shape}"
        )
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(student_logits.dtype))
    ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels).mean()
    log_p_s = jax.nn.log_softmax(student_logits / tau, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
    kl_bk = optax.losses.kl_divergence_with_log_targets(log_p_s[:, None, :], log_p_t)  # (B, K)
    kl_per_teacher = kl_bk.mean(axis=0)
    kl = kl_per_teacher.mean()
    scale = tau**2 if scale_by_tau_sq else 1.0
    loss = lam * ce + (1.0 - lam) * scale * kl

    pred = jnp.argmax(student_logits, axis=-1)
    metrics = {
        "loss": loss,
        "ce": ce,
        "kl": kl,
        "kl_per_teacher": kl_per_teacher,
        "agree_ensemble": jnp.mean(pred == jnp.argmax(teacher_logits.mean(axis=1), axis=-1)),
        "agree_per_teacher": jnp.mean(pred[:, None] == jnp.argmax(teacher_logits, axis=-1), axis=0),
    }
    return loss, metrics


# ----------------------------------------------------------------------------------------------
# Teacher ensembles
# ----------------------------------------------------------------------------------------------
# Teacher names are "<arch>" or "<arch>-<tag>" (e.g. "passt-s1", "cp_resnet-dir-2"); the arch is
# the model registry name, which is what the ensembles below select on.
CNN_ARCHS = ("cp_resnet", "cp_mobile", "rep_mobile", "bc_resnet", "tf_sepnet")
TRANSFORMER_ARCHS = ("passt",)

ENSEMBLES: Registry[Callable[[Sequence[str]], tuple[str, ...]]] = Registry("teacher ensemble")


def teacher_arch(name: str) -> str:
    return name.split("-", 1)[0]


@ENSEMBLES.register("cnn")
def _cnn_teachers(available: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in available if teacher_arch(n) in CNN_ARCHS)


@ENSEMBLES.register("transformer")
def _transformer_teachers(available: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in available if teacher_arch(n) in TRANSFORMER_ARCHS)


@ENSEMBLES.register("all")
def _all_teachers(available: Sequence[str]) -> tuple[str, ...]:
    return tuple(available)


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
# Teacher-logit store
# ----------------------------------------------------------------------------------------------
class StoreError(ValueError):
    """A teacher-logit store is corrupt or does not match what it is used with."""


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


def _check_finite(logits: np.ndarray, filenames: Sequence[str], teacher_names: Sequence[str],
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
    _check_finite(logits, filenames, teacher_names, "write_store")
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

    def check_augment(self, student: augment.AugmentConfig) -> None:
        """Raise unless the student's augmentation is the one the store was computed under.

        Raises:
          StoreError: naming every differing augmentation with the store's and the student's
            setting (see ``augment_mismatch``), or a store whose parameter arrays disagree with
            its own header.
        """
        recorded = self.meta.get("augment")
        try:
            if not isinstance(recorded, dict):
                raise TypeError("not a dict")
            differences = augment_mismatch(recorded, student)
        except (TypeError, ValueError) as e:
            raise StoreError(f"teacher store {self.path}: unreadable meta['augment'] {recorded!r}: {e}") from None
        if differences:
            raise StoreError(
                f"teacher store {self.path} was computed under other augmentations than the "
                f"student's config.augment: {'; '.join(differences)}. The student must replay what "
                "the teachers saw: use the store's settings, or rebuild the store from the "
                "student's config (python -m asc_jax.teachers precompute --config ...). "
                "Freq-MixStyle is exempt: the student applies it fresh."
            )
        stored = store_augment(augment.config_from_dict(recorded))
        enabled = {f.name for f in dataclasses.fields(stored) if getattr(stored, f.name) is not None}
        if enabled != set(self.aug):
            raise StoreError(f"teacher store {self.path}: header augmentations {sorted(enabled)} but "
                             f"stored parameters for {sorted(self.aug)}")

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
        _check_finite(logits, filenames, header["teacher_names"], f"teacher store {path}")
    aug = _unflatten_params({key[len("aug."):]: a for key, a in arrays.items()})
    return TeacherStore(path, header, filenames, logits, aug, {f: i for i, f in enumerate(filenames)})


# ----------------------------------------------------------------------------------------------
# Augmentation a store holds
# ----------------------------------------------------------------------------------------------
def _stored_per_clip(name: str) -> bool:
    """Whether augmentation ``name`` is stored per clip (MixStyle couples a batch: never)."""
    return augment.AUGMENTATIONS.get(name).per_example


def store_augment(cfg: augment.AugmentConfig) -> augment.AugmentConfig:
    """The part of a training config's augmentation that a store samples and replays: ``cfg``
    with the augmentations that couple a batch (Freq-MixStyle) disabled."""
    return dataclasses.replace(cfg, **{f.name: None for f in dataclasses.fields(cfg)
                                       if not _stored_per_clip(f.name)})


def _describe_setting(sub: Any) -> str:
    return "None (disabled)" if sub is None else repr(sub)


def augment_mismatch(stored: Mapping[str, Any], student: augment.AugmentConfig) -> list[str]:
    """How a store's augmentation differs from a student's, one line per difference.

    Every augmentation a store replays is compared field by field: the roll (its stored shift
    replaces the host's fresh roll, so its bound and rate must be the student's) and the
    frequency mask (bound, resolution and mask value). Augmentations that couple a batch
    (Freq-MixStyle) are never stored and are left out of the comparison.

    Args:
      stored: a store's ``meta["augment"]`` (``augment.config_to_dict``).
      student: the student's ``config.augment``.

    Returns:
      e.g. ``["freq_mask: store FreqMaskConfig(mask_param=48, ...), student None (disabled)",
      "roll.max_shift_s: store 0.125, student 0.25"]``; empty when they agree.
    """
    store_cfg = augment.config_from_dict(dict(stored))
    out = []
    for field in dataclasses.fields(student):
        if not _stored_per_clip(field.name):
            continue
        have, want = getattr(store_cfg, field.name), getattr(student, field.name)
        if have == want:
            continue
        if have is None or want is None:
            out.append(f"{field.name}: store {_describe_setting(have)}, student {_describe_setting(want)}")
            continue
        for sub in dataclasses.fields(want):
            a, b = getattr(have, sub.name), getattr(want, sub.name)
            if a != b:
                out.append(f"{field.name}.{sub.name}: store {a!r}, student {b!r}")
    return out


# ----------------------------------------------------------------------------------------------
# Precompute
# ----------------------------------------------------------------------------------------------
TeacherFn = Callable[[jax.Array, dict], jax.Array]


def view_keys(seed: int, clip_indices: np.ndarray, view: int) -> jax.Array:
    """PRNG keys ``fold_in(fold_in(key(seed), clip), view)``: one per clip, independent of
    batching, so a store's parameters are reproducible from (seed, clip index, view) alone."""
    base = jax.random.key(seed)
    clips = jnp.asarray(clip_indices, jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), view))(clips)


def precompute(
    path: str | os.PathLike,
    *,
    teachers: Mapping[str, TeacherFn],
    batches: Iterable[tuple[Sequence[str], Any]],
    n_views: int,
    sample_aug: Callable[[jax.Array], dict],
    seed: int,
    class_names: Sequence[str],
    meta: Mapping[str, Any],
    overwrite: bool = False,
) -> TeacherStore:
    """Run every teacher on every clip under ``n_views`` sampled augmentations and write a store.

    Args:
      path: store directory to create.
      teachers: {name: apply_fn(wave (B, n_samples), aug_params {name: (B, ...)}) -> logits
        (B, C)}; each function applies the augmentation itself (e.g. roll, its own frontend,
        frequency mask via ``augment.apply_augment``) so every teacher can use its own frontend.
      batches: iterable of (filenames, waves (B, n_samples)); clips are numbered in iteration
        order, which is the store's row order.
      n_views: augmented views per clip (V).
      sample_aug: ``keys (B,) -> params (B, ...)``, e.g. ``augment.example_sampler(cfg)``.
      seed: base seed; view ``v`` of clip ``i`` uses ``view_keys(seed, [i], v)``.
      class_names: C class names in logit order.
      meta: as in ``write_store``; "seed" is filled in here.

    Returns:
      The written store, read back.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    names = list(teachers)
    all_files: list[str] = []
    all_logits: list[np.ndarray] = []
    all_params: list[dict] = []
    for files, wave in batches:
        files = list(files)
        wave = jnp.asarray(wave)
        if wave.ndim != 2 or wave.shape[0] != len(files):
            raise ValueError(f"batch of {len(files)} filenames with waveforms of shape {wave.shape}")
        clip_idx = np.arange(len(all_files), len(all_files) + len(files))
        views_logits, views_params = [], []
        for view in range(n_views):
            params = sample_aug(view_keys(seed, clip_idx, view))
            per_teacher = []
            for name in names:
                out = np.asarray(teachers[name](wave, params), np.float32)
                if out.shape != (len(files), len(class_names)):
                    raise StoreError(f"teacher {name!r} returned logits of shape {out.shape}, "
                                     f"expected {(len(files), len(class_names))}")
                _check_finite(out[:, None, None], files, [name], f"precompute (view {view})")
                per_teacher.append(out)
            views_logits.append(np.stack(per_teacher, axis=1))  # (B, K, C)
            views_params.append(jax.tree.map(np.asarray, params))
        all_files.extend(files)
        all_logits.append(np.stack(views_logits, axis=1))  # (B, V, K, C)
        all_params.append(jax.tree.map(lambda *a: np.stack(a, axis=1), *views_params))
    if not all_files:
        raise ValueError("precompute got no clips")
    write_store(
        path,
        filenames=all_files,
        teacher_names=names,
        logits=np.concatenate(all_logits),
        aug_params=jax.tree.map(lambda *a: np.concatenate(a), *all_params),
        class_names=class_names,
        meta={**meta, "seed": seed},
        overwrite=overwrite,
    )
    return read_store(path)


# ----------------------------------------------------------------------------------------------
# Grain hook
# ----------------------------------------------------------------------------------------------
class StoreExtras:
    """Per-record hook for the grain pipeline: ``extra(index, rng) -> dict``.

    Record ``index`` of the dataset (whose clip keys are ``filenames``) gets one uniformly drawn
    view of its clip: ``{"teacher_logits": float32 (K, C), "aug": {name: {field: scalar}}}``.
    The pipeline must feed the student the input these parameters describe (e.g. roll by
    ``aug["roll"]["shift"]`` instead of a fresh host roll).

    Building the hook checks the store against the student: every clip and the class order
    (``TeacherStore.check_dataset``), and the augmentation (``TeacherStore.check_augment``:
    ``augment`` is the student's ``config.augment``, which must equal the store's apart from
    Freq-MixStyle).

    The store is opened lazily in each process (memory maps do not pickle into grain workers).
    """

    def __init__(self, store: str | os.PathLike | TeacherStore, filenames: Sequence[str],
                 class_names: Sequence[str], teachers: str | Sequence[str] | None = None, *,
                 augment: augment.AugmentConfig):
        opened = store if isinstance(store, TeacherStore) else read_store(store)
        opened.check_dataset(filenames, class_names)
        opened.check_augment(augment)
        self.path = opened.path
        self._rows = opened.rows(list(filenames))
        self._n_views = opened.n_views
        self._cols = (None if teachers is None
                      else teacher_columns(teachers, opened.teacher_names))
        self.teacher_names = (opened.teacher_names if self._cols is None
                              else tuple(opened.teacher_names[i] for i in self._cols))
        self._store: TeacherStore | None = opened

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __call__(self, index: int, rng: np.random.Generator) -> dict:
        if self._store is None:
            # Finiteness was checked when the hook was built in the parent process.
            self._store = read_store(self.path, check_finite=False)
        row = self._rows[index]
        view = int(rng.integers(self._n_views))
        logits = np.asarray(self._store.logits[row, view])
        if self._cols is not None:
            logits = logits[self._cols]
        aug = jax.tree.map(lambda a: np.asarray(a[row, view]), self._store.aug)
        return {"teacher_logits": logits, "aug": aug}
