"""ECAPA-TDNN, the speaker-embedding encoder, adapted to acoustic scene classification.

References:
  * B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN: Emphasized Channel Attention,
    Propagation and Aggregation in TDNN Based Speaker Verification", Interspeech 2020.
  * Code: github.com/wenet-e2e/wespeaker `wespeaker/models/ecapa_tdnn.py` (`ECAPA_TDNN_c512`) and
    `pooling_layers.py` (`ASTP`), followed here (wespeaker is the speaker toolkit of the SJTU
    group behind the DCASE2024 winner).

The log-mel bins are the channels of 1D convolutions over time: a k=5 conv, three SE-Res2Blocks
(1x1 conv, Res2Net-style dilated k=3 convs over channel groups, 1x1 conv, squeeze-excitation,
residual) with dilations 2, 3, 4, multi-layer feature aggregation (a 1x1 conv over the concatenated
block outputs), attentive statistics pooling, BN and a linear embedding. For ASC a linear
classifier on the embedding replaces the speaker-verification margin head.

As in the reference, every conv is followed by ReLU and *then* BatchNorm, so there is no BN to fold
into a conv: this model has no deploy form (it is a teacher). Its layers are named "conv"/"norm"
so that `asc_jax.reparam.fuse_tree` never mistakes them for a conv-BN pair.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.layers import BN_EPS, BN_MOMENTUM, BatchNorm, run_stages
from asc_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class ECAPATDNNConfig:
    n_classes: int = 10  # Output classes.
    n_mels: int = 256  # Input mel bins (the channels of the first conv).
    channels: int = 512  # Width C of the TDNN blocks (512 or 1024 in the reference).
    embed_dim: int = 192  # Embedding size before the classifier.
    scale: int = 8  # Res2Net scale: channel groups per Res2 conv (must divide `channels`).
    dilations: tuple[int, ...] = (2, 3, 4)  # One SE-Res2Block per dilation.
    se_bottleneck: int = 128  # Squeeze-excitation bottleneck width.
    attention_bottleneck: int = 128  # Attentive statistics pooling bottleneck width.
    global_context: bool = False  # Attention also sees utterance mean/std (ECAPA paper; wespeaker "GLOB").


def _bn(channels: int, rngs: nnx.Rngs) -> BatchNorm:
    return BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)


class ConvReluBN(nnx.Module):
    """1D conv (with bias) -> ReLU -> BatchNorm, on (B, T, C)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, dilation: int = 1, *, rngs: nnx.Rngs):
        pad = dilation * (kernel - 1) // 2
        self.conv = nnx.Conv(in_c, out_c, (kernel,), kernel_dilation=(dilation,), padding=((pad, pad),),
                             rngs=rngs)
        self.norm = _bn(out_c, rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.norm(jax.nn.relu(self.conv(x)), use_running_average=not train)


class Res2ConvReluBN(nnx.Module):
    """Res2Net conv: channel group i > 0 is conv'd after adding group i-1's output; the last group
    passes through unchanged."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, *, rngs: nnx.Rngs):
        if channels % scale:
            raise ValueError(f"Res2 conv: {channels} channels do not split into {scale} groups")
        self.scale = scale
        width = channels // scale
        self.convs = nnx.List([ConvReluBN(width, width, kernel, dilation, rngs=rngs)
                               for _ in range(scale - 1)])

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        groups = jnp.split(x, self.scale, axis=-1)
        out, sp = [], None
        for i, conv in enumerate(self.convs):
            sp = groups[i] if sp is None else sp + groups[i]
            sp = conv(sp, train=train)
            out.append(sp)
        return jnp.concatenate(out + [groups[-1]], axis=-1)


class SEConnect(nnx.Module):
    def __init__(self, channels: int, bottleneck: int, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(channels, bottleneck, rngs=rngs)
        self.linear2 = nnx.Linear(bottleneck, channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = jax.nn.relu(self.linear1(jnp.mean(x, axis=1)))
        return x * jax.nn.sigmoid(self.linear2(s))[:, None, :]


class SERes2Block(nnx.Module):
    def __init__(self, channels: int, dilation: int, config: ECAPATDNNConfig, *, rngs: nnx.Rngs):
        self.conv_in = ConvReluBN(channels, channels, rngs=rngs)
        self.res2 = Res2ConvReluBN(channels, 3, dilation, config.scale, rngs=rngs)
        self.conv_out = ConvReluBN(channels, channels, rngs=rngs)
        self.se = SEConnect(channels, config.se_bottleneck, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = self.conv_out(self.res2(self.conv_in(x, train=train), train=train), train=train)
        return x + self.se(h)


class AttentiveStatsPool(nnx.Module):
    """ASTP: per-channel softmax attention over time -> weighted mean and std, concatenated.

    The attention layers are k=1 convs as in the reference (so MACs count once per frame).
    """

    def __init__(self, dim: int, bottleneck: int, global_context: bool, *, rngs: nnx.Rngs):
        self.global_context = global_context
        self.attention1 = nnx.Conv(3 * dim if global_context else dim, bottleneck, (1,), rngs=rngs)
        self.attention2 = nnx.Conv(bottleneck, dim, (1,), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        if self.global_context:
            mean = jnp.broadcast_to(jnp.mean(x, axis=1, keepdims=True), x.shape)
            std = jnp.broadcast_to(jnp.sqrt(jnp.var(x, axis=1, keepdims=True, ddof=1) + 1e-10), x.shape)
            h = jnp.concatenate([x, mean, std], axis=-1)
        alpha = jax.nn.softmax(self.attention2(jnp.tanh(self.attention1(h))), axis=1)
        mean = jnp.sum(alpha * x, axis=1)
        var = jnp.sum(alpha * x**2, axis=1) - mean**2
        return jnp.concatenate([mean, jnp.sqrt(jnp.maximum(var, 1e-10))], axis=-1)


class ECAPATDNN(nnx.Module):
    def __init__(self, config: ECAPATDNNConfig = ECAPATDNNConfig(), *, rngs: nnx.Rngs):
        self.config = config
        c = config.channels
        self.stem = ConvReluBN(config.n_mels, c, 5, rngs=rngs)
        self.blocks = nnx.List([SERes2Block(c, d, config, rngs=rngs) for d in config.dilations])
        cat = c * len(config.dilations)
        self.mfa = nnx.Conv(cat, cat, (1,), rngs=rngs)
        self.pool = AttentiveStatsPool(cat, config.attention_bottleneck, config.global_context, rngs=rngs)
        self.pool_norm = _bn(2 * cat, rngs)
        self.embed = nnx.Linear(2 * cat, config.embed_dim, rngs=rngs)
        self.classifier = nnx.Linear(config.embed_dim, config.n_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        if x.ndim != 3 or x.shape[1] != self.config.n_mels:
            raise ValueError(f"ECAPA-TDNN expects (B, {self.config.n_mels}, T) log-mels, got {x.shape}")
        h = self.stem(jnp.swapaxes(x, 1, 2), train=train)  # mel bins are the channels: (B, T, F)
        aux: dict[str, Any] = {"stem": h}
        h, aux["stages"] = run_stages(h, [[block] for block in self.blocks], train=train)
        h = jax.nn.relu(self.mfa(jnp.concatenate(aux["stages"], axis=-1)))
        stats = self.pool_norm(self.pool(h), use_running_average=not train)
        aux["pre_logits"] = self.embed(stats)
        return self.classifier(aux["pre_logits"]), aux


@register("ecapa_tdnn", deploy_form=False)
def ecapa_tdnn(*, rngs: nnx.Rngs, deploy: bool = False, **overrides) -> ECAPATDNN:
    """ECAPA-TDNN (C=512) teacher: 6,249,994 params / 332 MMACs on 256x63."""
    if deploy:
        raise ValueError("ecapa_tdnn has no deploy form: its BatchNorms follow ReLUs, nothing folds")
    return ECAPATDNN(typed.make(ECAPATDNNConfig, overrides, "ecapa_tdnn option"), rngs=rngs)
