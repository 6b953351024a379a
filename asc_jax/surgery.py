"""Helpers for pure surgery on NNX state trees (reparameterisation, slicing, conversion).

Surgery functions map one nested dict of arrays (`nnx.State.to_pure_dict()`) to another; these
helpers turn modules into such trees and load trees into freshly shaped modules through a strict
merge that fails loudly on any missing, unexpected or mis-shaped entry (big_vision's
`merge_params` rule: silent partial loads are the classic source of "why is my model random").
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

Path = tuple[str, ...]


def flatten(tree: dict, prefix: Path = ()) -> dict[Path, Any]:
    """Nested dict -> {path tuple: leaf}."""
    out = {}
    for key, value in tree.items():
        path = prefix + (key,)
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))


def check_tree_match(got: dict, expected: dict, *, what: str = "loading weights") -> None:
    """Raises ValueError listing every missing, unexpected and mis-shaped leaf, all at once.

    `got` is the incoming tree (a checkpoint, a fused or sliced tree), `expected` the target
    module's. Paths compare as strings: serialisers (orbax, JSON) turn nnx.List's integer keys
    into text.
    """
    got_flat = {"/".join(map(str, p)): v for p, v in flatten(got).items()}
    exp_flat = {"/".join(map(str, p)): v for p, v in flatten(expected).items()}
    missing = sorted(k for k in exp_flat if k not in got_flat)
    unexpected = sorted(k for k in got_flat if k not in exp_flat)
    mis_shaped = sorted(f"{k}: checkpoint {_shape(got_flat[k])} vs model {_shape(exp_flat[k])}"
                        for k in exp_flat if k in got_flat and _shape(got_flat[k]) != _shape(exp_flat[k]))
    problems = [(title, keys) for title, keys in (
        ("missing from the checkpoint", missing), ("not in the model", unexpected),
        ("with the wrong shape", mis_shaped)) if keys]
    if problems:
        lines = [f"{len(keys)} key(s) {title}:\n  " + "\n  ".join(keys) for title, keys in problems]
        raise ValueError(f"{what} failed\n" + "\n".join(lines))


def load_into(build: Callable[[], nnx.Module], tree: dict) -> nnx.Module:
    """Builds `build()` abstractly (nnx.eval_shape, no allocation) and fills it with `tree`."""
    abstract = nnx.eval_shape(build)
    graphdef, state = nnx.split(abstract)
    check_tree_match(tree, state.to_pure_dict(), what="loading a surgically derived tree")
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, tree))
    return nnx.merge(graphdef, state)


def module_tree(model: nnx.Module) -> dict:
    """All variables of `model` (params and batch statistics) as a nested dict of arrays."""
    return nnx.state(model).to_pure_dict()
