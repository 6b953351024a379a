"""PaSST (Koutini et al., "Efficient Training of Audio Transformers with Patchout", 2021) in Flax NNX.

A structural port of `hear21passt.models.passt.PaSST` (hear21passt 0.0.26), the teacher used by
the CPJKU DCASE systems. Names follow the PyTorch module tree so that a state dict maps onto it
with a handful of declarative rules (`asc_jax.convert`):

  patch_embed        Conv 16x16, stride (10, 10), over the (n_mels x n_frames) spectrogram
  freq/time_new_pos_embed   separate positional embeddings per frequency row and time column;
                     the time one is cropped to the input's length (shorter clips)
  cls_token, dist_token, new_pos_embed   the two DeiT tokens and their positional embedding
  blocks[i]          pre-norm ViT blocks (LayerNorm eps 1e-6, fused qkv with bias, exact GELU)
  norm               final LayerNorm (eps 1e-6)
  head_norm, head    hear21passt's `head = Sequential(LayerNorm (eps 1e-5), Linear)` applied to
                     the mean of the cls and dist tokens; `head_dist` is built but never used by
                     its forward pass, so it does not exist here.

Structured patchout (whole frequency rows / time columns) and unstructured patchout drop tokens
in training only; the kept indices are drawn from the module's "patchout" RNG stream and shared
by the batch, as in the PyTorch code.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import typed
from asc_jax.models.registry import register

DEFAULT_VARIANT = "passt_s_swa_p16_128_ap476"


@dataclasses.dataclass(frozen=True)
class PaSSTConfig:
    n_classes: int = 527  # Output classes (AudioSet: 527).
    n_mels: int = 128  # Input frequency bins; sizes the frequency positional embedding.
    n_frames: int = 998  # Input frames the time positional embedding is sized for (10 s, hop 320).
    patch_size: int = 16  # Square patch side.
    fstride: int = 10  # Patch stride over frequency (overlapping patches when < patch_size).
    tstride: int = 10  # Patch stride over time.
    embed_dim: int = 768  # Token width.
    depth: int = 12  # Transformer blocks.
    num_heads: int = 12  # Attention heads.
    mlp_ratio: float = 4.0  # MLP hidden width / embed_dim.
    s_patchout_t: int = 0  # Structured patchout: time columns dropped in training.
    s_patchout_f: int = 0  # Structured patchout: frequency rows dropped in training.
    u_patchout: int = 0  # Unstructured patchout: single patches dropped in training.
    # Memory/speed options; neither changes the parameters, so any checkpoint loads either way.
    remat: bool = False  # Recompute each block's activations in the backward pass (jax.checkpoint).
    # "bfloat16": tokens, matmuls and attention in bfloat16 (params, LayerNorm statistics, the
    # softmax and the logits stay float32); "float32": everything in float32.
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(freq, time) sizes of the positional embeddings.

        hear21passt sizes them as img_size // stride, not by the conv output formula; the two agree
        for frequency at the released settings, and time is cropped at run time anyway.
        """
        return self.n_mels // self.fstride, self.n_frames // self.tstride


# Layouts of released checkpoints, by hear21passt model-function name. Time embedding lengths are
# those `get_model` enforces for each; for other checkpoints pass overrides (the strict merge
# names any mis-shaped positional embedding).
VARIANTS: Mapping[str, PaSSTConfig] = {
    "passt_s_swa_p16_128_ap476": PaSSTConfig(),
    "passt_s_kd_p16_128_ap486": PaSSTConfig(),
    "passt_l_kd_p16_128_ap47": PaSSTConfig(depth=7),
    "passt_s_p16_s16_128_ap468": PaSSTConfig(fstride=16, tstride=16),
    "passt_s_swa_f128_stfthop100_p16_s10_ap473": PaSSTConfig(n_frames=3200),
    "passt_s_swa_f128_stfthop160_p16_s10_ap473": PaSSTConfig(n_frames=2000),
    "passt_s_f128_20sec_p16_s10_ap474_swa": PaSSTConfig(n_frames=2000),
    "passt_s_f128_30sec_p16_s10_ap473_swa": PaSSTConfig(n_frames=3000),
}

# timm's trunc_normal_(std=.02) truncates at +-2 absolute, i.e. +-100 std: effectively a normal.
_normal = nnx.initializers.normal(stddev=0.02)


def _torch_conv_init(fan_in: int):
    """PyTorch's default Conv2d init, which hear21passt leaves the patch embedding with:
    kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the bias likewise."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(din: int, dout: int, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.Linear:
    # dtype: the computation's (inputs and kernel cast to it); the parameters stay float32.
    return nnx.Linear(din, dout, kernel_init=_normal, bias_init=nnx.initializers.zeros_init(),
                      dtype=dtype, rngs=rngs)


def _norm(dim: int, epsilon: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Statistics in float32 whatever the tokens' dtype; the output keeps the input's dtype.
    return nnx.LayerNorm(dim, epsilon=epsilon, dtype=jnp.float32, rngs=rngs)


def _normed(norm: nnx.LayerNorm, x: jax.Array) -> jax.Array:
    return norm(x.astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout: q, k, v then heads)."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = _linear(dim, 3 * dim, rngs, dtype)
        self.proj = _linear(dim, dim, rngs, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scale = (c // self.num_heads) ** -0.5
        scores = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(jnp.float32) * scale
        attn = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # the softmax in float32
        return self.proj(jnp.einsum("bhnm,bmhd->bnhd", attn, v).reshape(b, n, c))


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = _linear(dim, hidden, rngs, dtype)
        self.fc2 = _linear(hidden, dim, rngs, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm1 = _norm(dim, 1e-6, rngs)
        self.attn = Attention(dim, num_heads, rngs=rngs, dtype=dtype)
        self.norm2 = _norm(dim, 1e-6, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(_normed(self.norm1, x))
        return x + self.mlp(_normed(self.norm2, x))


class PaSST(nnx.Module):
    """PaSST with cls + dist tokens; input (B, n_mels, n_frames) log-mel in PaSST's own scaling."""

    def __init__(self, config: PaSSTConfig, *, rngs: nnx.Rngs):
        self.config = config
        e = config.embed_dim
        f_grid, t_grid = config.grid_size
        p = config.patch_size
        self.patch_embed = nnx.Conv(1, e, kernel_size=(p, p), strides=(config.fstride, config.tstride),
                                    padding="VALID", kernel_init=_torch_conv_init(p * p),
                                    bias_init=_torch_conv_init(p * p), rngs=rngs)
        # Stored channels-last: (1, F, 1, E) and (1, 1, T, E) broadcast over the (B, F, T, E) grid.
        self.freq_new_pos_embed = nnx.Param(_normal(rngs.params(), (1, f_grid, 1, e)))
        self.time_new_pos_embed = nnx.Param(_normal(rngs.params(), (1, 1, t_grid, e)))
        self.cls_token = nnx.Param(_normal(rngs.params(), (1, 1, e)))
        self.dist_token = nnx.Param(_normal(rngs.params(), (1, 1, e)))
        self.new_pos_embed = nnx.Param(_normal(rngs.params(), (1, 2, e)))
        dtype = jnp.dtype(config.compute_dtype)
        self.blocks = nnx.List([Block(e, config.num_heads, config.mlp_ratio, rngs=rngs, dtype=dtype)
                                for _ in range(config.depth)])
        self.norm = _norm(e, 1e-6, rngs)
        self.head_norm = nnx.LayerNorm(e, epsilon=1e-5, rngs=rngs)
        self.head = _linear(e, config.n_classes, rngs)
        uses_patchout = config.s_patchout_t or config.s_patchout_f or config.u_patchout
        self.patchout_rngs = rngs["patchout"].fork() if uses_patchout else nnx.data(None)

    def _keep(self, n: int, drop: int) -> jax.Array:
        """Sorted random subset of n - drop indices (torch.randperm(n)[:n - drop].sort())."""
        if drop >= n:
            raise ValueError(f"patchout drops {drop} of only {n} rows/columns/patches")
        return jnp.sort(jax.random.permutation(self.patchout_rngs(), n)[: n - drop])

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        cfg = self.config
        if x.ndim != 3 or x.shape[1] != cfg.n_mels:
            raise ValueError(f"PaSST expects (B, {cfg.n_mels}, T) log-mels, got shape {x.shape}")
        h = self.patch_embed(x[..., None])  # (B, F, T, E)
        b, f_dim, t_dim, e = h.shape
        f_grid, t_grid = cfg.grid_size
        if t_dim > t_grid or f_dim != f_grid:
            raise ValueError(
                f"input of {x.shape[2]} frames gives a {f_dim}x{t_dim} patch grid, but the positional "
                f"embeddings cover {f_grid}x{t_grid} (n_mels={cfg.n_mels}, n_frames={cfg.n_frames})")
        # Shorter inputs use the first t_dim time embeddings, exactly as hear21passt crops them.
        h = h + self.time_new_pos_embed[:, :, :t_dim] + self.freq_new_pos_embed[...]
        aux = {"stem": h}
        if train and cfg.s_patchout_t:
            h = h[:, :, self._keep(t_dim, cfg.s_patchout_t)]
        if train and cfg.s_patchout_f:
            h = h[:, self._keep(f_dim, cfg.s_patchout_f)]
        # Frequency-major flattening, like torch's (B, E, F, T).flatten(2).
        h = h.reshape(b, -1, e)
        if train and cfg.u_patchout:
            h = h[:, self._keep(h.shape[1], cfg.u_patchout)]
        tokens = (jnp.concatenate([self.cls_token[...], self.dist_token[...]], axis=1)
                  + self.new_pos_embed[...])
        h = jnp.concatenate([jnp.broadcast_to(tokens, (b, 2, e)), h], axis=1)
        h = h.astype(cfg.compute_dtype)
        for block in self.blocks:
            # remat: the backward pass recomputes the block's activations instead of storing them.
            h = nnx.remat(_call_block)(block, h) if cfg.remat else block(h)
        h = self.norm(h.astype(jnp.float32))
        aux["tokens"] = h
        features = (h[:, 0] + h[:, 1]) / 2
        aux["pre_logits"] = features
        return self.head(self.head_norm(features)), aux


def _call_block(block: Block, h: jax.Array) -> jax.Array:
    return block(h)


def passt_config(variant: str = DEFAULT_VARIANT, **overrides) -> PaSSTConfig:
    """The config of a released variant with field overrides (e.g. n_classes=10, depth=2)."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown PaSST variant {variant!r}; known: {', '.join(sorted(VARIANTS))}")
    return dataclasses.replace(VARIANTS[variant], **typed.checked(PaSSTConfig, overrides, "passt option"))


@register("passt", deploy_form=False)
def passt(*, rngs: nnx.Rngs, variant: str = DEFAULT_VARIANT, deploy: bool = False,
          **overrides) -> PaSST:
    """PaSST-S (85.7M params at the defaults); `variant` picks a released checkpoint's layout.

    `deploy` exists for the registry's common signature: PaSST has no separate deploy form.
    """
    if deploy:
        raise ValueError("PaSST has no deploy (reparameterised) form")
    return PaSST(passt_config(variant, **overrides), rngs=rngs)
