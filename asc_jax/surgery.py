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


def _fmt(path: Path) -> str:
    return "/".join(str(p) for p in path)


def check_tree_match(got: dict, expected: dict, *, what: str = "tree") -> None:
    """Raises ValueError listing every missing, unexpected and mis-shaped leaf."""
    got_flat, exp_flat = flatten(got), flatten(expected)
    missing = sorted(_fmt(p) for p in exp_flat.keys() - got_flat.keys())
    unexpected = sorted(_fmt(p) for p in got_flat.keys() - exp_flat.keys())
    shapes = sorted(
        f"{_fmt(p)}: got {np.shape(got_flat[p])}, expected {np.shape(exp_flat[p])}"
        for p in got_flat.keys() & exp_flat.keys()
        if tuple(np.shape(got_flat[p])) != tuple(np.shape(exp_flat[p])))
    if missing or unexpected or shapes:
        lines = [f"{what} does not match the target module:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20])
                             + (" ..." if len(items) > 20 else ""))
        raise ValueError("\n".join(lines))


def load_into(build: Callable[[], nnx.Module], tree: dict) -> nnx.Module:
    """Builds `build()` abstractly (nnx.eval_shape, no allocation) and fills it with `tree`."""
    abstract = nnx.eval_shape(build)
    graphdef, state = nnx.split(abstract)
    check_tree_match(tree, state.to_pure_dict())
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, tree))
    return nnx.merge(graphdef, state)


def module_tree(model: nnx.Module) -> dict:
    """All variables of `model` (params and batch statistics) as a nested dict of arrays."""
    return nnx.state(model).to_pure_dict()
