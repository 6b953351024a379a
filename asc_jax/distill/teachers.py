"""Teachers: saved models loaded by name, and the replay of stored augmentations through them.

A teacher is any saved asc-jax model directory (``checkpoint.save_model``): a PaSST converted with
``convert_weights.py``, or a CNN trained with ``train.py`` (``<workdir>/model`` or
``<workdir>/deploy``; a workdir itself resolves to its ``deploy/``, else ``model/``). It is named
``<arch>-<tag>`` (``arch`` = the model registry name from model.json, which is what
``distill.ENSEMBLES`` selects on; ``tag`` = given, or the directory's name).

Each teacher keeps its own frontend (``asc_jax.audio.frontends``): PaSST models see PaSST's log-mel
(128 Kaldi mel bins, normalised), models trained here see the log-mel described by the "mel" entry
of their model.json. ``make_apply`` builds the jitted ``apply(wave, aug_params) -> logits`` that
replays a stored augmentation exactly as the student will see it: roll the waveform by the stored
shift, compute the teacher's frontend, mask the stored frequency band converted to that frontend's
resolution (``augment.freq_mask_bins``), run the model in inference mode (``asc_jax.inference``).

Teachers are trained with ``train.py`` (a bigger model config) or converted with
``convert_weights.py``; nothing here trains.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Callable, Sequence

import jax
from flax import nnx

from asc_jax import inference
from asc_jax.audio import augment
from asc_jax.audio.frontends import Frontend, feature_augment
from asc_jax.checkpoint import read_spec, resolve_model_dir
from asc_jax.data import tau
from asc_jax.distill.extras import store_augment

# apply(wave (B, n_samples), aug_params {name: {field: (B, ...)}}) -> logits (B, C)
TeacherFn = Callable[[jax.Array, dict], jax.Array]

log = logging.getLogger(__name__)

# The store part of the default training recipe (config.augment's defaults): roll <= 125 ms, one
# frequency band <= 48 of 256 bins. Freq-MixStyle couples a batch, so it is never stored: the
# student applies it fresh (see asc_jax.distill.extras). Precompute takes the student's own config.
STORE_AUGMENT = store_augment(augment.AugmentConfig())

_TAG = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")


# ----------------------------------------------------------------------------------------------
# Loading teachers
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """A loaded teacher: ``name`` is ``<arch>-<tag>``; ``spec`` is its model.json."""

    name: str
    directory: Path
    spec: dict
    frontend: Frontend
    model: nnx.Module

    @property
    def arch(self) -> str:
        return self.spec["model"]["name"]


def default_tag(directory: Path) -> str:
    """The directory's name (its workdir's name for ``.../model`` and ``.../deploy``), reduced
    to characters that are safe in a teacher name (no commas: ensembles split on them)."""
    name = directory.parent.name if directory.name in ("model", "deploy") else directory.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip("-") or "teacher"


def teacher_name(path: str | Path, *, tag: str | None = None,
                 class_names: Sequence[str] = tau.CLASSES) -> tuple[Path, dict, str]:
    """Resolves and checks a teacher without loading its weights.

    Returns:
      (model directory, its model.json, the teacher name ``<arch>-<tag>``).

    Raises:
      FileNotFoundError: no saved model at ``path``.
      ValueError: a bad tag, an architecture name with a dash (it would not parse back), or
        class names in model.json differing from ``class_names``.
    """
    directory = resolve_model_dir(path)
    spec = read_spec(directory)
    arch = spec["model"]["name"]
    tag = default_tag(directory) if tag is None else tag
    if not _TAG.fullmatch(tag):
        raise ValueError(f"teacher tag {tag!r} for {directory}: use letters, digits, '_', '.', '-' "
                         "(not leading '-')")
    if "-" in arch:
        raise ValueError(f"{directory}: architecture {arch!r} contains '-', so '<arch>-<tag>' "
                         "teacher names would not parse back (distill.teacher_arch)")
    if "class_names" in spec and tuple(spec["class_names"]) != tuple(class_names):
        raise ValueError(f"teacher {directory} predicts classes {spec['class_names']}, the dataset "
                         f"has {list(class_names)}")
    return directory, spec, f"{arch}-{tag}"


def load_teacher(path: str | Path, *, tag: str | None = None,
                 class_names: Sequence[str] = tau.CLASSES) -> Teacher:
    """Loads a saved model as a teacher named ``<arch>-<tag>`` (checks as ``teacher_name``)."""
    directory, spec, name = teacher_name(path, tag=tag, class_names=class_names)
    if "class_names" not in spec:
        log.warning("teacher %s records no class names; assuming the dataset's order %s",
                    directory, list(class_names))
    saved = inference.load(directory)
    return Teacher(name, directory, spec, saved.frontend, saved.model)


# ----------------------------------------------------------------------------------------------
# Replaying stored augmentations
# ----------------------------------------------------------------------------------------------
def make_apply(teacher: Teacher, aug_cfg: augment.AugmentConfig = STORE_AUGMENT) -> TeacherFn:
    """The teacher's jitted ``apply(wave (B, n_samples), aug_params) -> logits (B, C)``.

    Every augmentation enabled in ``aug_cfg`` is replayed from ``aug_params`` (a missing one is
    an error, never sampled): waveform ones before the frontend, feature ones after it, bands
    converted to the frontend's resolution. Pass ``dataclasses.replace(cfg, roll=None)`` for a
    waveform that is already rolled (e.g. a training batch from the grain pipeline).

    Raises:
      ValueError: ``aug_cfg`` enables an augmentation that couples the batch (MixStyle).
    """
    per_clip = store_augment(aug_cfg)
    coupled = [f.name for f in dataclasses.fields(aug_cfg)
               if getattr(aug_cfg, f.name) is not None and getattr(per_clip, f.name) is None]
    if coupled:
        raise ValueError(f"augmentations {coupled} couple a batch and cannot be replayed per clip")
    feat_cfg = feature_augment(aug_cfg, teacher.frontend)
    features = teacher.frontend.features

    def replayed(wave, params):
        wave = augment.apply_augment(wave, params, aug_cfg)
        return augment.apply_augment(features(wave), params, feat_cfg)

    return inference.model_fn(teacher.model, replayed)
