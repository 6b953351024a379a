"""Precompute: run the teachers once over the student's training clips and write a teacher store.

Every clip is seen under ``n_views`` sampled augmentations. View ``v`` of clip ``i`` (its row in
the training split) samples its parameters with the key ``view_keys(seed, [i], v)``, so a store
is reproducible from the seed alone, whatever the batching. The clips and their parameters go
through the one batched-inference path, ``asc_jax.inference.predict`` (static batch shape, zero
padding, masking), and each teacher replays the parameters on its own frontend
(``teachers.make_apply``). The store is written atomically (``store.write_store``).

Device impulse responses (``augment.DIRConfig``) are the exception to replay on device: their
IRs are files on the host, so each view's IR index is drawn here with the clip's device (as the
student's pipeline does) and applied to the batch on the host (``DIRConfig.apply``, the
pipeline's op) before the teachers replay the rest, so the teachers hear DIR then the roll, the
pipeline's order. The header records the IR set (``meta["dir_irs"]``: file names and a hash),
which a student's IR folder must match.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from asc_jax import inference
from asc_jax.audio import augment
from asc_jax.config import Config
from asc_jax.data import sources, tau
from asc_jax.distill.extras import store_augment
from asc_jax.distill.store import StoreError, TeacherStore, read_store, require_finite, write_store
from asc_jax.distill.teachers import Teacher, load_teacher, make_apply, teacher_name

log = logging.getLogger(__name__)

# A saved model dir (tag: the directory's name), a (tag, dir) pair, or a teacher loaded already.
TeacherSpec = str | Path | tuple[str | None, str | Path] | Teacher


def view_keys(seed: int, clip_indices: np.ndarray, view: int) -> jax.Array:
    """PRNG keys ``fold_in(fold_in(key(seed), clip), view)``: one per clip, independent of
    batching, so a store's parameters are reproducible from (seed, clip index, view) alone."""
    base = jax.random.key(seed)
    clips = jnp.asarray(clip_indices, jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), view))(clips)


def _load_teachers(teachers: Sequence[TeacherSpec]) -> list[Teacher]:
    """Loads the teachers; names are checked first, so a clash fails before any weights are read."""
    specs = [t if isinstance(t, (tuple, Teacher)) else (None, t) for t in teachers]
    if not specs:
        raise ValueError("precompute needs at least one teacher")
    seen: dict[str, Path] = {}
    for spec in specs:
        if isinstance(spec, Teacher):
            directory, name = spec.directory, spec.name
        else:
            directory, _, name = teacher_name(spec[1], tag=spec[0])
        if name in seen:
            raise ValueError(f"teachers {seen[name]} and {directory} are both named {name!r}; "
                             "give them tags: --teacher TAG=DIR")
        seen[name] = directory
    return [s if isinstance(s, Teacher) else load_teacher(s[1], tag=s[0]) for s in specs]


def precompute(
    out: str | Path | None,
    *,
    config: Config,
    teachers: Sequence[TeacherSpec],
    n_views: int,
    seed: int | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> TeacherStore:
    """Runs the teachers over the student's training clips under ``n_views`` sampled
    augmentations and writes a teacher-logit store.

    Args:
      out: store directory (written atomically); None: the config's ``kd.store``.
      config: the student's training config. Its ``augment`` is what the store samples
        (``store_augment``: without Freq-MixStyle); its ``data`` section names the dataset
        (generated first if ``data.generate``), the training split whose clips the store holds,
        and how bad clips are handled (``data.on_error``), as in training.
      teachers: saved model dirs, (tag, dir) pairs (tag None = the directory's name), or
        loaded ``Teacher``s; all at one sample rate.
      n_views: augmented views per clip (V).
      seed: view ``v`` of clip ``i`` samples with ``view_keys(seed, [i], v)``; None: the
        config's seed.
      batch_size: clips per teacher call (``inference.predict``).
      overwrite: replace an existing store.
      progress: show a progress bar.

    Returns:
      The written store, read back.

    Raises:
      ValueError: no store directory, no teachers, two teachers of one name, mismatched sample
        rates, or no clips.
      StoreError: a teacher returning logits of the wrong shape or non-finite ones (naming the
        clip, view and teacher).
      impulse.IRError: a bad IR folder of ``augment.dir`` (naming the file).
    """
    out = out if out is not None else config.kd.store
    if not out:
        raise ValueError("no store directory: the config's kd.store is empty, pass out (--out)")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    seed = config.seed if seed is None else seed
    aug_cfg = store_augment(config.augment)
    split = config.data.train_split
    loaded = _load_teachers(teachers)
    # One waveform batch feeds every teacher, so they must agree on how audio reaches it.
    rates = {t.name: (t.frontend.sample_rate, t.frontend.resampler) for t in loaded}
    if len(set(rates.values())) != 1:
        raise ValueError(f"teachers expect different sample rates or resamplers: {rates}; "
                         "precompute them into separate stores")
    sr, resampler = rates[loaded[0].name]

    data_root = sources.dataset_root(config.data.root, generate=config.data.generate,
                                      synthetic_params=config.data.synthetic)
    opened = sources.load_split_source(data_root, split, sr=sr, resampler=resampler, cache=False,
                                       on_error=config.data.on_error)
    filenames = [c.filename for c in opened.source.clips]
    if not filenames:
        raise ValueError(f"precompute got no clips (split {split} under {data_root})")
    irs = None if aug_cfg.dir is None else aug_cfg.dir.load(sr)
    # DIR runs here on the host (_with_dir); the teachers replay the other augmentations.
    fns = {t.name: make_apply(t, dataclasses.replace(aug_cfg, dir=None)) for t in loaded}
    names, n_classes = list(fns), len(tau.CLASSES)
    clips = np.arange(len(filenames))
    # Roll shifts in samples at the clips' rate; DIR indices depend on each clip's device.
    sample = augment.example_sampler(aug_cfg, sr, n_irs=None if irs is None else len(irs))
    devices = [c.device for c in opened.source.clips]
    views = [jax.tree.map(np.asarray, sample(view_keys(seed, clips, v), devices)) for v in range(n_views)]
    aug_params = jax.tree.map(lambda *a: np.stack(a, axis=1), *views)  # leaves (N, V, ...)
    # "real" is False on predict's padding rows, so that only the clips' own logits are checked.
    rows = {"clip": clips, "real": np.ones(len(clips), bool), "aug": aug_params}
    bar = tqdm(total=math.ceil(len(clips) / batch_size), desc="teachers", unit="batch", disable=not progress)

    def all_views(wave: jax.Array, batch: dict) -> np.ndarray:
        """(B, V, K, C) logits of one batch: every view, every teacher."""
        per_view = []
        for view in range(n_views):
            heard = _with_dir(aug_cfg.dir, irs, wave, batch["aug"], view)
            per_view.append(np.stack([_teacher_logits(fns[name], name, heard, batch["aug"], view, n_classes)
                                      for name in names], axis=1))
        batch_logits = np.stack(per_view, axis=1)
        real = np.asarray(batch["real"])
        require_finite(batch_logits[real], [filenames[i] for i in np.asarray(batch["clip"])[real]], names,
                       "precompute")
        bar.update()
        return batch_logits

    log.info("precomputing %d views of %d clips (split %s) with %s", n_views, len(clips), split,
             ", ".join(names))
    with bar:
        logits = inference.predict(all_views, opened.source, batch_size, rows=rows)
    meta = {
        "frontend": {t.name: t.frontend.describe() for t in loaded},
        "augment": augment.config_to_dict(aug_cfg),
        "teachers": {t.name: {"dir": str(t.directory), "model": t.spec["model"]} for t in loaded},
        "data": {"root": str(Path(data_root).absolute()), "split": str(split), "sample_rate": sr,
                 "on_error": config.data.on_error, "skipped": [s.filename for s in opened.skipped]},
        "seed": seed,
    }
    if irs is not None:
        meta["dir_irs"] = irs.identity()
    write_store(out, filenames=filenames, teacher_names=names, logits=logits, aug_params=aug_params,
                class_names=tau.CLASSES, meta=meta, overwrite=overwrite)
    return read_store(out)


def _with_dir(cfg: augment.DIRConfig | None, irs, wave, aug_params: dict, view: int):
    """The batch convolved with view ``view``'s device IRs (unchanged without DIR). predict's
    padding rows carry index 0 and silent audio, which stays silent."""
    if cfg is None:
        return wave
    return cfg.apply(np.asarray(wave), {"ir": np.asarray(aug_params["dir"]["ir"])[:, view]}, irs)


def _teacher_logits(fn: Callable, name: str, wave: jax.Array, aug_params: dict, view: int,
                    n_classes: int) -> np.ndarray:
    """One teacher on one batch under view ``view`` of the batch's (B, V, ...) parameters."""
    logits = np.asarray(fn(wave, jax.tree.map(lambda a: a[:, view], aug_params)), np.float32)
    if logits.shape != (wave.shape[0], n_classes):
        raise StoreError(f"teacher {name!r} returned logits of shape {logits.shape}, "
                         f"expected {(wave.shape[0], n_classes)}")
    return logits
