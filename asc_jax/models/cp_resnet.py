"""CP-ResNet: the receptive-field-regularised ResNet of the CPJKU DCASE systems.

References:
  * K. Koutini, H. Eghbal-zadeh, G. Widmer, "Receptive-field-regularized CNN variants for
    acoustic scene classification", DCASE 2019 workshop; and "Receptive field regularization
    techniques for audio classification and tagging with deep convolutional neural networks",
    IEEE/ACM TASLP 2021.
  * Code: github.com/CPJKU/cpjku_dcase22 `models/cp/cp_resnet.py` (`get_model`, the DCASE2022
    low-complexity variant followed here; the DCASE2020 one is kkoutini/cpjku_dcase20).

Architecture (as in the reference): a 5x5 stride-2 stem conv (padding 1) with BN and ReLU, three
stages of ResNet basic blocks (conv-BN-ReLU, conv-BN, shortcut, ReLU), a 1x1 conv + BN to the
classes and global average pooling. Stage 1 starts with a 2x2 max-pool and max-pools frequency
(2x1) after each of its blocks. `rho` regularises the receptive field: the later a conv sits, the
larger `rho` must be for it to keep a 3x3 kernel, otherwise it becomes 1x1 (`kernel_sizes`).

Defaults: the DCASE2022 submission layout (`cp_mini_resnet`: blocks (2, 1, 1), rho 8, grouped
stage 2) narrowed to base 24 without the stage-3 cut, so that a 256x63 log-mel costs 28.9 MMACs
(the submission's base 32 and stage-3 cut of 36 give 127,684 params and 28.8 MMACs on a 256x44
input, 43.2 MMACs on 256x63). Widen `base_channels` (and `n_blocks`) for a teacher.

Differences from the reference: initialisation is `layers.conv_init` for every conv (the
reference's Fixup-style zeroing of each block's second conv and of the head is not reproduced).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.layers import ConvBN, conv_init
from asc_jax.models.registry import register

def kernel_sizes(rho: int, n_blocks: tuple[int, ...]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(k1, k2) per block per stage for receptive-field parameter `rho` (reference tables).

    The reference lists, for each of the at most two blocks per stage, when a conv keeps its 3x3
    kernel: the first block of stage 1 is always (3, 1); every later conv i (counted over the
    (stage, block, conv) grid, 2 convs per block, 2 blocks per stage) is 3x3 iff
    rho - 4 > 4 * stage + 2 * block + conv - 5, and 1x1 otherwise.
    """
    if len(n_blocks) != 3 or not all(1 <= n <= 2 for n in n_blocks):
        raise ValueError(f"CP-ResNet has 3 stages of 1 or 2 blocks (reference kernel tables), got {n_blocks}")
    extra = rho - 4
    out = []
    for s, n in enumerate(n_blocks):
        blocks = []
        for b in range(n):
            if s == 0 and b == 0:
                blocks.append((3, 1))
            else:
                blocks.append(tuple(3 if extra > 4 * s + 2 * b + c - 5 else 1 for c in range(2)))
        out.append(tuple(blocks))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CPResNetConfig:
    n_classes: int = 10  # Output classes.
    in_channels: int = 1  # Input channels (a single log-mel plane).
    rho: int = 8  # Receptive-field regulariser: larger keeps more 3x3 kernels (reference: 4..16).
    base_channels: int = 24  # Width of the stem and stage 1 (32 in the reference).
    channels_multiplier: float = 2.0  # Stage s (0-based) has base * multiplier**s channels...
    cut_channels_s2: int = 0  # ...minus this many in stage 2...
    cut_channels_s3: int = 0  # ...and this many in stage 3 (36 in the DCASE2022 submission).
    n_blocks: tuple[int, ...] = (2, 1, 1)  # Basic blocks per stage (1 or 2 each).
    groups: tuple[int, ...] = (1, 2, 1)  # Conv groups in each stage (all convs of the stage).
    # Max-pool positions per stage: 0 = a 2x2 pool before the first block, b >= 1 = a frequency-only
    # (2x1) pool after block b; positions past the last block are ignored (reference: [0, 1, 2, 4]).
    pools: tuple[tuple[int, ...], ...] = ((0, 1, 2, 4), (), ())
    # How depthwise and 1x1 convs are computed, "taps" or "xla" (layers.CONV_LOWERINGS): the same
    # function either way. Fixed here; a training run records layers.default_lowering().
    conv_lowering: str = "taps"

    def widths(self) -> tuple[int, int, int]:
        b, m = self.base_channels, self.channels_multiplier
        return b, int(round(b * m)) - self.cut_channels_s2, int(round(b * m * m)) - self.cut_channels_s3


def stem_conv_bn(in_channels: int, out_channels: int, *, deploy: bool, lowering: str,
                 rngs: nnx.Rngs) -> ConvBN:
    """5x5 stride-2 conv padded by 1 (not 2) as in the reference -> BN -> ReLU.

    ConvBN always pads to "same", so its conv is swapped for a plain nnx.Conv of that geometry; the
    node keeps ConvBN's {"conv", "bn"} tree, so `asc_jax.reparam` folds it like any other.
    """
    layer = ConvBN(in_channels, out_channels, 5, 2, deploy=deploy, lowering=lowering, rngs=rngs)
    layer.conv = nnx.Conv(in_channels, out_channels, (5, 5), strides=(2, 2), padding=((1, 1), (1, 1)),
                          use_bias=deploy, kernel_init=conv_init, rngs=rngs)
    return layer


class BasicBlock(nnx.Module):
    """conv(k1)-BN-ReLU -> conv(k2)-BN, plus a 1x1 conv-BN shortcut where widths differ, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernels: tuple[int, int], groups: int, *,
                 deploy: bool, lowering: str, rngs: nnx.Rngs):
        self.conv1 = ConvBN(in_channels, out_channels, kernels[0], groups=groups, deploy=deploy,
                            lowering=lowering, rngs=rngs)
        self.conv2 = ConvBN(out_channels, out_channels, kernels[1], groups=groups, act=False,
                            deploy=deploy, lowering=lowering, rngs=rngs)
        self.shortcut = None if in_channels == out_channels else ConvBN(
            in_channels, out_channels, 1, groups=groups, act=False, deploy=deploy, lowering=lowering,
            rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(self.conv1(x, train=train), train=train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return jax.nn.relu(y + skip)


def _max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    return nnx.max_pool(x, window, strides=window, padding="VALID")  # PyTorch floor mode


class CPResNet(nnx.Module):
    def __init__(self, config: CPResNetConfig = CPResNetConfig(), *, deploy: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        widths = config.widths()
        if min(widths) < 1:
            raise ValueError(f"CP-ResNet widths must be positive, got {widths}")
        kernels = kernel_sizes(config.rho, config.n_blocks)
        if len(config.groups) != 3 or len(config.pools) != 3:
            raise ValueError(
                f"groups and pools need one entry per stage, got {config.groups}, {config.pools}")
        lowering = config.conv_lowering
        self.stem = stem_conv_bn(config.in_channels, widths[0], deploy=deploy, lowering=lowering, rngs=rngs)
        stages, in_c = [], widths[0]
        for s, out_c in enumerate(widths):
            blocks = []
            for k in kernels[s]:
                blocks.append(BasicBlock(in_c, out_c, k, config.groups[s], deploy=deploy, lowering=lowering,
                                         rngs=rngs))
                in_c = out_c
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.head = ConvBN(widths[-1], config.n_classes, 1, act=False, deploy=deploy, lowering=lowering,
                           rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        h = self.stem(x[..., None], train=train)  # (B, F, T) -> NHWC, frequency as H
        aux: dict[str, Any] = {"stem": h}
        outputs = []
        for stage, pools in zip(self.stages, self.config.pools):
            if 0 in pools:
                h = _max_pool(h, (2, 2))
            for b, block in enumerate(stage):
                h = block(h, train=train)
                if b + 1 in pools:
                    h = _max_pool(h, (2, 1))
            outputs.append(h)
        aux["stages"] = tuple(outputs)
        aux["pre_logits"] = jnp.mean(h, axis=(1, 2))
        return jnp.mean(self.head(h, train=train), axis=(1, 2)), aux


@register("cp_resnet", conv_lowering=True)
def cp_resnet(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> CPResNet:
    """CP-ResNet (DCASE2022 layout, base 24): 90,236 params / 28.9 MMACs on 256x63."""
    config = typed.make(CPResNetConfig, overrides, "cp_resnet option")
    return CPResNet(config, deploy=deploy, rngs=rngs)
