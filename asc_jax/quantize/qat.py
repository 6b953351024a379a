"""Quantization-aware finetuning (`finetune_qat`) with the production train step.

The float deploy model becomes a QAT model (`prepare_qat`: fake-quantized convs with
straight-through gradients) that is finetuned by `asc_jax.train.steps.make_train_step` (the
model's frontend, training augmentations, cross-entropy). Its activation ranges are Variables, not Params, so they
stay the PTQ ranges it started from; `convert_qat` of the result is the int8 model.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from asc_jax.audio.frontends import Frontend, feature_augment
from asc_jax.config import OptimConfig
from asc_jax.data import pipeline, sources
from asc_jax.quantize.config import QATConfig, QuantConfig
from asc_jax.quantize.convert import prepare_qat
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

log = logging.getLogger(__name__)


def finetune_qat(model: nnx.Module, ranges: Mapping[str, Any] | None, source: sources.ClipSource,
                 frontend: Frontend, cfg: QuantConfig = QuantConfig(), qat: QATConfig = QATConfig(), *,
                 seed: int = 0) -> tuple[nnx.Module, dict[str, Any]]:
    """Finetunes `prepare_qat(model, ranges, cfg)` on `source` with the production train step.

    The step (`steps.make_train_step`) computes the features of `frontend` on device, applies the
    augmentations of `qat.augment` (the waveform roll on the host, as in training; the frequency
    mask value, given in log-mel units, converted to the frontend's units by `feature_augment`)
    and minimises cross-entropy; only the kernels and biases are Params, so the activation
    ranges stay those given. `convert_qat` of the result is its int8 model.

    Args:
      model: float deploy model, left untouched.
      ranges: its conv-input ranges (`calibrate`; None with cfg.act_bits None).
      source: the training clips, decoded at frontend.sample_rate.
      frontend: the model's frontend (`inference.load(...).frontend`).
      cfg: bit widths.
      qat: epochs, learning rate, batch size, augmentations.
      seed: shuffling and augmentation draws.
    Returns:
      (finetuned QAT model, {"steps", "loss", "accuracy"}: step count and per-epoch mean
      training loss and accuracy).
    Raises:
      ValueError: `source` cannot fill one batch.
      FloatingPointError: the loss became non-finite (lower qat.lr).
    """
    if source.sr != frontend.sample_rate:
        raise ValueError(f"{source!r} decodes at {source.sr} Hz, the {frontend.name!r} frontend expects "
                         f"{frontend.sample_rate} Hz")
    steps_per_epoch = len(source) // qat.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(source)} training clips cannot fill a QAT batch of {qat.batch_size}")
    tx = OptimConfig(lr=qat.lr, epochs=qat.epochs, warmup_epochs=0, batch_size=qat.batch_size).build(steps_per_epoch)
    graphdef, state = create_train_state(prepare_qat(model, ranges, cfg), tx)
    batches = iter(pipeline.train_dataset(source, batch_size=qat.batch_size, seed=seed, sr=source.sr,
                                          roll=qat.augment.roll, dir=qat.augment.dir))
    # The roll and DIR ran on the host.
    feature_aug = feature_augment(dataclasses.replace(qat.augment, roll=None, dir=None), frontend)
    train_step = steps.make_train_step(graphdef, tx, frontend, feature_aug, steps.classification_loss,
                                       jax.random.key(seed))
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    for epoch in range(qat.epochs):
        metrics = []
        for _ in range(steps_per_epoch):
            state, m = train_step(state, next(batches))
            metrics.append({k: m[k] for k in history})
        means = {k: float(np.mean([x[k] for x in jax.device_get(metrics)])) for k in history}
        if not np.isfinite(means["loss"]):
            raise FloatingPointError(f"QAT loss became non-finite in epoch {epoch + 1}; lower the QAT lr "
                                     f"(now {qat.lr})")
        log.info("QAT epoch %d/%d: loss %.4f, accuracy %.4f", epoch + 1, qat.epochs, means["loss"],
                 means["accuracy"])
        for k in history:
            history[k].append(means[k])
    return nnx.merge(graphdef, state.params, state.batch_stats), {"steps": int(state.step), **history}
