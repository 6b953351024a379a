"""BC-ResNet: broadcasted residual learning with SubSpectral Normalisation.

References:
  * B. Kim, S. Chang, J. Lee, D. Sung, "Broadcasted Residual Learning for Efficient Keyword
    Spotting", Interspeech 2021; S. Chang et al., "SubSpectral Normalization for Neural Audio
    Data Processing", ICASSP 2021; applied to DCASE ASC in B. Kim et al., "Domain Generalization
    on Efficient Acoustic Scene Classification using Residual Normalization", DCASE 2021.
  * Code: github.com/Qualcomm-AI-research/bcresnet `bcresnet.py`, `subspectralnorm.py` (followed
    here; block, stage layout, dilations and classifier as there).

A BC-ResBlock splits a 2D residual block into a frequency-wise depthwise conv (3x1, followed by
SubSpectralNorm) whose output is averaged over frequency, a temporal depthwise conv (1x3, dilated
by 2**stage) + BN + SiLU and a 1x1 conv on that 1D (time) signal, and broadcasts the result back
over frequency: y = ReLU(x + f2(x) + f1(avgpool_freq(f2(x)))), without the x term in the
transition blocks that change the width.

Adaptations to ASC (all config fields): 10 classes, 256-mel input, SubSpectralNorm with 4
sub-bands (the keyword-spotting code uses 5 for 40 mels; the count must divide the frequency
size of every stage: 128, 64 and 32 for 256 mels), and BC-ResNet-2 (`base_channels` 16) as the
default, which costs 29.6 MMACs on a 256x63 log-mel. With the keyword-spotting settings
(base 8, 12 classes, 5 sub-bands, 40x101 input) this module has the reference's 9,232 params.

Deploy form: every conv followed by a BatchNorm is a `ConvBN` and is folded by
`asc_jax.reparam`; the frequency-wise conv keeps its SubSpectralNorm (its per-sub-band statistics
cannot be folded into one conv kernel), so a deployed BC-ResNet still has batch statistics.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.layers import (
    BN_EPS, BN_MOMENTUM, BatchNorm, ConvBN, DepthwiseConv, PointwiseConv, conv_init, run_stages)
from asc_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class BCResNetConfig:
    n_classes: int = 10  # Output classes.
    in_channels: int = 1  # Input channels (a single log-mel plane).
    base_channels: int = 16  # 8 * tau of BC-ResNet-tau ("base_c"; 8 = BC-ResNet-1, 40 = BC-ResNet-5).
    n_blocks: tuple[int, ...] = (2, 2, 4, 4)  # BC-ResBlocks per stage.
    # Width of the stem and of each stage, in units of base_channels (reference: 2, 1, 1.5, 2,
    # 2.5), and of the classifier's 1x1 conv (4); int() truncates as in the reference.
    widths: tuple[float, ...] = (2.0, 1.0, 1.5, 2.0, 2.5, 4.0)
    stem_stride: tuple[int, int] = (2, 1)  # Stride (freq, time) of the 5x5 stem conv.
    strided_stages: tuple[int, ...] = (1, 2)  # Stages whose first block halves frequency.
    sub_bands: int = 4  # SubSpectralNorm groups along frequency (1 = plain BatchNorm).
    dilation: bool = True  # Dilate the temporal conv of stage s by 2**s.
    dropout: float = 0.1  # Channel-wise (Dropout2d) rate after each block's 1x1 conv.
    # How depthwise and 1x1 convs are computed, "taps" or "xla" (layers.CONV_LOWERINGS): the same
    # function either way. Fixed here; a training run records layers.default_lowering().
    conv_lowering: str = "taps"

    def channels(self) -> tuple[int, ...]:
        return tuple(int(self.base_channels * w) for w in self.widths)


class SubSpectralNorm(nnx.Module):
    """BatchNorm with separate statistics and affine per frequency sub-band (Chang et al.).

    The reference views (B, C, F, T) as (B, C * S, F / S, T), so channel c's sub-band s is
    BatchNorm channel c * S + s and sub-bands are contiguous frequency ranges.
    """

    def __init__(self, channels: int, sub_bands: int, *, rngs: nnx.Rngs):
        self.sub_bands = sub_bands
        self.bn = BatchNorm(channels * sub_bands, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b, f, t, c = x.shape
        s = self.sub_bands
        if f % s:
            raise ValueError(f"SubSpectralNorm: {f} frequency bins do not split into {s} sub-bands")
        y = x.reshape(b, s, f // s, t, c).transpose(0, 2, 3, 4, 1).reshape(b, f // s, t, c * s)
        y = self.bn(y, use_running_average=not train)
        return y.reshape(b, f // s, t, c, s).transpose(0, 4, 1, 2, 3).reshape(b, f, t, c)


def dilated_temporal_conv_bn(channels: int, dilation: int, *, deploy: bool, lowering: str,
                             rngs: nnx.Rngs) -> ConvBN:
    """Depthwise (1x3) conv dilated along time, padded to keep the length, -> BN.

    ConvBN has no dilation, so its conv is swapped for a plain nnx.Conv of that geometry; the node
    keeps ConvBN's {"conv", "bn"} tree, so `asc_jax.reparam` folds it like any other.
    """
    layer = ConvBN(channels, channels, (1, 3), groups=channels, act=False, deploy=deploy,
                   lowering=lowering, rngs=rngs)
    layer.conv = nnx.Conv(channels, channels, (1, 3), padding=((0, 0), (dilation, dilation)),
                          kernel_dilation=(1, dilation), feature_group_count=channels, use_bias=deploy,
                          kernel_init=conv_init, rngs=rngs)
    return layer


class FreqConvSSN(nnx.Module):
    """Depthwise (3x1) frequency conv -> SubSpectralNorm; kept as is in deploy form."""

    def __init__(self, channels: int, stride: int, sub_bands: int, *, lowering: str, rngs: nnx.Rngs):
        self.conv = DepthwiseConv(channels, (3, 1), (stride, 1), use_bias=False, lowering=lowering,
                                  rngs=rngs)
        self.ssn = SubSpectralNorm(channels, sub_bands, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.ssn(self.conv(x), train=train)


class BCResBlock(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int,
                 config: BCResNetConfig, *, deploy: bool, rngs: nnx.Rngs):
        lowering = config.conv_lowering
        self.transition = None if in_channels == out_channels else ConvBN(
            in_channels, out_channels, 1, deploy=deploy, lowering=lowering, rngs=rngs)
        self.freq = FreqConvSSN(out_channels, stride, config.sub_bands, lowering=lowering, rngs=rngs)
        self.temporal = dilated_temporal_conv_bn(out_channels, dilation, deploy=deploy, lowering=lowering,
                                                 rngs=rngs)
        self.pointwise = PointwiseConv(out_channels, out_channels, use_bias=False, lowering=lowering,
                                       rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, broadcast_dims=(1, 2), rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = x if self.transition is None else self.transition(x, train=train)
        h2d = self.freq(h, train=train)
        h1d = jnp.mean(h2d, axis=1, keepdims=True)  # average over frequency: (B, 1, T, C)
        h1d = jax.nn.silu(self.temporal(h1d, train=train))
        h1d = self.dropout(self.pointwise(h1d), deterministic=not train)
        y = h2d + h1d  # broadcast over frequency
        if self.transition is None:
            y = y + x
        return jax.nn.relu(y)


class BCResNet(nnx.Module):
    """5x5 stem -> 4 stages of BC-ResBlocks -> 5x5 depthwise + 1x1 conv-BN-ReLU -> GAP -> linear."""

    def __init__(self, config: BCResNetConfig = BCResNetConfig(), *, deploy: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        c = config.channels()
        n_stages = len(config.n_blocks)
        if len(c) != n_stages + 2 or min(c) < 1:
            raise ValueError(f"widths needs {n_stages + 2} positive entries (stem, stages, head), got {c}")
        self.stem = ConvBN(config.in_channels, c[0], 5, config.stem_stride, deploy=deploy,
                           lowering=config.conv_lowering, rngs=rngs)
        stages, in_c = [], c[0]
        for s, n in enumerate(config.n_blocks):
            blocks = []
            for j in range(n):
                stride = 2 if s in config.strided_stages and j == 0 else 1
                dilation = 2**s if config.dilation else 1
                blocks.append(BCResBlock(in_c, c[s + 1], stride, dilation, config, deploy=deploy, rngs=rngs))
                in_c = c[s + 1]
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        # Classifier as in the reference: no frequency padding, so the 5x5 kernel sees 5 bands.
        self.head_dw = nnx.Conv(c[-2], c[-2], (5, 5), padding=((0, 0), (2, 2)), feature_group_count=c[-2],
                                use_bias=False, kernel_init=conv_init, rngs=rngs)
        self.head_pw = ConvBN(c[-2], c[-1], 1, deploy=deploy, lowering=config.conv_lowering, rngs=rngs)
        self.fc = nnx.Linear(c[-1], config.n_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        h = self.stem(x[..., None], train=train)  # (B, F, T) -> NHWC, frequency as H
        aux: dict[str, Any] = {"stem": h}
        h, aux["stages"] = run_stages(h, self.stages, train=train)
        h = self.head_pw(self.head_dw(h), train=train)
        aux["pre_logits"] = jnp.mean(h, axis=(1, 2))
        return self.fc(aux["pre_logits"]), aux


@register("bc_resnet", conv_lowering=True)
def bc_resnet(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> BCResNet:
    """BC-ResNet-2 (base 16): 26,418 params / 29.6 MMACs on 256x63."""
    config = typed.make(BCResNetConfig, overrides, "bc_resnet option")
    return BCResNet(config, deploy=deploy, rngs=rngs)
