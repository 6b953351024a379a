"""Building blocks shared by the CNNs of the zoo.

Layers are written so that the *training* form (conv without bias + BatchNorm) and the *deploy*
form (one conv with bias) have predictable parameter trees: `asc_jax.reparam` folds the former
into the latter as a pure function on those trees, and `asc_jax.prune` slices them.

How depthwise, 1x1 and other ungrouped convs are computed is a model option, `conv_lowering` (see
`CONV_LOWERINGS`), never the backend seen while tracing: the graph that complexity counting,
pruning and quantization trace is then the same on every machine, and the saved model.json says
which lowering a model ran with. `default_lowering` picks the fast one for a new run.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import normalization as flax_norm

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
#   "taps": DepthwiseConv as a sum of shifted slices (`depthwise_taps`), PointwiseConv as a matmul
#           (`pointwise_matmul`), each with a custom backward pass over batch chunks; DenseConv
#           (other groups == 1 convs, e.g. the stem) as XLA's convolution with an im2col kernel
#           gradient. XLA:CPU differentiates a grouped convolution through a generic loop ~10x
#           slower than these elementwise ops, a 1x1 convolution ~3x slower than the dot_general
#           (benchmarks/train_step.py), and the plain autodiff of the taps and matmul forms
#           spends most of its time copying whole-batch intermediates (benchmarks/compare_torch.py),
#           which makes CPU training (CI, the demo) practical.
#   "xla":  all as `lax.conv_general_dilated` (plain nnx.Conv) and its autodiff, which GPUs and
#           TPUs run on their convolution kernels.
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


# Elements per operand in one chunk of the chunked backward passes below (256 KiB of float32):
# small enough for the per-chunk temporaries to stay in the CPU caches.
_CHUNK_ELEMENTS = 1 << 16


def _accumulator(dtype) -> jnp.dtype:
    """The dtype kernel-gradient sums run in: at least float32 (a bfloat16 sum over a batch of
    chunk partials loses the gradient's low bits; the result is cast back to the kernel's)."""
    return jnp.promote_types(dtype, jnp.float32)


def _chunked_sum(fn: Callable, operands: Sequence[jax.Array], acc: jax.Array, per_row: int) -> jax.Array:
    """acc + the sum of `fn(*chunks)` over equal slices of the operands' leading axis, each the
    largest that holds at most _CHUNK_ELEMENTS (`per_row` elements a row), in a loop."""
    rows = operands[0].shape[0]
    n = next(d for d in range(max(1, min(rows, _CHUNK_ELEMENTS // max(per_row, 1))), 0, -1) if rows % d == 0)

    def body(i, total):
        return total + fn(*(jax.lax.dynamic_slice_in_dim(op, i * n, n) for op in operands))

    return jax.lax.fori_loop(0, rows // n, body, acc)


def _taps(padded: jax.Array, kernel_hw: tuple[int, int], out_hw: tuple[int, int],
          strides: tuple[int, int]):
    """(i, j, the (out_h, out_w) strided window of `padded` at offset (i, j)) for every tap."""
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            yield i, j, jax.lax.slice(
                padded, (0, i, j, 0),
                (padded.shape[0], i + (out_hw[0] - 1) * strides[0] + 1, j + (out_hw[1] - 1) * strides[1] + 1,
                 padded.shape[3]),
                (1, strides[0], strides[1], 1))


def _depthwise_geometry(shape: Sequence[int], kernel_hw: tuple[int, int], strides: tuple[int, int]):
    (kh, kw), (sh, sw) = kernel_hw, strides
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    return (ph, pw), ((shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)


def _branch_taps(x: jax.Array, kernel_hws: Sequence[tuple[int, int]], strides: tuple[int, int]):
    """(tap window, [(branch, i, j), ...]) for every tap of the union of the branches' kernels.

    The branches are odd kernels centred in their union (3x3 for Rep-Mobile's 3x3, 1x1, 3x1,
    1x3), all with "same" padding and the same strides, so each reads a subset of the union's
    taps: tap (i, j) of the union is tap (i, j) - offset of every branch whose window holds it.
    """
    full = (max(k[0] for k in kernel_hws), max(k[1] for k in kernel_hws))
    (ph, pw), out_hw = _depthwise_geometry(x.shape, full, strides)
    padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    offsets = [((full[0] - kh) // 2, (full[1] - kw) // 2) for kh, kw in kernel_hws]
    for i, j, tap in _taps(padded, full, out_hw, strides):
        users = [(b, i - oi, j - oj) for b, ((kh, kw), (oi, oj)) in enumerate(zip(kernel_hws, offsets))
                 if 0 <= i - oi < kh and 0 <= j - oj < kw]
        yield tap, users


def _depthwise_forward(x: jax.Array, kernels: Sequence[jax.Array], strides: tuple[int, int]) -> tuple[jax.Array, ...]:
    out: list[jax.Array | None] = [None] * len(kernels)
    for tap, users in _branch_taps(x, [k.shape[:2] for k in kernels], strides):
        for b, i, j in users:
            term = tap * kernels[b][i, j, 0]
            out[b] = term if out[b] is None else out[b] + term
    return tuple(out)


def _depthwise_kernel_grad(x: jax.Array, dys: Sequence[jax.Array], kernel_hws: Sequence[tuple[int, int]],
                           strides: tuple[int, int]) -> jax.Array:
    """(sum of kh * kw over the branches, C): tap (i, j) of branch b's gradient is
    sum(x_pad[window (i, j)] * dy_b), rows in branch order, each branch's taps row-major."""
    grads = {}
    for tap, users in _branch_taps(x, kernel_hws, strides):
        for b, i, j in users:
            grads[b, i, j] = jnp.sum(tap * dys[b], axis=(0, 1, 2), dtype=_accumulator(x.dtype))
    return jnp.stack([grads[b, i, j] for b, (kh, kw) in enumerate(kernel_hws)
                      for i in range(kh) for j in range(kw)])


def _depthwise_input_grad(dy: jax.Array, kernel: jax.Array, in_hw: tuple[int, int],
                          strides: tuple[int, int]) -> jax.Array:
    """The stride-1 correlation of dy, dilated by the strides and padded, with the flipped kernel."""
    kernel_hw = kh, kw = kernel.shape[:2]
    (ph, pw), out_hw = _depthwise_geometry((0, *in_hw), kernel_hw, strides)
    low = (kh - 1 - ph, kw - 1 - pw)
    high = tuple(size + k - 1 - lo - ((out - 1) * s + 1)
                 for size, k, lo, out, s in zip(in_hw, kernel_hw, low, out_hw, strides))
    dy_pad = jax.lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0), (low[0], high[0], strides[0] - 1),
                                                        (low[1], high[1], strides[1] - 1), (0, 0, 0)))
    dx = None
    for i, j, tap in _taps(dy_pad, kernel_hw, in_hw, (1, 1)):
        term = tap * kernel[kh - 1 - i, kw - 1 - j, 0]
        dx = term if dx is None else dx + term
    return dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_taps(x: jax.Array, kernels: tuple[jax.Array, ...], strides: tuple[int, int]) -> tuple[jax.Array, ...]:
    return _depthwise_forward(x, kernels, strides)


def _depthwise_taps_fwd(x, kernels, strides):
    return _depthwise_forward(x, kernels, strides), (x, kernels)


def _depthwise_taps_bwd(strides, residuals, dys):
    x, kernels = residuals
    kernel_hws = [k.shape[:2] for k in kernels]
    channels = x.shape[-1]
    # The input gradient: every branch's taps of its dy in one expression, which XLA fuses into
    # a loop over the batch; the kernel gradients' reductions would need every tap
    # materialised, so they run chunk by chunk, each chunk's taps of x shared by all branches.
    dx = sum(_depthwise_input_grad(dy, k, x.shape[1:3], strides) for dy, k in zip(dys, kernels))
    dk = _chunked_sum(lambda xc, *dyc: _depthwise_kernel_grad(xc, dyc, kernel_hws, strides), (x, *dys),
                      jnp.zeros((sum(kh * kw for kh, kw in kernel_hws), channels), _accumulator(kernels[0].dtype)),
                      max(x[0].size, dys[0][0].size))
    rows = list(itertools.accumulate((kh * kw for kh, kw in kernel_hws), initial=0))
    return dx.astype(x.dtype), tuple(dk[a:b].reshape(k.shape).astype(k.dtype)
                                     for a, b, k in zip(rows[:-1], rows[1:], kernels))


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


def depthwise_taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """Depthwise conv (odd kernel, "same" padding) as a sum of strided, shifted slices.

    Numerically the same convolution as `lax.conv_general_dilated(..., feature_group_count=C)`
    (only the summation order differs); the "taps" conv_lowering, fast to differentiate on CPU.
    The forward pass is one fused loop. The backward pass is a custom VJP: differentiated
    directly, XLA:CPU materialised every shifted tap of the whole batch (9 full-size copies per
    3x3 layer, recomputed from the previous layer) for the kernel-gradient reductions, over a
    quarter of a CP-Mobile train step. Here the input gradient is one fused loop and the kernel
    gradient is summed over batch chunks of ~256 KiB, whose taps stay in cache (CP-Mobile
    forward + backward at batch 128: 1.5x faster, measured interleaved in one process).
    """
    return _depthwise_taps(x, (kernel,), (int(strides[0]), int(strides[1])))[0]


def depthwise_branch_taps(x: jax.Array, kernels: Sequence[jax.Array], strides: Sequence[int]) -> tuple[jax.Array, ...]:
    """`depthwise_taps(x, k, strides)` for each of several kernels over the same input, in one op.

    Rep-Mobile's training-time branches (3x3, 1x1, 3x1, 1x3 depthwise convs of one input): each
    shifted window of x is sliced once for all branches, the branches' input gradients and their
    sum are one expression (which XLA fuses) instead of four ops' outputs added afterwards, and
    the kernel gradients share each batch chunk's taps. The same results as separate
    `depthwise_taps` calls up to summation order (test); the Rep-Mobile train step at batch 128
    2993 -> 2753 ms (median of 4, interleaved).
    """
    return _depthwise_taps(x, tuple(kernels), (int(strides[0]), int(strides[1])))


@jax.custom_vjp
def pointwise_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x @ kernel` over the channel axis of (..., C_in) activations, a 1x1 conv ("taps").

    Its kernel gradient x^T dy contracts over the leading (batch x space) axis, which XLA:CPU
    computes from a transposed copy of the whole batch; the custom VJP sums it over chunks of
    ~256 KiB instead (CP-Mobile forward + backward at batch 128: a further 1.3x, measured
    interleaved in one process).
    """
    return jnp.einsum("...c,co->...o", x, kernel)


def _pointwise_matmul_fwd(x, kernel):
    return jnp.einsum("...c,co->...o", x, kernel), (x, kernel)


def _pointwise_matmul_bwd(residuals, dy):
    x, kernel = residuals
    dx = jnp.einsum("...o,co->...c", dy, kernel)
    acc = _accumulator(kernel.dtype)
    dk = _chunked_sum(lambda xc, dyc: jnp.einsum("pc,po->co", xc, dyc, preferred_element_type=acc),
                      (x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])),
                      jnp.zeros(kernel.shape, acc), max(x.shape[-1], dy.shape[-1]))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


pointwise_matmul.defvjp(_pointwise_matmul_fwd, _pointwise_matmul_bwd)


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _im2col(x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], padding,
            out_hw: tuple[int, int]) -> jax.Array:
    """(B, out_h, out_w, kh * kw * C) patches, ordered as an HWIO kernel's leading axes."""
    padded = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    return jnp.concatenate([tap for _, _, tap in _taps(padded, kernel_hw, out_hw, strides)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding) -> jax.Array:
    return _xla_conv(x, kernel, strides, padding)


def _dense_conv_fwd(x, kernel, strides, padding):
    return _xla_conv(x, kernel, strides, padding), (x, kernel)


def _dense_conv_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    out_hw = dy.shape[1:3]

    def part(xc, dyc):
        return jnp.einsum("bhwk,bhwo->ko", _im2col(xc, (kh, kw), strides, padding, out_hw), dyc,
                          preferred_element_type=acc)

    acc = _accumulator(kernel.dtype)
    dk = _chunked_sum(part, (x, dy), jnp.zeros((kh * kw * cin, cout), acc),
                      max(out_hw[0] * out_hw[1] * kh * kw * cin, dy[0].size))
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding), x)
    return input_vjp(dy)[0], dk.reshape(kernel.shape).astype(kernel.dtype)


_dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


class DenseConv(nnx.Conv):
    """A groups == 1 nnx.Conv (any kernel and stride, e.g. a stem conv), computed by XLA's
    convolution either way; with lowering "taps" its kernel gradient is an im2col matmul summed
    over batch chunks (a custom VJP), see `CONV_LOWERINGS`. Same parameters as nnx.Conv.

    XLA:CPU's kernel gradient of a strided conv with few input channels (Rep-Mobile's stem:
    1 -> 8 -> 32 channels, 3x3, stride 2) was the largest single op of the train step; the im2col
    form halves the stem's backward pass (measured at batch 128) and was faster for a 64 -> 64
    3x3 conv too.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], strides: tuple[int, int],
                 *, use_bias: bool, lowering: str, rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, kernel, strides=strides, padding=same_padding(kernel),
                         use_bias=use_bias, kernel_init=conv_init, rngs=rngs)
        self.lowering = check_lowering(lowering)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.lowering == "xla":
            return super().__call__(x)
        y = _dense_conv(x, self.kernel[...], _pair(self.strides), tuple(tuple(p) for p in self.padding))
        return y + self.bias[...] if self.bias is not None else y


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
        y = pointwise_matmul(x, self.kernel[0, 0])
        return y + self.bias[...] if self.bias is not None else y


# The flax functions `BatchNorm` computes with (private in flax; the pinned flax has them).
FLAX_NORM_INTERNALS = all(hasattr(flax_norm, f) for f in ("_canonicalize_axes", "_compute_stats", "_normalize"))


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm with the same parameters, statistics and results, traced ~30 ms faster per
    training-mode call at a train step's size.

    flax writes the running statistics as `self.mean[...] = new`, whose full-replace check reads
    `getattr(tracer, "sharding", None)`; on a tracer that raises an AttributeError whose message
    walks every equation traced so far (`find_progenitors`), quadratic in the trace. In the
    Rep-Mobile train step the 39 BatchNorms spent 2.4 s of its 8.8 s trace there. Here the
    training-mode call computes what flax's does, with flax's own statistics and normalisation
    functions, and stores the statistics with `set_value` (a plain replace; gradient-stopped and
    in their stored dtype, as flax's update); with an `axis_name` the statistics are averaged
    over that axis's devices as flax's are. Eval mode, masks and axis_index_groups are flax's
    unchanged, and so is every call under a flax without those (private) functions.
    """

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        train = use_running_average is False or (use_running_average is None and self.use_running_average is False)
        if not train or mask is not None or self.axis_index_groups is not None or not FLAX_NORM_INTERNALS:
            return super().__call__(x, use_running_average, mask=mask)
        feature_axes = flax_norm._canonicalize_axes(x.ndim, self.axis)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        # As flax: the running statistics take part in the dtype promotion of x, scale and bias,
        # but are updated from their stored (float32) values.
        x, _, _, scale, bias = self.promote_dtype((x, self.mean[...], self.var[...], scale, bias),
                                                  dtype=self.dtype)
        # axis_name (the data-parallel shard_map step): statistics averaged over its devices.
        mean, var = flax_norm._compute_stats(x, reduction_axes, dtype=self.dtype, axis_name=self.axis_name,
                                             use_fast_variance=self.use_fast_variance)
        for stat, batch_value in ((self.mean, mean), (self.var, var)):
            new = self.momentum * stat[...] + (1 - self.momentum) * batch_value
            stat.set_value(jax.lax.stop_gradient(new).astype(stat[...].dtype))
        return flax_norm._normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype,
                                    self.epsilon)


class ConvBN(nnx.Module):
    """Conv2d -> BatchNorm -> optional ReLU; with `deploy=True` a single Conv2d with bias.

    Param tree: {"conv": {"kernel"}, "bn": {"scale", "bias", "mean", "var"}} in training form,
    {"conv": {"kernel", "bias"}} in deploy form. `lowering` (the model's conv_lowering) applies
    to depthwise, 1x1 stride-1 and other groups == 1 convs (`DenseConv`); grouped convs are
    always XLA convolutions.
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
        elif groups == 1:
            self.conv = DenseConv(in_channels, out_channels, kernel, _pair(stride), use_bias=deploy,
                                  lowering=lowering, rngs=rngs)
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
        self.bn = None if deploy else BatchNorm(
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
