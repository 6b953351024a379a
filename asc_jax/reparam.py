"""Structural reparameterisation: training-form state tree -> deploy-form state tree.

Pure functions on nested dicts (`asc_jax.surgery`). Two rewrites, applied wherever the tree has
their shape, so every ConvBN-based model of the zoo is fused by the same code:
  * a ConvBN node {"conv": {"kernel"[, "bias"]}, "bn": {...}} becomes {"conv": {"kernel", "bias"}}
    with the BatchNorm folded in (y = s * (conv(x) + b - mean) + beta, s = scale / sqrt(var + eps));
  * a multi-branch node {"branches": {name: ConvBN}} becomes {"fused": {"kernel", "bias"}}: each
    branch is BN-folded, its kernel zero-padded (centred) to the union kernel, and all are summed.
    Summing is exact because convolution is linear and the centred padding keeps every branch's
    receptive field aligned with the 3x3 one's (all use the same stride and "same" padding).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax.surgery import Path, load_into, module_tree


def bn_epsilons(model: nnx.Module) -> dict[Path, float]:
    """{path of the ConvBN node owning a BatchNorm: its epsilon}, read from the modules."""
    return {tuple(path[:-1]): float(m.epsilon) for path, m in nnx.iter_modules(model)
            if isinstance(m, nnx.BatchNorm) and path and path[-1] == "bn"}


def fold_conv_bn(node: dict, eps: float) -> dict:
    """{"conv", "bn"} -> {"conv": {"kernel", "bias"}} with the BN folded in (per output channel)."""
    conv, bn = node["conv"], node["bn"]
    s = bn["scale"] / jnp.sqrt(bn["var"] + eps)
    bias = conv.get("bias", 0.0)
    return {"conv": {"kernel": conv["kernel"] * s, "bias": (bias - bn["mean"]) * s + bn["bias"]}}


def _pad_centred(kernel: jnp.ndarray, target: tuple[int, int]) -> jnp.ndarray:
    dh, dw = target[0] - kernel.shape[0], target[1] - kernel.shape[1]
    if dh % 2 or dw % 2 or dh < 0 or dw < 0:
        raise ValueError(f"cannot centre a {kernel.shape[:2]} kernel in {target}")
    return jnp.pad(kernel, ((dh // 2, dh // 2), (dw // 2, dw // 2), (0, 0), (0, 0)))


def fuse_branches(branches: dict, epsilons: dict[str, float]) -> dict:
    """{name: ConvBN node} -> {"kernel", "bias"} of one conv equal to the sum of the branches."""
    folded = [fold_conv_bn(node, epsilons[name])["conv"] for name, node in branches.items()]
    target = (max(f["kernel"].shape[0] for f in folded), max(f["kernel"].shape[1] for f in folded))
    return {"kernel": sum(_pad_centred(f["kernel"], target) for f in folded),
            "bias": sum(f["bias"] for f in folded)}


def fuse_tree(tree: dict, epsilons: dict[Path, float], path: Path = ()) -> dict:
    """Rewrites every ConvBN and multi-branch node of a training-form tree into deploy form.

    Args:
      tree: nested dict of arrays (a module's full state: params and batch statistics).
      epsilons: BatchNorm eps per ConvBN node path, from `bn_epsilons`.
    Returns:
      The deploy-form tree: no BatchNorm statistics or branches left.
    """
    if "branches" in tree:
        eps = {name: epsilons[path + ("branches", name)] for name in tree["branches"]}
        return {"fused": fuse_branches(tree["branches"], eps),
                **{k: fuse_tree(v, epsilons, path + (k,)) for k, v in tree.items() if k != "branches"}}
    if "conv" in tree and "bn" in tree:
        rest = {k: fuse_tree(v, epsilons, path + (k,)) for k, v in tree.items() if k not in ("conv", "bn")}
        return {**fold_conv_bn(tree, epsilons[path]), **rest}
    return {k: (fuse_tree(v, epsilons, path + (k,)) if isinstance(v, dict) else v) for k, v in tree.items()}


def fuse(model: nnx.Module, build_deploy: Callable[[], nnx.Module]) -> nnx.Module:
    """The deploy module built by `build_deploy`, carrying `model`'s fused weights.

    The tree rewrite runs as one jitted program: eagerly, every layer's folding ops dispatch
    (and compile) one by one, seconds for a Rep-Mobile on CPU.
    """
    epsilons = bn_epsilons(model)
    return load_into(build_deploy, jax.jit(lambda tree: fuse_tree(tree, epsilons))(module_tree(model)))
