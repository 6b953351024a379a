"""TF-SepNet: time-frequency separable convolutions with adaptive residual normalisation.

References:
  * Y. Cai, P. Zhang, S. Li, "TF-SepNet: An Efficient 1D Kernel Design in CNNs for Low-Complexity
    Acoustic Scene Classification", ICASSP 2024; DCASE2023/2024 Task 1 technical reports
    (Cai_74, Cai_61).
  * Code: github.com/yqcai888/easy_dcase_task1 `model/backbones.py` (`TFSepNet`, TF-SepNet-64) and
    `model/shared.py` (`TimeFreqSepConvolutions`, `ResNorm`, `AdaResNorm`), the DCASE2024 release
    of the authors' code, followed here; the DCASE2023 one is yqcai888/DCASE2023.

A TF-SepConvs block splits the (channel-shuffled) channels in two halves: one gets a frequency
depthwise conv (kx1) -> average over frequency -> 1x1 conv, the other a temporal depthwise conv
(1xk) -> average over time -> 1x1 conv; each result is broadcast back onto its half as a residual.
Between groups of blocks, (adaptive) residual normalisation mixes the input with its
instance-frequency-normalised version (per sample and frequency bin, statistics over channels
and time): AdaResNorm = gamma * (rho * x + (1 - rho) * IFN(x)) + beta with learnt per-channel
rho, gamma, beta (the ICASSP paper); ResNorm = 0.1 * x + IFN(x) (the DCASE2024 code's default).

Defaults: TF-SepNet-64 (layout "depth 17", base width 64) with AdaResNorm: 128,586 params and
14.8 MMACs on a 256x63 log-mel (the authors fed 512 mel bins, where it costs 30.7 MMACs; with
ResNorm it has the reference's 126,858 params). The DCASE memory limit, not the MAC budget, binds
here; `base_channels=88` uses the MAC budget (26.4 MMACs, 236K params). Widen further for a teacher.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.layers import ConvBN, PointwiseConv
from asc_jax.models.registry import register

# TF-SepNet-64 ("depth 17"): "N" = residual norm, "M" = 2x2 max-pool, a number = a TF-SepConvs
# block with that many base_channels (the stem ends at 2 x base_channels).
DEPTH17 = ("N", 1, 1, "N", "M", 1.5, 1.5, "N", "M", 2, 2, "N", "M", 2.5, 2.5, 2.5, "N")


@dataclasses.dataclass(frozen=True)
class TFSepNetConfig:
    n_classes: int = 10  # Output classes.
    in_channels: int = 1  # Input channels (a single log-mel plane).
    base_channels: int = 64  # Network width (must be even); 64 = TF-SepNet-64.
    layout: tuple = DEPTH17  # Layer sequence after the stem, see DEPTH17 (drop the last "M" for depth 16).
    kernel_size: int = 3  # Length of the 1D depthwise kernels (odd).
    dropout: float = 0.1  # Dropout after each branch's 1x1 conv.
    norm: str = "adaresnorm"  # "adaresnorm" (learnt rho, gamma, beta) or "resnorm" (fixed lambda 0.1).
    shuffle: bool = True  # Channel shuffle before the split (groups = half the channels).
    # How depthwise and 1x1 convs are computed, "taps" or "xla" (layers.CONV_LOWERINGS): the same
    # function either way. Fixed here; a training run records layers.default_lowering().
    conv_lowering: str = "taps"


def _ifn(x: jax.Array, eps: float) -> jax.Array:
    """Instance-frequency normalisation: per sample and frequency bin, over channels and time,
    with PyTorch's unbiased variance as in the reference."""
    mean = jnp.mean(x, axis=(2, 3), keepdims=True)
    var = jnp.var(x, axis=(2, 3), keepdims=True, ddof=1)
    return (x - mean) / jnp.sqrt(var + eps)


class AdaResNorm(nnx.Module):
    """gamma * (rho * x + (1 - rho) * IFN(x)) + beta, per-channel rho (init 0.5), gamma, beta."""

    def __init__(self, channels: int, eps: float = 1e-5):
        self.rho = nnx.Param(jnp.full((channels,), 0.5))
        self.gamma = nnx.Param(jnp.ones((channels,)))
        self.beta = nnx.Param(jnp.zeros((channels,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        rho = self.rho[...]
        return self.gamma[...] * (rho * x + (1 - rho) * _ifn(x, self.eps)) + self.beta[...]


class ResNorm(nnx.Module):
    """lambda * x + IFN(x) with a fixed lambda (no parameters)."""

    def __init__(self, lamb: float = 0.1, eps: float = 1e-5):
        self.lamb = lamb
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lamb * x + _ifn(x, self.eps)


NORMS = {"adaresnorm": AdaResNorm, "resnorm": lambda channels: ResNorm()}


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """The reference ShuffleLayer: channel i * groups + j moves to j * (C // groups) + i."""
    *lead, c = x.shape
    return x.reshape(*lead, c // groups, groups).swapaxes(-1, -2).reshape(*lead, c)


class TFSepConvs(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, config: TFSepNetConfig, *,
                 deploy: bool, rngs: nnx.Rngs):
        if out_channels % 2:
            raise ValueError(f"TF-SepConvs needs an even width, got {out_channels}")
        half, k, lowering = out_channels // 2, config.kernel_size, config.conv_lowering
        self.transition = None if in_channels == out_channels else ConvBN(
            in_channels, out_channels, 1, deploy=deploy, lowering=lowering, rngs=rngs)
        self.freq_dw = ConvBN(half, half, (k, 1), groups=half, deploy=deploy, lowering=lowering, rngs=rngs)
        self.freq_pw = ConvBN(half, half, 1, deploy=deploy, lowering=lowering, rngs=rngs)
        self.temp_dw = ConvBN(half, half, (1, k), groups=half, deploy=deploy, lowering=lowering, rngs=rngs)
        self.temp_pw = ConvBN(half, half, 1, deploy=deploy, lowering=lowering, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.shuffle = config.shuffle

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.transition is not None:
            x = self.transition(x, train=train)
        if self.shuffle:
            x = channel_shuffle(x, x.shape[-1] // 2)
        x1, x2 = jnp.split(x, 2, axis=-1)
        f = jnp.mean(self.freq_dw(x1, train=train), axis=1, keepdims=True)  # pool frequency
        f = self.dropout(self.freq_pw(f, train=train), deterministic=not train)
        t = jnp.mean(self.temp_dw(x2, train=train), axis=2, keepdims=True)  # pool time
        t = self.dropout(self.temp_pw(t, train=train), deterministic=not train)
        return jnp.concatenate([x1 + f, x2 + t], axis=-1)


class TFSepNet(nnx.Module):
    """Stem (3x3 s2 conv, grouped 3x3 s2 conv) -> layout of blocks/norms/pools -> 1x1 conv -> GAP."""

    def __init__(self, config: TFSepNetConfig = TFSepNetConfig(), *, deploy: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        b = config.base_channels
        if b % 2 or config.kernel_size % 2 == 0:
            raise ValueError(f"base_channels must be even and kernel_size odd, got {b}, {config.kernel_size}")
        if config.norm not in NORMS:
            raise ValueError(f"unknown norm {config.norm!r}; known: {sorted(NORMS)}")
        unknown = [v for v in config.layout if isinstance(v, str) and v not in ("N", "M")]
        if unknown:
            raise ValueError(f"unknown layout entries {unknown}: use 'N', 'M' or a width multiple")
        lowering = config.conv_lowering
        self.stem = nnx.List([
            ConvBN(config.in_channels, b // 2, 3, 2, deploy=deploy, lowering=lowering, rngs=rngs),
            ConvBN(b // 2, 2 * b, 3, 2, groups=b // 2, deploy=deploy, lowering=lowering, rngs=rngs),
        ])
        layers, width = [], 2 * b
        for v in config.layout:
            if v == "N":
                layers.append(NORMS[config.norm](width))
            elif v == "M":
                layers.append(None)  # max-pool placeholder keeps layer indices aligned with the layout
            else:
                layers.append(TFSepConvs(width, int(v * b), config, deploy=deploy, rngs=rngs))
                width = int(v * b)
        self.layers = nnx.List(layers)
        self.head = PointwiseConv(width, config.n_classes, use_bias=True, lowering=lowering, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        h = x[..., None]  # (B, F, T) -> NHWC, frequency as H
        for conv in self.stem:
            h = conv(h, train=train)
        aux: dict[str, Any] = {"stem": h}
        outputs = []
        for kind, layer in zip(self.config.layout, self.layers):
            if kind == "M":
                outputs.append(h)  # a pool closes a stage
                h = nnx.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
            elif kind == "N":
                h = layer(h)
            else:
                h = layer(h, train=train)
        outputs.append(h)
        aux["stages"] = tuple(outputs)
        aux["pre_logits"] = jnp.mean(h, axis=(1, 2))
        # The reference applies the 1x1 classifier conv at every position, then averages.
        return jnp.mean(self.head(h), axis=(1, 2)), aux


@register("tf_sepnet", conv_lowering=True)
def tf_sepnet(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> TFSepNet:
    """TF-SepNet-64 with AdaResNorm: 128,586 params / 14.8 MMACs on 256x63."""
    config = typed.make(TFSepNetConfig, overrides, "tf_sepnet option")
    return TFSepNet(config, deploy=deploy, rngs=rngs)
