"""Quantization numerics: per-channel int8 weight codes, affine activation codes, and their
fake-quantized (quantize-dequantize) forms with straight-through gradients (`jax.custom_vjp`)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


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
