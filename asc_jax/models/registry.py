"""The model registry: name -> builder(config fields..., rngs) -> nnx.Module.

Every model in the zoo returns `(logits, aux)` from `__call__(x, *, train=False)`, where `x` is a
log-mel batch (B, n_mels, n_frames).
"""
from __future__ import annotations

from typing import Any

from flax import nnx

from asc_jax.registry import Registry

MODELS: Registry = Registry("model")


def build_model(name: str, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Builds the registered model `name` with keyword overrides of its config."""
    return MODELS.get(name)(rngs=rngs, **kwargs)
