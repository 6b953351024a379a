"""Building blocks shared by the CNNs of the zoo.

Layers are written so that the *training* form (conv without bias + BatchNorm) and the *deploy*
form (one conv with bias) have predictable parameter trees: `asc_jax.reparam` folds the former
into the latter as a pure function on those trees, and `asc_jax.prune` slices them.

How depthwise and 1x1 convs are computed is a model option, `conv_lowering` (see
`CONV_LOWERINGS`), never the backend seen while tracing: the graph that complexity counting,
pruning and quantization trace is then the same on every machine, and the saved model.json says
which lowering a model ran with. `default_lowering` picks the fast one for a new run.
"""
from __future__ import annotations

from typing import Any, Sequence

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


# conv_lowering values. Both compute the same convolutions (up to float summation order) with
# the same parameters, so a model may be saved with one and loaded with the other.
#   "taps": DepthwiseConv as a sum of shifted slices (`depthwise_taps`), PointwiseConv as a matmul.
#           XLA:CPU differentiates a grouped convolution through a generic loop ~10x slower than
#           these elementwise ops, and a 1x1 convolution ~3x slower than the dot_general
#           (benchmarks/train_step.py), which makes CPU training (CI, the demo) practical.
#   "xla":  both as `lax.conv_general_dilated` (plain nnx.Conv), which GPUs and TPUs run on
#           their convolution kernels.
CONV_LOWERINGS = ("taps", "xla")


def default_lowering() -> str:
    """The conv_lowering a new run should record: "taps" on CPU, "xla" on an accelerator.

    Called once per run by the code that fixes the model options (the training loop, through
    `asc_jax.models.with_default_lowering`), never by a model: models take the option explicitly.
    """
    return "taps" if jax.default_backend() == "cpu" else "xla"


def check_lowering(lowering: str) -> str:
    if lowering not in CONV_LOWERINGS:
        raise ValueError(f"unknown conv_lowering {lowering!r}; known: {CONV_LOWERINGS}")
    return lowering


def depthwise_taps(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """Depthwise conv (odd kernel, "same" padding) as a sum of strided, shifted slices.

    Numerically the same convolution as `lax.conv_general_dilated(..., feature_group_count=C)`
    (only the summation order differs); the "taps" conv_lowering, fast to differentiate on CPU.
    """
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out_h = (x.shape[1] + 2 * ph - kh) // strides[0] + 1
    out_w = (x.shape[2] + 2 * pw - kw) // strides[1] + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.slice(
                padded, (0, i, j, 0),
                (x.shape[0], i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1, x.shape[3]),
                (1, strides[0], strides[1], 1))
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv(nnx.Conv):
    """nnx.Conv with feature_group_count == channels, computed as `lowering` says.

    Same parameters and tree as nnx.Conv (so fusion, pruning, conversion and MAC counting treat
    it as a conv); only the lowering differs: shifted slices ("taps") or XLA's grouped
    convolution ("xla"), see `CONV_LOWERINGS`.
    """

    def __init__(self, channels: int, kernel: tuple[int, int], strides: tuple[int, int], *,
                 use_bias: bool, lowering: str, rngs: nnx.Rngs):
        super().__init__(channels, channels, kernel, strides=strides, padding=same_padding(kernel),
                         feature_group_count=channels, use_bias=use_bias, kernel_init=conv_init,
                         rngs=rngs)
        self.lowering = check_lowering(lowering)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.lowering == "xla":
            return super().__call__(x)
        y = depthwise_taps(x, self.kernel[...], _pair(self.strides))
        return y + self.bias[...] if self.bias is not None else y


class PointwiseConv(nnx.Conv):
    """1x1, stride-1 nnx.Conv, computed as a matmul over the channel axis ("taps") or as XLA's
    convolution ("xla"), see `CONV_LOWERINGS`. Same parameters as nnx.Conv."""

    def __init__(self, in_channels: int, out_channels: int, *, use_bias: bool, lowering: str,
                 rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, (1, 1), use_bias=use_bias, kernel_init=conv_init,
                         rngs=rngs)
        self.lowering = check_lowering(lowering)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.lowering == "xla":
            return super().__call__(x)
        y = jnp.einsum("...c,co->...o", x, self.kernel[0, 0])
        return y + self.bias[...] if self.bias is not None else y


class ConvBN(nnx.Module):
    """Conv2d -> BatchNorm -> optional ReLU; with `deploy=True` a single Conv2d with bias.

    Param tree: {"conv": {"kernel"}, "bn": {"scale", "bias", "mean", "var"}} in training form,
    {"conv": {"kernel", "bias"}} in deploy form. `lowering` (the model's conv_lowering) applies
    to depthwise and 1x1 stride-1 convs; other convs are always XLA convolutions.
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
        lowering: str,
        rngs: nnx.Rngs,
    ):
        kernel = _pair(kernel_size)
        check_lowering(lowering)  # also where this conv does not use it: a typo fails everywhere
        if groups == in_channels == out_channels and groups > 1:
            self.conv = DepthwiseConv(out_channels, kernel, _pair(stride), use_bias=deploy,
                                      lowering=lowering, rngs=rngs)
        elif kernel == (1, 1) and _pair(stride) == (1, 1) and groups == 1:
            self.conv = PointwiseConv(in_channels, out_channels, use_bias=deploy, lowering=lowering,
                                      rngs=rngs)
        else:
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


def run_stages(h: jax.Array, stages: Any, *, train: bool) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Runs stages of blocks in order: (the last output, every stage's output for aux["stages"]).

    Args:
      h: the stages' input.
      stages: an iterable of stages, each an iterable of blocks `block(h, train=...)`.
    """
    outputs = []
    for stage in stages:
        for block in stage:
            h = block(h, train=train)
        outputs.append(h)
    return h, tuple(outputs)
