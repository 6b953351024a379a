"""MobileNetV3 for audio, as in EfficientAT's `mn` models (mn01 ... mn40 = width 0.1 ... 4.0).

References:
  * A. Howard et al., "Searching for MobileNetV3", ICCV 2019.
  * F. Schmid, K. Koutini, G. Widmer, "Efficient Large-Scale Audio Tagging via Transformer-to-CNN
    Knowledge Distillation", ICASSP 2023.
  * Code: github.com/fschmid56/EfficientAT `models/mn/model.py` (`get_model`, `_mobilenet_v3_conf`)
    and `models/mn/block_types.py` (`InvertedResidual`, `SqueezeExcitation`), followed here.

Structure (reference): 3x3 stride-2 stem conv-BN-Hardswish, the 15 inverted-residual blocks of
MobileNetV3-Large (1x1 expand, kxk depthwise, optional channel squeeze-excitation with a sigmoid
gate, 1x1 project; residual where shape allows), a 1x1 conv-BN-Hardswish to 6x the last width,
then the "mlp" head (GAP -> linear -> Hardswish -> dropout -> linear) or the "fully_convolutional"
head (1x1 conv-BN to the classes -> GAP). Channels scale by `width_mult`, rounded to multiples of 8.

Defaults: `width_mult` 0.6 ("mn06"), aligned to the DCASE MAC budget (29.2 MMACs on a 256x63
log-mel); its 1.55M parameters are far above the DCASE 128 kB memory limit, which MobileNetV3 only
meets below width 0.2. `width_mult=1.0` (mn10: 4.88M params / 0.54 GMACs on AudioSet's 128x1000
with 527 classes, as in EfficientAT) or 4.0 (mn40) are EfficientAT's teacher sizes.

Differences from the reference: BatchNorm uses the project-wide PyTorch defaults (eps 1e-5,
momentum 0.1) instead of EfficientAT's eps 1e-3 / momentum 0.01, so that `ConvBN` and
`asc_jax.reparam` apply unchanged; convert weights with the eps read from the modules.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.layers import ConvBN, make_divisible, run_stages
from asc_jax.models.registry import register

# MobileNetV3-Large's inverted-residual setting: (in, kernel, expanded, out, squeeze-excite,
# activation, stride slot) per block, widths before scaling; stride slot i takes config.strides[i]
# (the reference's four "C1..C4" downsampling blocks), None = stride 1.
LARGE = (
    (16, 3, 16, 16, False, "RE", None),
    (16, 3, 64, 24, False, "RE", 0),
    (24, 3, 72, 24, False, "RE", None),
    (24, 5, 72, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", None),
    (40, 5, 120, 40, True, "RE", None),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", None),
    (80, 3, 184, 80, False, "HS", None),
    (80, 3, 184, 80, False, "HS", None),
    (80, 3, 480, 112, True, "HS", None),
    (112, 3, 672, 112, True, "HS", None),
    (112, 5, 672, 160, True, "HS", 3),
    (160, 5, 960, 160, True, "HS", None),
    (160, 5, 960, 160, True, "HS", None),
)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"RE": jax.nn.relu, "HS": jax.nn.hard_swish}
HEADS = ("mlp", "fully_convolutional")


@dataclasses.dataclass(frozen=True)
class MobileNetConfig:
    n_classes: int = 10  # Output classes.
    in_channels: int = 1  # Input channels (a single log-mel plane).
    width_mult: float = 0.6  # Channel multiplier: 0.6 = mn06 (MAC-aligned), 1.0 = mn10, 4.0 = mn40.
    blocks: tuple = LARGE  # Inverted-residual setting (the reference MN takes it as an argument too).
    strides: tuple[int, ...] = (2, 2, 2, 2)  # Strides of the four downsampling blocks (1 or 2).
    use_se: bool = True  # Channel squeeze-excitation in the blocks that have it.
    se_reduction: int = 4  # Squeeze-excitation bottleneck: width // se_reduction, rounded to 8.
    head: str = "mlp"  # "mlp" or "fully_convolutional".
    last_channel: int = 1280  # Hidden width of the mlp head before width scaling.
    dropout: float = 0.2  # Dropout in the mlp head.
    # How depthwise and 1x1 convs are computed, "taps" or "xla" (layers.CONV_LOWERINGS): the same
    # function either way. Fixed here; a training run records layers.default_lowering().
    conv_lowering: str = "taps"

    def channels(self, c: int) -> int:
        return make_divisible(c * self.width_mult, 8)


class SqueezeExcitation(nnx.Module):
    """x * sigmoid(fc2(relu(fc1(mean over frequency and time of x))))."""

    def __init__(self, channels: int, squeeze: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(channels, squeeze, rngs=rngs)
        self.fc2 = nnx.Linear(squeeze, channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        return x * jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))


class InvertedResidual(nnx.Module):
    def __init__(self, in_c: int, kernel: int, exp_c: int, out_c: int, use_se: bool, act: str,
                 stride: int, config: MobileNetConfig, *, deploy: bool, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[act]
        lowering = config.conv_lowering
        self.expand = None if exp_c == in_c else ConvBN(in_c, exp_c, 1, act=False, deploy=deploy,
                                                        lowering=lowering, rngs=rngs)
        self.depthwise = ConvBN(exp_c, exp_c, kernel, stride, groups=exp_c, act=False, deploy=deploy,
                                lowering=lowering, rngs=rngs)
        self.se = SqueezeExcitation(exp_c, make_divisible(exp_c // config.se_reduction, 8), rngs=rngs) \
            if use_se and config.use_se else None
        self.project = ConvBN(exp_c, out_c, 1, act=False, deploy=deploy, lowering=lowering, rngs=rngs)
        self.residual = stride == 1 and in_c == out_c

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = x if self.expand is None else self.act(self.expand(x, train=train))
        h = self.act(self.depthwise(h, train=train))
        if self.se is not None:
            h = self.se(h)
        h = self.project(h, train=train)
        return h + x if self.residual else h


class MobileNet(nnx.Module):
    def __init__(self, config: MobileNetConfig = MobileNetConfig(), *, deploy: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        if len(config.strides) != 4 or not set(config.strides) <= {1, 2}:
            raise ValueError(f"strides needs 4 entries of 1 or 2, got {config.strides}")
        if config.head not in HEADS:
            raise ValueError(f"unknown head {config.head!r}; known: {HEADS}")
        if any(a[3] != b[0] for a, b in zip(config.blocks, config.blocks[1:])):
            raise ValueError("blocks: each block's input width must be the previous block's output width")
        ch, lowering = config.channels, config.conv_lowering
        self.stem = ConvBN(config.in_channels, ch(config.blocks[0][0]), 3, 2, act=False, deploy=deploy,
                           lowering=lowering, rngs=rngs)
        self.blocks = nnx.List([
            InvertedResidual(ch(i), k, ch(e), ch(o), se, act, 1 if slot is None else config.strides[slot],
                             config, deploy=deploy, rngs=rngs)
            for i, k, e, o, se, act, slot in config.blocks])
        last_in = ch(config.blocks[-1][3])
        self.last = ConvBN(last_in, 6 * last_in, 1, act=False, deploy=deploy, lowering=lowering, rngs=rngs)
        if config.head == "mlp":
            hidden = ch(config.last_channel)
            self.fc1 = nnx.Linear(6 * last_in, hidden, rngs=rngs)
            self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
            self.classifier = nnx.Linear(hidden, config.n_classes, rngs=rngs)
        else:
            self.classifier = ConvBN(6 * last_in, config.n_classes, 1, act=False, deploy=deploy,
                                     lowering=lowering, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        h = jax.nn.hard_swish(self.stem(x[..., None], train=train))  # (B, F, T) -> NHWC
        aux: dict[str, Any] = {"stem": h}
        h, aux["stages"] = run_stages(h, [[block] for block in self.blocks], train=train)
        h = jax.nn.hard_swish(self.last(h, train=train))
        aux["pre_logits"] = jnp.mean(h, axis=(1, 2))
        if self.config.head == "mlp":
            z = jax.nn.hard_swish(self.fc1(aux["pre_logits"]))
            logits = self.classifier(self.dropout(z, deterministic=not train))
        else:
            logits = jnp.mean(self.classifier(h, train=train), axis=(1, 2))
        return logits, aux


@register("mobilenet", conv_lowering=True)
def mobilenet(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> MobileNet:
    """EfficientAT MobileNetV3 mn06: 1,550,010 params / 29.2 MMACs on 256x63."""
    config = typed.make(MobileNetConfig, overrides, "mobilenet option")
    return MobileNet(config, deploy=deploy, rngs=rngs)
