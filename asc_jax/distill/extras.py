"""What a student takes from a teacher-logit store: the augmentation it must share with the
store, and the grain hook that hands it one stored view per clip.

A store holds the per-clip part of the student's augmentation (``store_augment``: all but
Freq-MixStyle, which couples the examples of a batch; the student applies it fresh on top of the
replayed input). A store is only usable by a student whose ``config.augment`` equals it
(``check_augment``): the student would silently drop stored parameters its config disables, or
sample fresh ones the teachers never saw for augmentations the store lacks. ``StoreExtras``
refuses any other, so precompute a store from the student's own config file
(``python -m asc_jax.distill precompute --config ...``). For device impulse responses the IRs
themselves must be the store's (names and content, ``meta["dir_irs"]``), not the folder's path.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from asc_jax.audio import augment
from asc_jax.distill.store import StoreError, TeacherStore, read_store, teacher_columns

log = logging.getLogger(__name__)


def store_augment(cfg: augment.AugmentConfig) -> augment.AugmentConfig:
    """The part of a training config's augmentation that a store samples and replays: ``cfg``
    with the augmentations that couple a batch (Freq-MixStyle) disabled."""
    return dataclasses.replace(cfg, **{f.name: None for f in dataclasses.fields(cfg)
                                       if not augment.per_clip(f.name)})


# Settings compared by what they point to instead (check_augment): the IR folder's path may differ
# between the store's machine and the student's; the IRs in it may not.
_COMPARED_BY_CONTENT = {("dir", "folder")}


def _describe_setting(sub: Any) -> str:
    return "None (disabled)" if sub is None else repr(sub)


def augment_mismatch(stored: Mapping[str, Any], student: augment.AugmentConfig) -> list[str]:
    """How a store's augmentation differs from a student's, one line per difference.

    Every augmentation a store replays is compared field by field: the roll (its stored shift
    replaces the host's fresh roll, so its bound must be the student's; the sample rate it is
    counted in is checked by ``check_augment``), the frequency mask (bound, resolution and
    mask value) and DIR (probability, devices; its folder is compared by content in
    ``check_augment``, not by path). Augmentations that couple a batch
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
        if not augment.per_clip(field.name):
            continue
        have, want = getattr(store_cfg, field.name), getattr(student, field.name)
        if have == want:
            continue
        if have is None or want is None:
            out.append(f"{field.name}: store {_describe_setting(have)}, student {_describe_setting(want)}")
            continue
        for sub in dataclasses.fields(want):
            a, b = getattr(have, sub.name), getattr(want, sub.name)
            if a != b and (field.name, sub.name) not in _COMPARED_BY_CONTENT:
                out.append(f"{field.name}.{sub.name}: store {a!r}, student {b!r}")
    return out


def _recorded_augment(store: TeacherStore) -> tuple[dict, Any]:
    """The store's ``meta["augment"]`` and the sample rate of its clips (None if unrecorded).

    The rate is ``meta["data"]["sample_rate"]``; stores written while ``RollConfig`` still had an
    ``sr`` field kept the roll's rate there instead, which is taken out here.
    """
    recorded = store.meta.get("augment")
    if not isinstance(recorded, dict):
        raise StoreError(f"teacher store {store.path}: unreadable meta['augment'] {recorded!r}: not a dict")
    data = store.meta.get("data")
    rate = data.get("sample_rate") if isinstance(data, dict) else None
    roll = recorded.get("roll")
    if isinstance(roll, dict) and "sr" in roll:
        roll = dict(roll)
        rate = roll.pop("sr") if rate is None else rate
        recorded = {**recorded, "roll": roll}
    return recorded, rate


def check_augment(store: TeacherStore, student: augment.AugmentConfig, sample_rate: int) -> None:
    """Raise unless the student's augmentation is the one ``store`` was computed under.

    Args:
      store: the teacher-logit store.
      student: the student's ``config.augment``.
      sample_rate: the rate of the student's waveforms (``config.mel.sample_rate``): stored roll
        shifts are counted in samples, and stored IR indices point into IRs at one rate, so the
        store's clips must have had this rate.
    Raises:
      StoreError: naming every differing augmentation with the store's and the student's
        setting (see ``augment_mismatch``), a roll or DIR at another (or an unrecorded) sample
        rate, a student IR folder whose IRs are not the store's, or a store whose parameter
        arrays disagree with its own header.
      impulse.IRError: the student's IR folder is bad (naming the file).

    A store imported from logits computed elsewhere (``meta["import"]``, `distill.importing`)
    replays nothing: its teacher's augmentation is unknown, so the student samples its own
    fresh, and such a store must hold no parameters.
    """
    if "import" in store.meta:
        if store.aug:
            raise StoreError(f"teacher store {store.path}: imported (meta['import']) but holds "
                             f"augmentation parameters for {sorted(store.aug)}")
        log.info("teacher store %s holds imported logits: it replays no augmentation, the student "
                 "samples its own", store.path)
        return
    recorded, rate = _recorded_augment(store)
    try:
        differences = augment_mismatch(recorded, student)
    except (TypeError, ValueError) as e:
        raise StoreError(f"teacher store {store.path}: unreadable meta['augment'] {recorded!r}: {e}") from None
    if "roll" in store.aug and rate != sample_rate:
        differences.append(f"roll shifts counted at {rate} Hz (meta['data']['sample_rate']), "
                           f"the student's waveforms are at {sample_rate} Hz")
    if "dir" in store.aug and rate != sample_rate:
        differences.append(f"device IRs applied at {rate} Hz (meta['data']['sample_rate']), "
                           f"the student's waveforms are at {sample_rate} Hz")
    if not differences and "dir" in store.aug and student.dir is not None:
        differences += _ir_mismatch(store, student.dir, sample_rate)
    if differences:
        raise StoreError(
            f"teacher store {store.path} was computed under other augmentations than the "
            f"student's config.augment: {'; '.join(differences)}. The student must replay what "
            "the teachers saw: use the store's settings, or rebuild the store from the "
            "student's config (python -m asc_jax.distill precompute --config ...). "
            "Freq-MixStyle is exempt: the student applies it fresh."
        )
    stored = store_augment(augment.config_from_dict(recorded))
    enabled = {f.name for f in dataclasses.fields(stored) if getattr(stored, f.name) is not None}
    if enabled != set(store.aug):
        raise StoreError(f"teacher store {store.path}: header augmentations {sorted(enabled)} but "
                         f"stored parameters for {sorted(store.aug)}")


def _ir_mismatch(store: TeacherStore, student: augment.DIRConfig, sample_rate: int) -> list[str]:
    """Why the student's IRs are not the ones the store's indices point into (empty if they are):
    same file names in the same order and the same samples (``IRBank.identity``)."""
    recorded = store.meta.get("dir_irs")
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return ["dir: the store records no IR set (meta['dir_irs']), so its IR indices cannot be "
                "matched to the student's augment.dir.folder"]
    mine = student.load(sample_rate).identity()
    if (list(recorded.get("files", [])), recorded["sha256"]) == (mine["files"], mine["sha256"]):
        return []
    return [f"dir: the store's IRs ({_describe_irs(recorded)}) are not those of the student's augment.dir.folder "
            f"{student.folder} ({_describe_irs(mine)})"]


def _describe_irs(identity: Mapping[str, Any]) -> str:
    files = list(identity.get("files", []))
    shown = ", ".join(files[:5]) + (f", ... ({len(files)} files)" if len(files) > 5 else "")
    return f"[{shown}], sha256 {str(identity.get('sha256'))[:12]}"


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
    (``TeacherStore.check_dataset``), and the augmentation (``check_augment``:
    ``augment`` is the student's ``config.augment``, which must equal the store's apart from
    Freq-MixStyle; ``sample_rate`` its waveforms' rate, which stored roll shifts are counted in).

    The store is opened lazily in each process (memory maps do not pickle into grain workers).
    """

    def __init__(self, store: str | os.PathLike | TeacherStore, filenames: Sequence[str],
                 class_names: Sequence[str], teachers: str | Sequence[str] | None = None, *,
                 augment: augment.AugmentConfig, sample_rate: int):
        opened = store if isinstance(store, TeacherStore) else read_store(store)
        opened.check_dataset(filenames, class_names)
        check_augment(opened, augment, sample_rate)
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

    def all_views(self) -> dict:
        """Every stored view of every record, leaves (N, V, ...) in record order: what
        ``__call__`` draws from, for a split kept on the accelerator (`train.device_data`)."""
        store = self._store if self._store is not None else read_store(self.path, check_finite=False)
        logits = np.asarray(store.logits[self._rows], np.float32)  # (N, V, K_all, C)
        if self._cols is not None:
            logits = logits[:, :, self._cols]
        aug = jax.tree.map(lambda a: np.asarray(a[self._rows]), store.aug)
        return {"teacher_logits": logits, "aug": aug}
