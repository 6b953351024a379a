"""The quantized conv layers and their Variables.

`FakeQuantConv` is the QAT form of a conv (float kernel, fake-quantized in the forward pass),
`Int8Conv` the deployed form (int8 codes + per-channel scales); both compute as the replaced
layer lowers (`ConvSpec`) and fake-quantize their input on a calibrated `ActRange`.
Both derive from `asc_jax.complexity.QuantizedConv`, by which the memory count knows them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding

from asc_jax.complexity import QuantizedConv
from asc_jax.models.layers import DepthwiseConv, PointwiseConv, depthwise_taps
from asc_jax.quantize.numerics import dequantize_weight, fake_quant_act, fake_quant_weight


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


class FakeQuantConv(QuantizedConv):
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


class Int8Conv(QuantizedConv):
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
