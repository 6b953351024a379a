"""Calibration: the input range of every conv over a batch of log-mels, and post-training quantization.

`calibrate` wraps each conv in an observer that records its input's [lo, hi] ("minmax" or
"percentile") and runs the model over the batch; `post_training_quantize` is calibration followed
by `quantize`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asc_jax.quantize.config import QuantConfig
from asc_jax.quantize.convert import check_deploy, map_convs, path_name, quantize
from asc_jax.surgery import flatten


class _CalibStat(nnx.Variable):
    pass


class _Observer(nnx.Module):
    """Records [lo, hi] of its conv's input, then runs the conv."""

    def __init__(self, inner: nnx.Module, calibration: str, percentile: float):
        self.inner = inner
        self.calibration = calibration
        self.percentile = percentile
        self.stat = _CalibStat(jnp.zeros((2,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.calibration == "minmax":
            lo, hi = jnp.min(x), jnp.max(x)
        else:
            lo, hi = jnp.percentile(x, jnp.array([100.0 - self.percentile, self.percentile]))
        self.stat.value = jnp.stack([lo, hi]).astype(jnp.float32)
        return self.inner(x)


def calibrate(model: nnx.Module, mels: Any, cfg: QuantConfig = QuantConfig(), *,
              batch_size: int = 64) -> dict[str, np.ndarray]:
    """Ranges of every conv input of `model` over a calibration batch of log-mels.

    "minmax" takes the extremes over all batches; "percentile" averages the per-batch
    percentiles (extremes of a single batch are what percentiles are meant to discard). Either
    range is widened to contain 0. Works on float, QAT and int8 models alike (for the latter two
    the inputs are those of the quantized network, which is what re-calibration wants).

    Args:
      model: deploy model, (B, n_mels, n_frames) log-mel in, (logits, aux) out.
      mels: (N, n_mels, n_frames) float log-mels, e.g. of clips from the training split.
      cfg: the calibration method.
      batch_size: log-mels per forward pass.
    Returns:
      {conv name: float32 [lo, hi]}.
    """
    mels = np.asarray(mels, np.float32)
    if mels.ndim != 3 or len(mels) == 0:
        raise ValueError(f"calibration needs a non-empty (N, n_mels, n_frames) batch, got shape {mels.shape}")
    if not np.isfinite(mels).all():
        raise FloatingPointError("calibration log-mels contain NaN or inf")
    check_deploy(model)
    observed = map_convs(model, lambda name, conv: _Observer(conv, cfg.calibration, cfg.percentile))
    graphdef, state = nnx.split(observed)

    @jax.jit
    def batch_ranges(state, x):
        m = nnx.merge(graphdef, state)
        m(x, train=False)
        return nnx.to_pure_dict(nnx.state(m, _CalibStat))

    per_batch, weights = [], []
    for start in range(0, len(mels), batch_size):
        chunk = mels[start:start + batch_size]
        per_batch.append({path_name(p[:-1]): np.asarray(v) for p, v in flatten(batch_ranges(state, chunk)).items()})
        weights.append(len(chunk))
    ranges = {}
    for name in per_batch[0]:
        stats = np.stack([b[name] for b in per_batch])
        if cfg.calibration == "minmax":
            lo, hi = stats[:, 0].min(), stats[:, 1].max()
        else:
            lo, hi = np.average(stats, axis=0, weights=weights)
        ranges[name] = np.array([min(lo, 0.0), max(hi, 0.0)], np.float32)
    return ranges


def post_training_quantize(model: nnx.Module, mels: Any, cfg: QuantConfig = QuantConfig(), *,
                           batch_size: int = 64) -> nnx.Module:
    """`quantize(model, calibrate(model, mels, cfg), cfg)`."""
    ranges = calibrate(model, mels, cfg, batch_size=batch_size) if cfg.act_bits is not None else None
    return quantize(model, ranges, cfg)
