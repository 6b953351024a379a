"""ResNet34 speaker-embedding encoder (wespeaker "r-vector"), adapted to acoustic scene classification.

References:
  * K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016;
    H. Zeinali et al., "BUT System Description to VoxCeleb Speaker Recognition Challenge 2019"
    (the thin ResNet34 r-vector); H. Wang et al., "Wespeaker: A research and production oriented
    speaker embedding learning toolkit", ICASSP 2023.
  * Code: github.com/wenet-e2e/wespeaker `wespeaker/models/resnet.py` (`ResNet34`) and
    `pooling_layers.py` (`TSTP`), followed here.

A thin ResNet34 over the log-mel image (basic blocks (3, 4, 6, 3) with widths m, 2m, 4m, 8m; a
3x3 stride-1 stem without max-pool; stages 2-4 halve frequency and time), temporal statistics
pooling (mean and standard deviation over time of every channel x frequency row), a linear
embedding, and, for ASC, a linear classifier in place of the speaker margin head. With wespeaker's
80 fbanks it has wespeaker's 6.63M parameters (plus the classifier).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.layers import ConvBN, run_stages
from asc_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class ResNet34Config:
    n_classes: int = 10  # Output classes.
    in_channels: int = 1  # Input channels (a single log-mel plane).
    n_mels: int = 256  # Input mel bins (fixes the width of the pooled statistics).
    base_channels: int = 32  # m: stage widths are m, 2m, 4m, 8m (wespeaker m_channels).
    n_blocks: tuple[int, ...] = (3, 4, 6, 3)  # Basic blocks per stage (ResNet34).
    embed_dim: int = 256  # Embedding size before the classifier.
    # How depthwise and 1x1 convs are computed, "taps" or "xla" (layers.CONV_LOWERINGS): the same
    # function either way. Fixed here; a training run records layers.default_lowering().
    conv_lowering: str = "taps"


class BasicBlock(nnx.Module):
    def __init__(self, in_c: int, out_c: int, stride: int, *, deploy: bool, lowering: str,
                 rngs: nnx.Rngs):
        self.conv1 = ConvBN(in_c, out_c, 3, stride, deploy=deploy, lowering=lowering, rngs=rngs)
        self.conv2 = ConvBN(out_c, out_c, 3, act=False, deploy=deploy, lowering=lowering, rngs=rngs)
        self.shortcut = None if stride == 1 and in_c == out_c else ConvBN(
            in_c, out_c, 1, stride, act=False, deploy=deploy, lowering=lowering, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(self.conv1(x, train=train), train=train)
        return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x, train=train)))


def temporal_stats(h: jax.Array) -> jax.Array:
    """TSTP: (B, F, T, C) -> (B, 2 * C * F): mean and std over time, flattened channel-major as the
    reference's (B, C, F) so that converted weights line up; PyTorch's unbiased variance."""
    mean = jnp.mean(h, axis=2).transpose(0, 2, 1).reshape(h.shape[0], -1)
    std = jnp.sqrt(jnp.var(h, axis=2, ddof=1) + 1e-8).transpose(0, 2, 1).reshape(h.shape[0], -1)
    return jnp.concatenate([mean, std], axis=-1)


class ResNet34(nnx.Module):
    def __init__(self, config: ResNet34Config = ResNet34Config(), *, deploy: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        m = config.base_channels
        lowering = config.conv_lowering
        self.stem = ConvBN(config.in_channels, m, 3, deploy=deploy, lowering=lowering, rngs=rngs)
        stages, in_c, freq = [], m, config.n_mels
        for s, n in enumerate(config.n_blocks):
            out_c, stride = m * 2**s, 1 if s == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_c, out_c, stride if j == 0 else 1, deploy=deploy,
                                         lowering=lowering, rngs=rngs))
                in_c = out_c
            stages.append(nnx.List(blocks))
            freq = (freq - 1) // stride + 1  # 3x3 conv, padding 1
        self.stages = nnx.List(stages)
        self.embed = nnx.Linear(2 * in_c * freq, config.embed_dim, rngs=rngs)
        self.classifier = nnx.Linear(config.embed_dim, config.n_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        if x.ndim != 3 or x.shape[1] != self.config.n_mels:
            raise ValueError(f"ResNet34 expects (B, {self.config.n_mels}, T) log-mels, got {x.shape}")
        h = self.stem(x[..., None], train=train)  # (B, F, T) -> NHWC, frequency as H
        aux: dict[str, Any] = {"stem": h}
        h, aux["stages"] = run_stages(h, self.stages, train=train)
        aux["pre_logits"] = self.embed(temporal_stats(h))
        return self.classifier(aux["pre_logits"]), aux


@register("resnet34", conv_lowering=True)
def resnet34(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> ResNet34:
    """ResNet34 (m=32) teacher: 9,520,490 params / 4.63 GMACs on 256x63."""
    config = typed.make(ResNet34Config, overrides, "resnet34 option")
    return ResNet34(config, deploy=deploy, rngs=rngs)
