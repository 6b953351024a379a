"""Building blocks shared by the CNNs of the zoo.

Layers are written so that the *training* form (conv without bias + BatchNorm) and the *deploy*
form (one conv with bias) have predictable parameter trees: `asc_jax.reparam` folds the former
into the latter as a pure function on those trees, and `asc_jax.prune` slices them.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch BatchNorm2d defaults (momentum 0.1 there is 1 - 0.9 here; eps 1e-5), so that converted
# weights and the paper's recipe behave the same.
BN_MOMENTUM = 0.9
BN_EPS = 1e-5

# kaiming_normal_(mode="fan_out") as in the CPJKU `initialize_weights`.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(kernel: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch-style symmetric padding (k - 1) // 2, which keeps odd kernels centred."""
    return tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor` (torchvision's `_make_divisible`, used by the
    CPJKU models; reproducing it exactly is what makes the pinned parameter counts match)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBN(nnx.Module):
    """Conv2d -> BatchNorm -> optional ReLU; with `deploy=True` a single Conv2d with bias.

    Param tree: {"conv": {"kernel"}, "bn": {"scale", "bias", "mean", "var"}} in training form,
    {"conv": {"kernel", "bias"}} in deploy form.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        *,
        groups: int = 1,
        act: bool = True,
        deploy: bool = False,
        rngs: nnx.Rngs,
    ):
        kernel = _pair(kernel_size)
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            kernel,
            strides=_pair(stride),
            padding=same_padding(kernel),
            feature_group_count=groups,
            use_bias=deploy,
            kernel_init=conv_init,
            rngs=rngs,
        )
        self.bn = None if deploy else nnx.BatchNorm(
            out_channels, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, use_running_average=not train)
        return jax.nn.relu(x) if self.act else x


class GRN(nnx.Module):
    """Global Response Normalization (ConvNeXt V2) with scalar gamma/beta, as in CP-Mobile.

    gamma and beta start at zero, so a fresh GRN is the identity.
    """

    def __init__(self, eps: float = 1e-6):
        self.gamma = nnx.Param(jnp.zeros((1,)))
        self.beta = nnx.Param(jnp.zeros((1,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        gx = jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True))  # L2 over (F, T)
        nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + self.eps)
        return self.gamma[...] * (x * nx) + self.beta[...] + x


def avg_pool_3x3(x: jax.Array, stride: tuple[int, int]) -> jax.Array:
    """nn.AvgPool2d(3, stride, padding=1) with PyTorch's default count_include_pad=True."""
    return nnx.avg_pool(x, (3, 3), strides=stride, padding=((1, 1), (1, 1)), count_include_pad=True)
