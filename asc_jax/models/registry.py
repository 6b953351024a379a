"""The model registry: name -> builder(config fields..., rngs) -> nnx.Module.

Every model in the zoo returns `(logits, aux)` from `__call__(x, *, train=False)`, where `x` is a
log-mel batch (B, n_mels, n_frames).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import nnx

from asc_jax.models.layers import default_lowering
from asc_jax.registry import Registry

MODELS: Registry = Registry("model")
# Registered models whose config has a `conv_lowering` field (the CNNs built from the convs of
# `models.layers`), so that a run can fill in its default without building the model.
CONV_LOWERING_MODELS: set[str] = set()
# Registered models without a separate deploy (fused) form (PaSST): they deploy as trained.
NO_DEPLOY_FORM: set[str] = set()


def register(name: str, *, conv_lowering: bool = False, deploy_form: bool = True) -> Callable:
    """`MODELS.register(name)`; `conv_lowering=True` marks a model whose config takes that option,
    `deploy_form=False` one that has no fused deploy form (`has_deploy_form`)."""
    def decorator(builder: Callable) -> Callable:
        MODELS.register(name)(builder)
        if conv_lowering:
            CONV_LOWERING_MODELS.add(name)
        if not deploy_form:
            NO_DEPLOY_FORM.add(name)
        return builder

    return decorator


def has_deploy_form(name: str) -> bool:
    """Whether model `name` is fused into a separate deploy form after training (the CNNs)."""
    MODELS.get(name)  # an unknown name fails here, naming the registered ones
    return name not in NO_DEPLOY_FORM


def build_model(name: str, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Builds the registered model `name` with keyword overrides of its config."""
    return MODELS.get(name)(rngs=rngs, **kwargs)


def with_default_lowering(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with `conv_lowering` set to `layers.default_lowering()` where model `name` takes
    it and `options` leave it open; call once per run, before the options are recorded."""
    if name not in CONV_LOWERING_MODELS or "conv_lowering" in options:
        return dict(options)
    return {**options, "conv_lowering": default_lowering()}
