"""Rep-Mobile (Han et al., DCASE2024 Task 1 winner) and its branch-free relatives.

One module family covers three registered models:
  * ``rep_mobile``: CP-Mobile blocks whose 3x3 depthwise conv has parallel training-time branches
    (1x1, 3x1, 1x3, each with its own BN); `asc_jax.reparam.fuse` folds them into one 3x3 conv.
  * ``cp_mobile``: the same network with the 3x3 branch only (Schmid et al., DCASE2023).
  * ``dcase2024_baseline``: the DCASE2024 Task 1 baseline (CP-Mobile without GRN, narrower,
    different strides; 61,148 params).

With ``deploy=True`` the module has no BatchNorm and no branches: every conv carries a bias and
each depthwise stage is a single conv. Deploy weights come from `asc_jax.reparam.fuse`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.layers import (
    GRN, ConvBN, DepthwiseConv, avg_pool_3x3, depthwise_branch_taps, make_divisible, run_stages)
from asc_jax.models.registry import register

# Training-time depthwise branches: name -> kernel (freq, time).
BRANCH_KERNELS: Mapping[str, tuple[int, int]] = {
    "3x3": (3, 3), "1x1": (1, 1), "3x1": (3, 1), "1x3": (1, 3)}


@dataclasses.dataclass(frozen=True)
class RepMobileConfig:
    n_classes: int = 10  # Output classes.
    in_channels: int = 1  # Input channels (a single log-mel plane).
    base_channels: int = 32  # Channels after the stem (and of stage 1), rounded to a multiple of 8.
    channels_multiplier: float = 2.3  # Stage s has base * multiplier**s channels.
    expansion_rate: float = 3.0  # Inverted-bottleneck expansion of each block.
    n_blocks: tuple[int, ...] = (3, 2, 1)  # Blocks per stage.
    # Block strides (freq, time) by block name b1..bN; unnamed blocks have stride 1.
    strides: tuple[tuple[str, tuple[int, int]], ...] = (("b2", (2, 2)), ("b4", (2, 1)))
    branches: tuple[str, ...] = ("3x3", "1x1", "3x1", "1x3")  # Depthwise branches (training form).
    use_grn: bool = True  # Global Response Normalisation after each block's residual sum.
    # Explicit widths override the derived ones; pruning writes them when it slices a model.
    stem_channels: int | None = None  # Width of the first stem conv (default base // 4).
    stage_channels: tuple[int, ...] | None = None  # Output width of the stem and of each stage.
    expansion_channels: tuple[int, ...] | None = None  # Expanded width of each block.
    # How depthwise and 1x1 convs are computed, "taps" or "xla" (layers.CONV_LOWERINGS): the same
    # function either way. Fixed here; a training run records layers.default_lowering().
    conv_lowering: str = "taps"

    def widths(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """(stem_channels, stage_channels (n_stages + 1), expansion_channels (n_blocks))."""
        base = make_divisible(self.base_channels, 8)
        stages = self.stage_channels or (base,) + tuple(
            make_divisible(base * self.channels_multiplier**s, 8) for s in range(len(self.n_blocks)))
        if len(stages) != len(self.n_blocks) + 1:
            raise ValueError(f"stage_channels needs {len(self.n_blocks) + 1} entries, got {stages}")
        block_in = [c for s, n in enumerate(self.n_blocks) for c in [stages[s]] + [stages[s + 1]] * (n - 1)]
        expansions = self.expansion_channels or tuple(
            make_divisible(c * self.expansion_rate, 8) for c in block_in)
        if len(expansions) != sum(self.n_blocks):
            raise ValueError(f"expansion_channels needs {sum(self.n_blocks)} entries, got {expansions}")
        return self.stem_channels or stages[0] // 4, tuple(stages), tuple(expansions)

    def block_strides(self) -> tuple[tuple[int, int], ...]:
        table = dict(self.strides)
        unknown = set(table) - {f"b{i + 1}" for i in range(sum(self.n_blocks))}
        if unknown:
            raise ValueError(f"strides name unknown blocks {sorted(unknown)}")
        return tuple(tuple(table.get(f"b{i + 1}", (1, 1))) for i in range(sum(self.n_blocks)))


class RepDepthwise(nnx.Module):
    """Depthwise conv with parallel (kernel-shape) branches, summed, then ReLU.

    Training form: {"branches": {name: ConvBN}}; deploy form: {"fused": Conv with bias} whose
    kernel covers the union of the branch kernels (3x3 for the default branches).
    """

    def __init__(self, channels: int, stride: tuple[int, int], branches: tuple[str, ...], *,
                 deploy: bool, lowering: str, rngs: nnx.Rngs):
        if not branches:
            raise ValueError("a depthwise layer needs at least one branch")
        unknown = set(branches) - set(BRANCH_KERNELS)
        if unknown:
            raise ValueError(f"unknown depthwise branches {sorted(unknown)}; known: {list(BRANCH_KERNELS)}")
        kernels = [BRANCH_KERNELS[b] for b in branches]
        self.kernel = (max(k[0] for k in kernels), max(k[1] for k in kernels))
        self.stride, self.lowering = stride, lowering
        if deploy:
            self.fused = DepthwiseConv(channels, self.kernel, stride, use_bias=True, lowering=lowering,
                                       rngs=rngs)
            self.branches = None
        else:
            self.fused = None
            self.branches = nnx.Dict({
                b: ConvBN(channels, channels, BRANCH_KERNELS[b], stride, groups=channels, act=False,
                          lowering=lowering, rngs=rngs) for b in branches})

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.fused is not None:
            y = self.fused(x)
        elif train and self.lowering == "taps":
            # The branch convs read one input: in training one op computes them all
            # (`depthwise_branch_taps`), each then through its own BN, as ConvBN(act=False) would.
            # Inference mode calls each branch's conv, whose calls `complexity.count_macs` records.
            branches = list(self.branches.values())
            zs = depthwise_branch_taps(x, [b.conv.kernel[...] for b in branches], self.stride)
            y = sum(b.bn(z, use_running_average=False) for b, z in zip(branches, zs))
        else:
            y = sum(branch(x, train=train) for branch in self.branches.values())
        return jax.nn.relu(y)


class CPMobileBlock(nnx.Module):
    """1x1 expand -> (multi-branch) 3x3 depthwise -> 1x1 project, residual, GRN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, exp_channels: int,
                 stride: tuple[int, int], branches: tuple[str, ...], *, use_grn: bool,
                 deploy: bool, lowering: str, rngs: nnx.Rngs):
        self.expand = ConvBN(in_channels, exp_channels, 1, deploy=deploy, lowering=lowering, rngs=rngs)
        self.depthwise = RepDepthwise(exp_channels, stride, branches, deploy=deploy, lowering=lowering,
                                      rngs=rngs)
        self.project = ConvBN(exp_channels, out_channels, 1, act=False, deploy=deploy, lowering=lowering,
                              rngs=rngs)
        # As in the CPJKU code: a shortcut only where widths match; avg-pooled when strided.
        self.shortcut = in_channels == out_channels
        self.stride = stride
        self.grn = GRN() if use_grn else None

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.project(self.depthwise(self.expand(x, train=train), train=train), train=train)
        if self.shortcut:
            y = y + (x if self.stride == (1, 1) else avg_pool_3x3(x, self.stride))
        if self.grn is not None:
            y = self.grn(y)
        return jax.nn.relu(y)


class RepMobile(nnx.Module):
    """Stem (two 3x3 stride-2 convs) -> stages of CP-Mobile blocks -> 1x1 conv + BN -> GAP."""

    def __init__(self, config: RepMobileConfig = RepMobileConfig(), *, deploy: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        stem_c, stage_c, exp_c = config.widths()
        lowering = config.conv_lowering
        self.stem = nnx.List([
            ConvBN(config.in_channels, stem_c, 3, 2, deploy=deploy, lowering=lowering, rngs=rngs),
            ConvBN(stem_c, stage_c[0], 3, 2, deploy=deploy, lowering=lowering, rngs=rngs),
        ])
        strides = iter(config.block_strides())
        expansions = iter(exp_c)
        stages = []
        for s, n in enumerate(config.n_blocks):
            blocks = []
            for j in range(n):
                in_c = stage_c[s] if j == 0 else stage_c[s + 1]
                blocks.append(CPMobileBlock(in_c, stage_c[s + 1], next(expansions), next(strides),
                                            config.branches, use_grn=config.use_grn, deploy=deploy,
                                            lowering=lowering, rngs=rngs))
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.head = ConvBN(stage_c[-1], config.n_classes, 1, act=False, deploy=deploy, lowering=lowering,
                           rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        h = x[..., None]  # (B, F, T) -> NHWC with frequency as H
        for conv in self.stem:
            h = conv(h, train=train)
        aux = {"stem": h}
        h, aux["stages"] = run_stages(h, self.stages, train=train)
        aux["pre_logits"] = jnp.mean(h, axis=(1, 2))
        logits = jnp.mean(self.head(h, train=train), axis=(1, 2))
        return logits, aux


def _config(name: str, overrides: dict, **defaults) -> RepMobileConfig:
    fields = {**defaults, **overrides}
    if isinstance(fields.get("strides"), Mapping):  # {"b2": (2, 2)} reads better in a config file
        fields["strides"] = tuple(sorted((k, tuple(v)) for k, v in fields["strides"].items()))
    return typed.make(RepMobileConfig, fields, f"{name} option")


@register("rep_mobile", conv_lowering=True)
def rep_mobile(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> RepMobile:
    """Rep-Mobile: 126,952 params / 28.9 MMACs on 256x63 at the defaults."""
    return RepMobile(_config("rep_mobile", overrides), deploy=deploy, rngs=rngs)


@register("cp_mobile", conv_lowering=True)
def cp_mobile(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> RepMobile:
    """CP-Mobile: Rep-Mobile without the extra depthwise branches."""
    return RepMobile(_config("cp_mobile", overrides, branches=("3x3",)), deploy=deploy, rngs=rngs)


@register("dcase2024_baseline", conv_lowering=True)
def dcase2024_baseline(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> RepMobile:
    """The DCASE2024 Task 1 baseline: 61,148 params / 29.4 MMACs on 256x65 (hop 500)."""
    defaults = dict(base_channels=32, channels_multiplier=1.8, expansion_rate=2.1,
                    strides=(("b2", (1, 1)), ("b3", (1, 2)), ("b4", (2, 1))),
                    branches=("3x3",), use_grn=False)
    return RepMobile(_config("dcase2024_baseline", overrides, **defaults), deploy=deploy, rngs=rngs)
