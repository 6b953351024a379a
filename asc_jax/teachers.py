"""Teachers for knowledge distillation: load saved models, replay stored augmentations, precompute.

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

Command line (writes the store atomically, see ``distill.write_store``):

  python -m asc_jax.teachers precompute --config configs/kd_tau.py:split=25 \
      [--set data.root=/path/to/TAU22 ...] \
      --teacher runs/passt_s25_1 --teacher s2=runs/passt_s25_2/deploy --teacher runs/cpr_s25 \
      --views 8 [--seed 0] [--out stores/split25] [--batch-size 64]

``--config`` / ``--set`` are the student's, exactly as given to ``train.py``: the store samples
the student's ``config.augment`` (without Freq-MixStyle, which the student applies fresh), holds
the clips of its ``data.train_split`` under ``data.root`` (bad clips handled as
``data.on_error`` says), and is written to its ``kd.store`` unless ``--out`` says otherwise; the
seed defaults to the config's. The student refuses a store whose augmentation differs from its
own (``distill.StoreExtras``).

Teachers are trained with ``train.py`` (a bigger model config) or converted with
``convert_weights.py``; nothing here trains.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from asc_jax import distill, inference, setup_logging
from asc_jax.audio import augment
from asc_jax.audio.frontends import Frontend
from asc_jax.checkpoint import read_spec
from asc_jax.config import Config, load_config, override
from asc_jax.data import pipeline, tau

log = logging.getLogger(__name__)

# The store part of the default training recipe (config.augment's defaults): roll <= 125 ms, one
# frequency band <= 48 of 256 bins. Freq-MixStyle couples a batch, so it is never stored: the
# student applies it fresh (see asc_jax.distill). Precompute takes the student's own config.
STORE_AUGMENT = distill.store_augment(augment.AugmentConfig())

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


def resolve_model_dir(path: str | Path) -> Path:
    """A saved model directory: ``path`` itself, or a train.py workdir's ``deploy/`` (the fused,
    faster form; same logits) else ``model/``."""
    path = Path(path).absolute()
    for candidate in (path, path / "deploy", path / "model"):
        if (candidate / "model.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"teacher {path}: no model.json there nor under deploy/ or model/ (expected a directory "
        "written by train.py or convert_weights.py)")


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
def feature_augment(aug_cfg: augment.AugmentConfig, frontend: Frontend) -> augment.AugmentConfig:
    """``aug_cfg`` with its mask value moved into ``frontend``'s feature units."""
    if aug_cfg.freq_mask is None:
        return aug_cfg
    value = float(frontend.from_log_mel(aug_cfg.freq_mask.mask_value))
    return dataclasses.replace(aug_cfg, freq_mask=dataclasses.replace(aug_cfg.freq_mask, mask_value=value))


def make_apply(teacher: Teacher, aug_cfg: augment.AugmentConfig = STORE_AUGMENT) -> distill.TeacherFn:
    """The teacher's jitted ``apply(wave (B, n_samples), aug_params) -> logits (B, C)``.

    Every augmentation enabled in ``aug_cfg`` is replayed from ``aug_params`` (a missing one is
    an error, never sampled): waveform ones before the frontend, feature ones after it, bands
    converted to the frontend's resolution. Pass ``dataclasses.replace(cfg, roll=None)`` for a
    waveform that is already rolled (e.g. a training batch from the grain pipeline).

    Raises:
      ValueError: ``aug_cfg`` enables an augmentation that couples the batch (MixStyle).
    """
    coupled = [f.name for f in dataclasses.fields(aug_cfg) if getattr(aug_cfg, f.name) is not None
               and not augment.AUGMENTATIONS.get(f.name).per_example]
    if coupled:
        raise ValueError(f"augmentations {coupled} couple a batch and cannot be replayed per clip")
    feat_cfg = feature_augment(aug_cfg, teacher.frontend)
    features = teacher.frontend.features

    def replayed(wave, params):
        wave = augment.apply_augment(wave, params, aug_cfg)
        return augment.apply_augment(features(wave), params, feat_cfg)

    return inference.model_fn(teacher.model, replayed)


def fixed_batch(fn: distill.TeacherFn, batch_size: int) -> distill.TeacherFn:
    """Wraps ``fn`` so it always runs on ``batch_size`` rows: a short (last) batch is padded by
    repeating its final row and the output cut back, so the jitted teacher compiles once."""

    def wrapped(wave, params):
        n = wave.shape[0]
        if n > batch_size:
            raise ValueError(f"batch of {n} exceeds the fixed batch size {batch_size}")
        if n == batch_size:
            return fn(wave, params)

        def pad(a):
            a = np.asarray(a)
            return np.concatenate([a, np.repeat(a[-1:], batch_size - n, axis=0)])

        return np.asarray(fn(pad(wave), jax.tree.map(pad, params)))[:n]

    return wrapped


# ----------------------------------------------------------------------------------------------
# Precompute
# ----------------------------------------------------------------------------------------------
def clip_batches(source: pipeline.ClipSource, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(filenames, waves (b, n_samples)) over the source's clips in order; the last batch may be
    short."""
    for batch in pipeline.eval_batches(source, batch_size):
        keep = batch["mask"]
        yield [source.clips[i].filename for i in batch["index"][keep]], batch["audio"][keep]


def parse_teacher_arg(arg: str) -> tuple[str | None, str]:
    """``"DIR"`` -> (None, DIR); ``"TAG=DIR"`` -> (TAG, DIR)."""
    tag, sep, path = arg.partition("=")
    return (tag, path) if sep and tag and "/" not in tag else (None, arg)


def precompute_store(
    out: str | Path | None,
    *,
    config: Config,
    teachers: Sequence[str | Path | tuple[str | None, str | Path]],
    n_views: int,
    seed: int | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> distill.TeacherStore:
    """Runs the teachers over the student's training clips under ``n_views`` sampled
    augmentations and writes a teacher-logit store (``distill.precompute``).

    Args:
      out: store directory (written atomically); None: the config's ``kd.store``.
      config: the student's training config. Its ``augment`` is what the store samples
        (``distill.store_augment``: without Freq-MixStyle); its ``data`` section names the
        dataset (generated first if ``data.generate``), the training split whose clips the
        store holds, and how bad clips are handled (``data.on_error``), as in training.
      teachers: saved model dirs, or (tag, dir) pairs (tag None = the directory's name).
      n_views: augmented views per clip.
      seed: view ``v`` of clip ``i`` samples with ``distill.view_keys(seed, [i], v)``; None:
        the config's seed.
      batch_size: clips per teacher call.
      overwrite: replace an existing store.
      progress: show a progress bar.

    Returns:
      The written store.
    """
    out = out if out is not None else config.kd.store
    if not out:
        raise ValueError("no store directory: the config's kd.store is empty, pass out (--out)")
    seed = config.seed if seed is None else seed
    aug_cfg = distill.store_augment(config.augment)
    split = config.data.train_split
    pairs = [t if isinstance(t, tuple) else (None, t) for t in teachers]
    if not pairs:
        raise ValueError("precompute needs at least one teacher")
    seen: dict[str, Path] = {}
    for tag, path in pairs:  # names first: a clash fails before any weights are read
        directory, _, name = teacher_name(path, tag=tag)
        if name in seen:
            raise ValueError(f"teachers {seen[name]} and {directory} are both named {name!r}; "
                             "give them tags: --teacher TAG=DIR")
        seen[name] = directory
    loaded = [load_teacher(path, tag=tag) for tag, path in pairs]
    rates = {t.name: t.frontend.sample_rate for t in loaded}
    if len(set(rates.values())) != 1:
        raise ValueError(f"teachers expect different sample rates: {rates}")
    sr = loaded[0].frontend.sample_rate
    if aug_cfg.roll is not None and aug_cfg.roll.sr != sr:
        raise ValueError(f"roll shifts are counted at {aug_cfg.roll.sr} Hz, the teachers run at {sr} Hz")

    data_root = pipeline.dataset_root(config.data.root, generate=config.data.generate,
                                      synthetic_params=config.data.synthetic)
    opened = pipeline.load_split_source(data_root, split, sr=sr, cache=False, on_error=config.data.on_error)
    fns = {t.name: fixed_batch(make_apply(t, aug_cfg), batch_size) for t in loaded}
    batches = clip_batches(opened.source, batch_size)
    if progress:
        batches = tqdm(batches, total=-(-len(opened.source) // batch_size), desc="teachers", unit="batch")
    log.info("precomputing %d views of %d clips (split %s) with %s", n_views, len(opened.source), split,
             ", ".join(fns))
    meta = {
        "frontend": {t.name: t.frontend.describe() for t in loaded},
        "augment": augment.config_to_dict(aug_cfg),
        "teachers": {t.name: {"dir": str(t.directory), "model": t.spec["model"]} for t in loaded},
        "data": {"root": str(Path(data_root).absolute()), "split": str(split), "sample_rate": sr,
                 "on_error": config.data.on_error, "skipped": [s.filename for s in opened.skipped]},
    }
    return distill.precompute(out, teachers=fns, batches=batches, n_views=n_views,
                              sample_aug=augment.example_sampler(aug_cfg), seed=seed,
                              class_names=tau.CLASSES, meta=meta, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> distill.TeacherStore:
    parser = argparse.ArgumentParser(prog="python -m asc_jax.teachers",
                                     description="Teacher-logit stores for knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("precompute", help="run teachers over the student's training split and write "
                                          "a teacher-logit store")
    p.add_argument("--config", required=True, metavar="configs/x.py[:variant]",
                   help="the student's config, as given to train.py: its augment (without "
                        "Freq-MixStyle) is sampled, its data.root / data.train_split are read, "
                        "its kd.store is the default --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the student's config overrides, as given to train.py (e.g. data.root=...)")
    p.add_argument("--teacher", action="append", required=True, metavar="[TAG=]DIR",
                   help="saved model dir or train.py workdir; named <arch>-<TAG> (TAG defaults to "
                        "the directory's name). Repeat for an ensemble.")
    p.add_argument("--views", type=int, required=True, help="augmented views per clip")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the sampled augmentations (default: the config's seed)")
    p.add_argument("--out", default=None, help="store directory (default: the config's kd.store)")
    p.add_argument("--batch-size", type=int, default=64, help="clips per teacher call")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    args = parser.parse_args(argv)
    setup_logging("%(message)s")
    config = load_config(args.config)
    for assignment in args.set:
        config = override(config, assignment)
    store = precompute_store(
        args.out, config=config, teachers=[parse_teacher_arg(t) for t in args.teacher],
        n_views=args.views, seed=args.seed, batch_size=args.batch_size, overwrite=args.overwrite,
        progress=sys.stderr.isatty())
    log.info("wrote %s: %d clips x %d views x teachers %s", store.path, len(store), store.n_views,
             ", ".join(store.teacher_names))
    return store


if __name__ == "__main__":
    main()
