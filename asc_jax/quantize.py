"""Int8 post-training quantization and quantization-aware finetuning of deploy (fused) models.

Scheme (the per-channel int8 convention of ONNX QDQ and TFLite):
  * conv weights: symmetric, per output channel, q = clip(round(w / s), -127, 127) with
    s = max|w| / 127 over the channel; stored as int8 plus one float32 scale per output channel;
  * conv inputs: per tensor, affine int8 (scale and zero point) from a range [lo, hi] calibrated
    on a batch of log-mels (min/max or percentiles) and widened to contain 0, so that the convs'
    zero padding and the zeros after ReLU stay exact. Most conv inputs follow a ReLU and are
    non-negative: an affine code uses all 256 levels on them, a symmetric one only 128;
  * biases, GRN's two scalars, residual sums, pooling and the final mean stay float32 (integer
    runtimes keep biases as int32 at scale s_in * s_w, which is as exact).
The quantized model is simulated in float: its int8 weights are dequantized in the forward pass
and every conv input is fake-quantized (quantized, then dequantized). That computes the same
products as an int8 x int8 -> int32 kernel followed by rescaling, up to float32 summation order.

Quantization-aware finetuning: `prepare_qat` turns every conv into a `FakeQuantConv` whose float
kernel is fake-quantized in the forward pass with a straight-through estimator (identity gradient
for weights, which absmax scaling never clips; for inputs the gradient passes inside the
calibrated range and is zero outside, as TensorFlow's FakeQuantWithMinMaxVars). The ranges are
`ActRange` variables, not Params, so the functional train step (`asc_jax.train.steps`) keeps them
fixed; `calibrate` + `set_ranges` re-estimate them after finetuning. `convert_qat` gives the int8
model, whose forward pass equals the QAT model's. `finetune_qat` runs the finetuning with the
production train step (`asc_jax.train.steps.make_train_step`: log-mel, training augmentations,
cross-entropy) from the PTQ ranges, which it keeps, so the int8 model is the finetuned one.

Why not qwix (checked with qwix 0.1.8): `qwix.quantize_model(deploy_rep_mobile,
qwix.PtqProvider([qwix.QuantizationRule(weight_qtype=jnp.int8, act_qtype=jnp.int8)]), x)` quantizes
only the two stem convs (2,376 of 124,862 parameters). qwix intercepts calls to
`jax.lax.conv_general_dilated`, `jax.lax.dot_general` and `jnp.einsum` and recognises a weight by
finding the operand among the calling module's nnx.Params, and
  * `DepthwiseConv` with conv_lowering "taps" (the CPU default) computes its taps with
    elementwise multiplies (no conv to intercept),
  * `PointwiseConv` with "taps" contracts `kernel[0, 0]`, a new array in the eager call that
    `quantize_model` makes, so qwix takes it for an activation and the float kernel stays in the model;
moreover its PTQ conv path quantizes activations with dynamic per-example scales (static ranges
need the QT provider's moving-average statistics), and its symmetric int8 code uses the bound
127.5 with a saturating cast (codes -128..127), not the -127..127 per-channel convention above.
So the scheme is implemented here, on the module tree, in a few small functions.

CLI: python -m asc_jax.quantize --checkpoint <workdir>/deploy --data-root DATA --out <workdir>/deploy_int8
     [--qat [--qat-epochs 5 --qat-lr 1e-4 --qat-batch-size 64 --train-split 100 --no-qat-augment
             --qat-out DIR]]
PTQ, and with --qat also QAT finetuning on the training split; prints (and with --out saves, as
quantization.json) float vs PTQ vs QAT accuracy and the DCASE memory report. The PTQ model is
saved to --out, the QAT model to --qat-out (default: <out>_qat).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding

from asc_jax import checkpoint, evaluate, inference
from asc_jax.audio.augment import AugmentConfig
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import Frontend
from asc_jax.complexity import DCASE_MAX_PARAM_BYTES
from asc_jax.config import OptimConfig
from asc_jax.data import pipeline, tau
from asc_jax.models.layers import DepthwiseConv, PointwiseConv, depthwise_taps
from asc_jax.surgery import flatten
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

log = logging.getLogger(__name__)

CALIBRATIONS = ("minmax", "percentile")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 8  # Symmetric per-output-channel conv weights, stored as int8 (2..8 bits).
    act_bits: int | None = 8  # Per-tensor affine conv inputs (2..8 bits); None = weight-only.
    calibration: str = "minmax"  # Conv-input ranges over the calibration batch: "minmax" or "percentile".
    percentile: float = 99.99  # With "percentile": range = [P(100 - p), P(p)] of each conv input.

    def __post_init__(self):
        if not 2 <= self.weight_bits <= 8:
            raise ValueError(f"weight_bits must be in 2..8 (stored as int8), got {self.weight_bits}")
        if self.act_bits is not None and not 2 <= self.act_bits <= 8:
            raise ValueError(f"act_bits must be in 2..8 or None, got {self.act_bits}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")


@dataclasses.dataclass(frozen=True)
class QATConfig:
    """Quantization-aware finetuning of a float deploy model (`finetune_qat`, CLI --qat)."""

    epochs: int = 5  # Passes over the training split.
    lr: float = 1e-4  # Peak Adam lr, cosine-decayed to 0 without warmup (1% of training's 0.01).
    batch_size: int = 64  # Clips per step; each epoch drops its last partial batch.
    train_split: str = "100"  # DCASE split finetuned on: "5", "10", "25", "50" or "100".
    augment: AugmentConfig = AugmentConfig()  # Training augmentations (default: those of training).

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"QAT needs epochs >= 1, batch_size >= 1 and lr > 0, got {self}")


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------

def quantize_weight(kernel: jax.Array, bits: int = 8) -> tuple[jax.Array, jax.Array]:
    """Symmetric per-output-channel (last axis) quantization.

    Returns:
      (int8 codes with kernel's shape, float32 scales of shape (C_out,)); the weights are
      codes * scales.
    """
    qmax = 2 ** (bits - 1) - 1
    absmax = jnp.max(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
    # An all-zero (e.g. pruned) channel gets scale 1; its codes are 0 either way.
    scale = jnp.where(absmax > 0, absmax / qmax, 1.0).astype(jnp.float32)
    codes = jnp.clip(jnp.round(kernel / scale), -qmax, qmax).astype(jnp.int8)
    return codes, scale


def dequantize_weight(codes: jax.Array, scale: jax.Array) -> jax.Array:
    return codes.astype(jnp.float32) * scale


def act_qparams(act_range: jax.Array, bits: int = 8) -> tuple[jax.Array, jax.Array]:
    """(scale, zero point) of the affine code of a range [lo, hi] that contains 0."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    span = act_range[1] - act_range[0]
    scale = jnp.where(span > 0, span / (qmax - qmin), 1.0)
    zero_point = jnp.clip(jnp.round(qmin - act_range[0] / scale), qmin, qmax)
    return scale, zero_point


def _fake_quant_act(x: jax.Array, act_range: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale, zero_point = act_qparams(act_range, bits)
    codes = jnp.clip(jnp.round(x / scale) + zero_point, qmin, qmax)
    # The gradient passes where x lies within the representable range (TF's FakeQuant rule).
    inside = (x >= (qmin - zero_point) * scale) & (x <= (qmax - zero_point) * scale)
    return (codes - zero_point) * scale, inside


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fake_quant_act(x: jax.Array, act_range: jax.Array, bits: int = 8) -> jax.Array:
    """Affine quantize-dequantize of `x` on `act_range`; straight-through gradient inside it."""
    return _fake_quant_act(x, act_range, bits)[0]


def _fake_quant_act_fwd(x, act_range, bits):
    y, inside = _fake_quant_act(x, act_range, bits)
    return y, (inside, act_range)


def _fake_quant_act_bwd(bits, residuals, g):
    inside, act_range = residuals
    return g * inside, jnp.zeros_like(act_range)


fake_quant_act.defvjp(_fake_quant_act_fwd, _fake_quant_act_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fake_quant_weight(kernel: jax.Array, bits: int = 8) -> jax.Array:
    """Per-channel quantize-dequantize of a kernel; straight-through (identity) gradient."""
    return dequantize_weight(*quantize_weight(kernel, bits))


def _fake_quant_weight_fwd(kernel, bits):
    return fake_quant_weight(kernel, bits), None


def _fake_quant_weight_bwd(bits, _, g):
    return (g,)


fake_quant_weight.defvjp(_fake_quant_weight_fwd, _fake_quant_weight_bwd)


# ---------------------------------------------------------------------------------------------
# Quantized conv modules
# ---------------------------------------------------------------------------------------------

class ActRange(nnx.Variable):
    """Calibrated [lo, hi] (float32) of a conv input; fixed during finetuning."""


class QuantWeight(nnx.Variable):
    """Int8 conv weights (a Variable, not a Param: integers take no gradient)."""


class WeightScale(nnx.Variable):
    """Per-output-channel float32 scales of a QuantWeight."""


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """How a quantized conv computes: the static part of the nnx.Conv it replaces."""

    # How the replaced layer lowers (its model's conv_lowering, layers.CONV_LOWERINGS): "taps"
    # (DepthwiseConv as shifted slices), "matmul" (PointwiseConv) or "conv" (XLA convolution:
    # any other nnx.Conv, and both of those with conv_lowering "xla").
    kind: str
    strides: tuple[int, int]
    padding: Any  # lax padding: "SAME" / "VALID" or ((lo, hi), (lo, hi))
    groups: int

    @classmethod
    def of(cls, conv: nnx.Conv) -> "ConvSpec":
        if len(conv.kernel_size) != 2:
            raise ValueError(f"only 2-D convs can be quantized, got kernel_size {conv.kernel_size}")
        unsupported = [name for name in ("input_dilation", "kernel_dilation")
                       if getattr(conv, name) not in (None, 1, (1, 1))]
        if conv.mask is not None:
            unsupported.append("mask")
        padding = canonicalize_padding(conv.padding, 2)
        if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
            unsupported.append(f"padding={padding}")
        if unsupported:
            raise ValueError(f"cannot quantize a conv with {', '.join(unsupported)}")
        strides = (conv.strides,) * 2 if isinstance(conv.strides, int) else tuple(conv.strides or (1, 1))
        taps = getattr(conv, "lowering", None) == "taps"
        kind = ("taps" if taps and isinstance(conv, DepthwiseConv)
                else "matmul" if taps and isinstance(conv, PointwiseConv) else "conv")
        padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
        return cls(kind, strides, padding, int(conv.feature_group_count))

    def apply(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """The conv without bias, lowered as the replaced layer lowers it."""
        if self.kind == "matmul":
            return jnp.einsum("...c,co->...o", x, kernel[0, 0])
        if self.kind == "taps":
            return depthwise_taps(x, kernel, self.strides)
        return jax.lax.conv_general_dilated(x, kernel, self.strides, self.padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=self.groups)


def _range_variable(act_range: Any, act_bits: int | None) -> ActRange | None:
    if act_bits is None:
        return None
    act_range = jnp.asarray(act_range, jnp.float32)
    if act_range.shape != (2,):
        raise ValueError(f"an activation range is [lo, hi], got shape {act_range.shape}")
    return ActRange(act_range)


class FakeQuantConv(nnx.Module):
    """QAT form of a conv: float kernel (a Param) fake-quantized per channel in every forward."""

    def __init__(self, spec: ConvSpec, kernel: jax.Array, bias: jax.Array | None, act_range: Any,
                 *, weight_bits: int, act_bits: int | None):
        self.spec = spec
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, jnp.float32))
        self.act_range = _range_variable(act_range, act_bits)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.act_range is not None:
            x = fake_quant_act(x, self.act_range[...], self.act_bits)
        y = self.spec.apply(x, fake_quant_weight(self.kernel[...], self.weight_bits))
        return y if self.bias is None else y + self.bias[...]


class Int8Conv(nnx.Module):
    """Deployed form of a conv: int8 per-channel weights, float32 bias, fake-quantized input.

    Built from the output of `quantize_weight` (see `quantize` and `convert_qat`).
    """

    def __init__(self, spec: ConvSpec, codes: jax.Array, scale: jax.Array, bias: jax.Array | None,
                 act_range: Any, *, weight_bits: int, act_bits: int | None):
        if codes.dtype != jnp.int8 or scale.shape != codes.shape[-1:]:
            raise ValueError(f"expected int8 codes and one scale per output channel, got {codes.dtype} "
                             f"{codes.shape} and scales {scale.shape}")
        self.spec = spec
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.kernel = QuantWeight(codes)
        self.scale = WeightScale(jnp.asarray(scale, jnp.float32))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, jnp.float32))
        self.act_range = _range_variable(act_range, act_bits)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.act_range is not None:
            x = fake_quant_act(x, self.act_range[...], self.act_bits)
        y = self.spec.apply(x, dequantize_weight(self.kernel[...], self.scale[...]))
        return y if self.bias is None else y + self.bias[...]


QUANT_CONVS = (FakeQuantConv, Int8Conv)


# ---------------------------------------------------------------------------------------------
# Module surgery
# ---------------------------------------------------------------------------------------------

def _name(path: Sequence[Any]) -> str:
    return "/".join(map(str, path))


def _child(node: Any, key: Any) -> Any:
    return node[key] if isinstance(node, (nnx.List, nnx.Dict)) else getattr(node, key)


def _set_child(node: Any, key: Any, value: Any) -> None:
    if isinstance(node, (nnx.List, nnx.Dict)):
        node[key] = value
    else:
        setattr(node, key, value)


def conv_layers(model: nnx.Module) -> dict[str, nnx.Module]:
    """{path name ("stages/0/1/expand/conv"): module} of every conv (float, QAT or int8) of `model`."""
    return {_name(path): m for path, m in nnx.iter_modules(model)
            if isinstance(m, (nnx.Conv, *QUANT_CONVS))}


def _check_deploy(model: nnx.Module) -> None:
    bns = [_name(p) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    if bns:
        raise ValueError(f"the model has BatchNorm layers ({bns[0]}, ...): quantize the fused deploy "
                         "model (asc_jax.reparam.fuse; training writes it to <workdir>/deploy)")
    if not conv_layers(model):
        raise ValueError(f"{type(model).__name__} has no conv layer to quantize")


def _map_convs(model: nnx.Module, fn: Callable[[str, nnx.Module], nnx.Module]) -> nnx.Module:
    """A copy of `model` with each conv replaced by fn(name, conv); `model` is left untouched."""
    graphdef, state = nnx.split(model)
    # Fresh buffers, not shared ones: a train step that donates the QAT model's arrays must not
    # delete the float model's.
    copy = nnx.merge(graphdef, jax.jit(lambda s: jax.tree.map(jnp.copy, s))(state))
    targets = [path for path, m in nnx.iter_modules(copy) if isinstance(m, (nnx.Conv, *QUANT_CONVS))]
    for path in targets:
        parent = copy
        for key in path[:-1]:
            parent = _child(parent, key)
        _set_child(parent, path[-1], fn(_name(path), _child(parent, path[-1])))
    return copy


@functools.partial(jax.jit, static_argnums=1)
def _quantize_kernels(kernels: dict[str, jax.Array], bits: int) -> dict[str, tuple[jax.Array, jax.Array]]:
    # One compiled call for all layers: eager per-layer ops would compile a small program each.
    return {name: quantize_weight(kernel, bits) for name, kernel in kernels.items()}


def _lookup(ranges: Mapping[str, Any] | None, name: str, act_bits: int | None) -> Any:
    if act_bits is None:
        return None
    if ranges is None or name not in ranges:
        raise ValueError(f"no calibrated activation range for conv {name!r} "
                         f"(have {sorted(ranges or {})}); run calibrate() on this model")
    return ranges[name]


def _bias(conv: nnx.Module) -> jax.Array | None:
    return None if conv.bias is None else conv.bias[...]


def _float_convs(model: nnx.Module) -> dict[str, nnx.Conv]:
    _check_deploy(model)
    convs = conv_layers(model)
    quantized = [name for name, conv in convs.items() if isinstance(conv, QUANT_CONVS)]
    if quantized:
        raise ValueError(f"conv {quantized[0]!r} is already quantized ({type(convs[quantized[0]]).__name__})")
    return convs


def quantize(model: nnx.Module, ranges: Mapping[str, Any] | None,
             cfg: QuantConfig = QuantConfig()) -> nnx.Module:
    """Int8 copy of a float deploy model: every conv becomes an `Int8Conv`.

    Args:
      model: a BN-free (fused) model.
      ranges: {conv name: [lo, hi]} from `calibrate` (unused when cfg.act_bits is None).
      cfg: bit widths.
    """
    convs = _float_convs(model)
    codes = _quantize_kernels({name: conv.kernel[...] for name, conv in convs.items()}, cfg.weight_bits)
    return _map_convs(model, lambda name, conv: Int8Conv(
        ConvSpec.of(conv), *codes[name], _bias(conv), _lookup(ranges, name, cfg.act_bits),
        weight_bits=cfg.weight_bits, act_bits=cfg.act_bits))


def prepare_qat(model: nnx.Module, ranges: Mapping[str, Any] | None,
                cfg: QuantConfig = QuantConfig()) -> nnx.Module:
    """QAT copy of a float deploy model: every conv becomes a `FakeQuantConv` (trainable kernel)."""
    _float_convs(model)
    return _map_convs(model, lambda name, conv: FakeQuantConv(
        ConvSpec.of(conv), conv.kernel[...], _bias(conv), _lookup(ranges, name, cfg.act_bits),
        weight_bits=cfg.weight_bits, act_bits=cfg.act_bits))


def convert_qat(model: nnx.Module) -> nnx.Module:
    """Int8 model from a QAT model, with the QAT model's bit widths and ranges."""
    convs = conv_layers(model)
    wrong = [name for name, conv in convs.items() if not isinstance(conv, FakeQuantConv)]
    if wrong or not convs:
        raise ValueError(f"conv {wrong[0] if wrong else None!r} is not a FakeQuantConv: convert_qat expects "
                         "the model returned by prepare_qat")
    bits = {conv.weight_bits for conv in convs.values()}
    if len(bits) != 1:
        raise ValueError(f"mixed weight bit widths {sorted(bits)}")
    codes = _quantize_kernels({name: conv.kernel[...] for name, conv in convs.items()}, bits.pop())
    return _map_convs(model, lambda name, conv: Int8Conv(
        conv.spec, *codes[name], _bias(conv), None if conv.act_range is None else conv.act_range[...],
        weight_bits=conv.weight_bits, act_bits=conv.act_bits))


def set_ranges(model: nnx.Module, ranges: Mapping[str, Any]) -> nnx.Module:
    """Overwrites the activation ranges of a QAT or int8 model in place (e.g. after finetuning)."""
    for name, conv in conv_layers(model).items():
        if isinstance(conv, QUANT_CONVS) and conv.act_range is not None:
            conv.act_range.value = jnp.asarray(_lookup(ranges, name, conv.act_bits), jnp.float32)
    return model


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

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
    _check_deploy(model)
    observed = _map_convs(model, lambda name, conv: _Observer(conv, cfg.calibration, cfg.percentile))
    graphdef, state = nnx.split(observed)

    @jax.jit
    def batch_ranges(state, x):
        m = nnx.merge(graphdef, state)
        m(x, train=False)
        return nnx.to_pure_dict(nnx.state(m, _CalibStat))

    per_batch, weights = [], []
    for start in range(0, len(mels), batch_size):
        chunk = mels[start:start + batch_size]
        per_batch.append({_name(p[:-1]): np.asarray(v) for p, v in flatten(batch_ranges(state, chunk)).items()})
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


# ---------------------------------------------------------------------------------------------
# Quantization-aware finetuning
# ---------------------------------------------------------------------------------------------

def finetune_qat(model: nnx.Module, ranges: Mapping[str, Any] | None, source: pipeline.ClipSource,
                 mel: MelConfig, cfg: QuantConfig = QuantConfig(), qat: QATConfig = QATConfig(), *,
                 seed: int = 0) -> tuple[nnx.Module, dict[str, Any]]:
    """Finetunes `prepare_qat(model, ranges, cfg)` on `source` with the production train step.

    The step (`steps.make_train_step`) computes the log-mel of `mel` on device, applies the
    augmentations of `qat.augment` (the waveform roll on the host, as in training) and minimises
    cross-entropy; only the kernels and biases are Params, so the activation ranges stay those
    given. `convert_qat` of the result is its int8 model.

    Args:
      model: float deploy model, left untouched.
      ranges: its conv-input ranges (`calibrate`; None with cfg.act_bits None).
      source: the training clips, decoded at mel.sample_rate.
      mel: the model's log-mel frontend.
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
    if source.sr != mel.sample_rate:
        raise ValueError(f"{source!r} decodes at {source.sr} Hz, the frontend expects {mel.sample_rate} Hz")
    steps_per_epoch = len(source) // qat.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(source)} training clips cannot fill a QAT batch of {qat.batch_size}")
    tx = OptimConfig(lr=qat.lr, epochs=qat.epochs, warmup_epochs=0, batch_size=qat.batch_size).build(steps_per_epoch)
    graphdef, state = create_train_state(prepare_qat(model, ranges, cfg), tx)
    roll = qat.augment.roll
    batches = iter(pipeline.train_dataset(source, batch_size=qat.batch_size, seed=seed, sr=source.sr,
                                          max_roll_ms=0.0 if roll is None else roll.max_shift_s * 1000.0))
    train_step = steps.make_train_step(graphdef, tx, mel, dataclasses.replace(qat.augment, roll=None),
                                       steps.classification_loss, jax.random.key(seed))
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


# ---------------------------------------------------------------------------------------------
# Memory report
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Parameter memory of a model quantized with this scheme (float, QAT or int8 input).

    Attributes:
      params: parameters in the DCASE count (conv weights + biases + other trainables).
      weight_params: conv weights, int8 in the quantized model.
      bias_params: conv biases (float32 here; int32 in integer runtimes).
      other_params: other trainable values kept in float32 (GRN gamma/beta).
      weight_scales: per-output-channel float32 weight scales (one per conv output channel).
      act_ranges: quantized activation tensors, each with a float32 [lo, hi] (-> scale, zero point).
    """

    params: int
    weight_params: int
    bias_params: int
    other_params: int
    weight_scales: int
    act_ranges: int

    @property
    def int8_bytes(self) -> int:
        """DCASE parameter memory at int8: every parameter at one byte."""
        return self.params

    @property
    def overhead_bytes(self) -> int:
        """Quantization parameters on top: float32 weight scales + [lo, hi] per activation."""
        return 4 * self.weight_scales + 8 * self.act_ranges

    @property
    def stored_bytes(self) -> int:
        """Bytes of the int8 model as this implementation stores it (float32 biases and GRN)."""
        return self.weight_params + 4 * (self.bias_params + self.other_params) + self.overhead_bytes

    @property
    def fits_dcase(self) -> bool:
        return self.int8_bytes <= DCASE_MAX_PARAM_BYTES

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "int8_bytes": self.int8_bytes, "overhead_bytes": self.overhead_bytes,
                "stored_bytes": self.stored_bytes, "dcase_limit_bytes": DCASE_MAX_PARAM_BYTES,
                "fits_dcase": self.fits_dcase}

    def table(self) -> str:
        return "\n".join([
            f"parameters            {self.params:>9,}  (weights {self.weight_params:,}, biases "
            f"{self.bias_params:,}, other {self.other_params:,})",
            f"DCASE memory at int8  {self.int8_bytes:>9,} B  (limit {DCASE_MAX_PARAM_BYTES:,} B: "
            f"{'fits' if self.fits_dcase else 'EXCEEDS'}, {DCASE_MAX_PARAM_BYTES - self.int8_bytes:,} B to spare)",
            f"+ quantization params {self.overhead_bytes:>9,} B  ({self.weight_scales:,} float32 weight scales, "
            f"{self.act_ranges} activation ranges)",
            f"stored int8 model     {self.stored_bytes:>9,} B  (int8 weights, float32 biases/GRN/scales)",
        ])


def memory_report(model: nnx.Module, cfg: QuantConfig = QuantConfig()) -> MemoryReport:
    """Memory of `model` in int8 form. For a float model, `cfg` says whether inputs get ranges."""
    convs = conv_layers(model)
    weights = biases = scales = ranges = 0
    for conv in convs.values():
        weights += int(np.prod(conv.kernel.shape))
        biases += 0 if conv.bias is None else int(np.prod(conv.bias.shape))
        scales += int(conv.kernel.shape[-1])
        has_range = conv.act_range is not None if isinstance(conv, QUANT_CONVS) else cfg.act_bits is not None
        ranges += int(has_range)
    all_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    conv_params = sum(int(np.prod(x.shape)) for c in convs.values()
                      for x in jax.tree.leaves(nnx.state(c, nnx.Param)))
    other = all_params - conv_params
    return MemoryReport(weights + biases + other, weights, biases, other, scales, ranges)


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------

# Everything a quantized model needs; RNG streams (if any) are rebuilt from a seed, as in
# asc_jax.checkpoint.
QUANT_STATE = (nnx.Param, nnx.BatchStat, QuantWeight, WeightScale, ActRange)


def _build_int8(spec: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    """The int8 model of a model.json written by `save_quantized` (placeholder ranges)."""
    deploy = checkpoint.build_float(spec, rngs)
    zeros = {name: jnp.zeros((2,)) for name in conv_layers(deploy)}
    return quantize(deploy, zeros, QuantConfig(**spec["quantization"]["config"]))


# `checkpoint.load_model` rebuilds a saved int8 model with this (it imports this module then).
checkpoint.MODEL_FORMS.register("int8")(checkpoint.ModelForm(QUANT_STATE, _build_int8))


def save_quantized(directory: str | Path, model: nnx.Module, spec: Mapping[str, Any], cfg: QuantConfig,
                   **extra: Any) -> Path:
    """Saves an int8 model with `checkpoint.save_model`; `checkpoint.load_model` reads it back.

    Args:
      directory: output folder (`weights/` + `model.json`).
      model: the result of `quantize` / `convert_qat`.
      spec: model.json of the float deploy model it came from ({"model", "mel", "class_names"...}).
      cfg: the QuantConfig it was made with.
      **extra: more JSON-able entries for model.json (evaluation results...).
    Returns:
      The absolute directory.
    """
    convs = conv_layers(model)
    if not convs or not all(isinstance(c, Int8Conv) for c in convs.values()):
        raise ValueError("save_quantized expects an int8 model (from quantize or convert_qat)")
    if not spec.get("model", {}).get("deploy"):
        raise ValueError("spec must describe the deploy model (model.json with model.deploy = true)")
    m = spec["model"]
    entries = {k: v for k, v in spec.items() if k not in ("model", "quantization")} | extra
    return checkpoint.save_model(directory, model, name=m["name"], options=m["options"], deploy=True, **entries,
                                 quantization={"form": "int8", "config": dataclasses.asdict(cfg),
                                               "memory": memory_report(model).as_dict()})


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def calibration_mels(data_root: str | Path, split: str, frontend: Frontend, *, n: int = 256, seed: int = 0,
                     batch_size: int = 64) -> np.ndarray:
    """Features (the model's frontend) of `n` clips drawn (seeded) from a split, for `calibrate`."""
    clips = tau.load_split(data_root, split)
    pick = np.sort(np.random.default_rng(seed).choice(len(clips), min(n, len(clips)), replace=False))
    source = pipeline.ClipSource([clips[i] for i in pick], data_root, sr=frontend.sample_rate, cache=False)
    return inference.predict(jax.jit(frontend.features), source, batch_size)


def _mel_of(frontend: Frontend, model_dir: str | Path) -> MelConfig:
    """The MelConfig of a "logmel" frontend: the one the train step computes (QAT needs it)."""
    if frontend.name != "logmel":
        raise ValueError(f"{model_dir} uses the {frontend.name!r} frontend; QAT finetuning runs the training "
                         "step, which computes the 'logmel' frontend only")
    return MelConfig(**frontend.options)


def _headline(result: Mapping[str, Any], form: str) -> dict[str, Any]:
    """The entries of `result` that the saved `form` ("int8" = PTQ, or "qat") model.json carries."""
    agreement = result["top1_agreement"] if form == "int8" else result["qat_finetune"]["top1_agreement"]
    return {"method": "ptq" if form == "int8" else "qat", "split": result["split"], "top1_agreement": agreement,
            **{f"float_{k}": result["float"][k] for k in ("accuracy", "macro_accuracy")},
            **{f"int8_{k}": result[form][k] for k in ("accuracy", "macro_accuracy")}}


def evaluate_quantized(model_dir: str | Path, data_root: str | Path, split: str = "test", *,
                       calib_split: str = "100", n_calib: int = 256, cfg: QuantConfig = QuantConfig(),
                       batch_size: int = 64, seed: int = 0, out: str | Path | None = None,
                       qat: QATConfig | None = None, qat_out: str | Path | None = None) -> dict[str, Any]:
    """Quantizes a saved deploy model (PTQ, and optionally QAT) and measures accuracy on a split.

    Args:
      model_dir: a saved float deploy model (e.g. <workdir>/deploy).
      data_root: TAU-layout dataset root.
      split: evaluation split ("test" or a training split name).
      calib_split: split the calibration clips are drawn from (keep it disjoint from `split`).
      n_calib: calibration clips.
      cfg: quantization settings.
      batch_size: clips per forward pass.
      seed: calibration draw, and QAT's shuffling and augmentations.
      out: if set, the PTQ int8 model is saved there (`save_quantized`) with `quantization.json`.
      qat: if set, the float model is also finetuned with fake quantization (`finetune_qat`,
        from the PTQ ranges, on qat.train_split) and converted to int8.
      qat_out: if set (with `qat`), the QAT int8 model is saved there with `quantization.json`.
    Returns:
      {"float", "int8" (PTQ): compute_metrics dicts, "top1_agreement", "max_abs_logit_diff" (PTQ
       vs float), "memory": MemoryReport.as_dict(), "config", "split", "calib_split", "n_calib"};
      with `qat` also "qat" (compute_metrics of the QAT int8 model) and "qat_finetune": {"config",
      "n_train", "steps", "loss", "accuracy" (per-epoch training means), "top1_agreement",
      "max_abs_logit_diff" (vs float), "max_abs_diff_to_fake_quant" (int8 vs the finetuned
      fake-quant model: the conversion's error)}.
    """
    saved = inference.load(model_dir, form="float")
    model, spec, frontend = saved.model, saved.spec, saved.frontend
    if not spec["model"].get("deploy"):
        raise ValueError(f"{model_dir} is not a deploy model; quantize the fused <workdir>/deploy model")
    mel = _mel_of(frontend, model_dir) if qat is not None else None  # fail before any work
    class_names = spec.get("class_names", list(tau.CLASSES))
    mels = calibration_mels(data_root, calib_split, frontend, n=n_calib, seed=seed, batch_size=batch_size)
    ranges = calibrate(model, mels, cfg, batch_size=batch_size) if cfg.act_bits is not None else None
    models = {"int8": quantize(model, ranges, cfg)}
    fns = {"float": saved.fn, "int8": inference.model_fn(models["int8"], frontend.features)}
    if qat is not None:
        train = pipeline.load_split_source(data_root, qat.train_split, sr=frontend.sample_rate)
        fake_quant, history = finetune_qat(model, ranges, train.source, mel, cfg, qat, seed=seed)
        models["qat"] = convert_qat(fake_quant)
        fns["qat"] = inference.model_fn(models["qat"], frontend.features)
        fns["fake_quant"] = inference.model_fn(fake_quant, frontend.features)

    clips = tau.load_split(data_root, split)
    source = pipeline.ClipSource(clips, data_root, sr=frontend.sample_rate, cache=False)
    logits = inference.predict(lambda audio: {form: fn(audio) for form, fn in fns.items()}, source, batch_size)
    labels, devices = np.array([c.label for c in clips]), [c.device for c in clips]

    def agreement(form: str) -> dict[str, float]:
        return {"top1_agreement": float(np.mean(logits["float"].argmax(-1) == logits[form].argmax(-1))),
                "max_abs_logit_diff": float(np.abs(logits["float"] - logits[form]).max())}

    result = {
        "split": str(split), "calib_split": str(calib_split), "n_calib": int(len(mels)),
        "config": dataclasses.asdict(cfg),
        "float": evaluate.compute_metrics(logits["float"], labels, devices, class_names),
        "int8": evaluate.compute_metrics(logits["int8"], labels, devices, class_names),
        **agreement("int8"),
        "memory": memory_report(models["int8"]).as_dict(),
    }
    if qat is not None:
        result["qat"] = evaluate.compute_metrics(logits["qat"], labels, devices, class_names)
        result["qat_finetune"] = {
            "config": dataclasses.asdict(qat), "n_train": len(train.source), **history, **agreement("qat"),
            "max_abs_diff_to_fake_quant": float(np.abs(logits["qat"] - logits["fake_quant"]).max())}
    for form, directory in (("int8", out), ("qat", qat_out if qat is not None else None)):
        if directory is not None:
            save_quantized(directory, models[form], spec, cfg, quant_eval=_headline(result, form))
            (Path(directory) / "quantization.json").write_text(json.dumps(result, indent=2))
    return result


def summary(result: Mapping[str, Any]) -> str:
    """Text table of an `evaluate_quantized` result."""
    mem = MemoryReport(**{f.name: result["memory"][f.name] for f in dataclasses.fields(MemoryReport)})
    lines = [mem.table(), "",
             f"split {result['split']} ({result['float']['n']} clips), calibrated on {result['n_calib']} "
             f"clips of split {result['calib_split']}"]
    qat = result.get("qat_finetune")
    if qat is not None:
        lines.append(f"QAT: {qat['steps']} steps ({qat['config']['epochs']} epochs of split "
                     f"{qat['config']['train_split']}, {qat['n_train']} clips, lr {qat['config']['lr']:g}), "
                     f"training loss {qat['loss'][0]:.4f} -> {qat['loss'][-1]:.4f}")
    lines.append(f"{'':10}{'accuracy':>10}{'macro':>10}")
    forms = [("float", "float"), ("int8 PTQ", "int8")] + ([("int8 QAT", "qat")] if qat is not None else [])
    for label, form in forms:
        lines.append(f"{label:10}{result[form]['accuracy']:>10.4f}{result[form]['macro_accuracy']:>10.4f}")
    lines.append(f"top-1 agreement {result['top1_agreement']:.4f}, "
                 f"max |logit diff| {result['max_abs_logit_diff']:.4f} (PTQ vs float)")
    if qat is not None:
        lines.append(f"top-1 agreement {qat['top1_agreement']:.4f}, max |logit diff| "
                     f"{qat['max_abs_logit_diff']:.4f} (QAT vs float); QAT int8 vs fake-quant max |logit diff| "
                     f"{qat['max_abs_diff_to_fake_quant']:.2g}")
    return "\n".join(lines)


def _bits(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Int8 post-training quantization (and, with --qat, "
                                                 "quantization-aware finetuning) of a saved deploy model, with "
                                                 "float vs int8 accuracy and the DCASE memory report.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="saved deploy model dir (<workdir>/deploy)")
    parser.add_argument("--data-root", required=True, type=Path, help="TAU-layout dataset root")
    parser.add_argument("--split", default="test", help="evaluation split (default: test)")
    parser.add_argument("--calib-split", default="100",
                        help="split the calibration clips come from (default: 100)")
    parser.add_argument("--n-calib", type=int, default=256, help="calibration clips (default: 256)")
    parser.add_argument("--weight-bits", type=int, default=8)
    parser.add_argument("--act-bits", type=_bits, default=8, help="bits of conv inputs, or 'none' (weight-only)")
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="minmax")
    parser.add_argument("--percentile", type=float, default=99.99)
    parser.add_argument("--batch-size", type=int, default=64, help="clips per evaluation forward pass")
    parser.add_argument("--seed", type=int, default=0, help="calibration draw, QAT shuffling and augmentation")
    parser.add_argument("--out", type=Path, default=None,
                        help="save the PTQ int8 model and quantization.json (the report) here")
    qat_defaults = QATConfig()
    qat = parser.add_argument_group("quantization-aware finetuning (QAT)")
    qat.add_argument("--qat", action="store_true",
                     help="also finetune the float model with fake quantization (from the PTQ ranges) on "
                          "--train-split with the training step and augmentations, then convert it to int8")
    qat.add_argument("--qat-epochs", type=int, default=qat_defaults.epochs,
                     help=f"epochs over the training split (default: {qat_defaults.epochs})")
    qat.add_argument("--qat-lr", type=float, default=qat_defaults.lr,
                     help=f"peak Adam learning rate, cosine-decayed to 0 (default: {qat_defaults.lr:g})")
    qat.add_argument("--qat-batch-size", type=int, default=qat_defaults.batch_size,
                     help=f"clips per QAT step (default: {qat_defaults.batch_size})")
    qat.add_argument("--train-split", default=qat_defaults.train_split,
                     help=f"split QAT finetunes on (default: {qat_defaults.train_split})")
    qat.add_argument("--qat-augment", action=argparse.BooleanOptionalAction, default=True,
                     help="finetune with training's augmentations (waveform roll, frequency mask, "
                          "Freq-MixStyle; default) or without")
    qat.add_argument("--qat-out", type=Path, default=None,
                     help="save the QAT int8 model and quantization.json here (default: <out>_qat)")
    args = parser.parse_args(None if argv is None else list(argv))
    cfg = QuantConfig(args.weight_bits, args.act_bits, args.calibration, args.percentile)
    qat_cfg = qat_out = None
    if args.qat:
        augment = AugmentConfig() if args.qat_augment else AugmentConfig(roll=None, freq_mask=None, mixstyle=None)
        qat_cfg = QATConfig(args.qat_epochs, args.qat_lr, args.qat_batch_size, str(args.train_split), augment)
        qat_out = args.qat_out or (None if args.out is None else args.out.with_name(args.out.name + "_qat"))
    elif args.qat_out is not None:
        parser.error("--qat-out needs --qat")
    result = evaluate_quantized(args.checkpoint, args.data_root, args.split, calib_split=args.calib_split,
                                n_calib=args.n_calib, cfg=cfg, batch_size=args.batch_size, seed=args.seed,
                                out=args.out, qat=qat_cfg, qat_out=qat_out)
    print(summary(result))
    if args.out is not None:
        print(f"PTQ int8 model saved to {args.out}")
    if qat_out is not None:
        print(f"QAT int8 model saved to {qat_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
