"""Channel importance and masks: which channels of every group the slicing keeps.

A *keep vector* is one bool per channel of a group (True = kept); a *mask tree* has the
structure of the params tree it masks (nnx.State or nested dict), one bool array of the leaf's
full shape per leaf: False on every entry that belongs to a pruned channel along a member axis
of its group (producing kernels' out-columns, consuming kernels' in-rows, biases, BN affines),
True elsewhere. Pruning picks the channels to keep (`compute_keep`, by an IMPORTANCE score),
`compute_masks` spreads them over the params tree, and `asc_jax.prune.slicing` reads them back
(`keep_from_masks`) and drops the pruned indices along every member axis.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asc_jax.prune.groups import ChannelGroup, key_path
from asc_jax.registry import Registry
from asc_jax.surgery import Path

Keep = Mapping[str, np.ndarray]  # group name -> bool vector (True = channel kept)

# name -> fn(flat leaves {path: array}, group) -> one float score per channel (higher = keep).
IMPORTANCE: Registry[Callable[[Mapping[Path, np.ndarray], ChannelGroup], np.ndarray]] = Registry("importance")


def flat_leaves(tree: Any) -> dict[Path, Any]:
    """{pure-dict path: leaf} of a params/state tree (nnx.State, nested dict or nnx.Module)."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree)
    return {key_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _norm_per_channel(x: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(x).sum(axis=tuple(a for a in range(x.ndim) if a != axis))


@IMPORTANCE.register("l1")
def l1_importance(flat: Mapping[Path, np.ndarray], group: ChannelGroup) -> np.ndarray:
    """NNI L1NormPruner: L1 norm of each output filter of every kernel producing the group
    (all weights of that out-channel: in-channels x kernel taps), summed over the producers as
    NNI's dependency-aware mode does for coupled layers. Only producing kernels count: BN
    affines, biases and the in-rows of consuming convs do not, as in NNI.
    """
    return sum(_norm_per_channel(np.asarray(flat[path]), axis) for path, axis in group.producers)


@IMPORTANCE.register("bn_scale")
def bn_scale_importance(flat: Mapping[Path, np.ndarray], group: ChannelGroup) -> np.ndarray:
    """Network slimming (Liu et al. 2017): |gamma| of every BatchNorm of the group, summed."""
    if not group.bn_scales:
        raise ValueError(f"group {group.name!r} has no BatchNorm scale (deploy-form model?); "
                         f"use method='l1'")
    return sum(np.abs(np.asarray(flat[path])) for path in group.bn_scales)


def _check_widths(groups: Sequence[ChannelGroup], widths: Mapping[str, int]) -> dict[str, ChannelGroup]:
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(widths) - set(by_name))
    if unknown:
        raise ValueError(f"target widths name unknown channel groups {unknown}; known: {sorted(by_name)}")
    for name, width in widths.items():
        group = by_name[name]
        if not 1 <= width <= group.size:
            raise ValueError(f"group {name!r}: target width {width} outside [1, {group.size}]")
        if width < group.size and not group.prunable:
            raise ValueError(f"group {name!r} cannot be pruned: {group.frozen}")
    return by_name


def compute_keep(state: Any, groups: Sequence[ChannelGroup], widths: Mapping[str, int],
                 method: str = "l1", previous: Keep | None = None) -> dict[str, np.ndarray]:
    """Keep vectors: the `widths[g]` most important channels of each group g.

    Args:
      state: params (or full state) holding the groups' weights; a module is accepted too.
      groups: from `channel_groups`.
      widths: target width per group name; groups left out keep their current width.
      method: importance registered in IMPORTANCE ("l1" or "bn_scale").
      previous: keep vectors of an earlier round on the same params: pruned channels stay
        pruned, so successive rounds give nested keep vectors.
    Returns:
      {group name: bool vector}, for every group.
    """
    by_name = _check_widths(groups, widths)
    score_fn = IMPORTANCE.get(method)
    flat = flat_leaves(state)
    keep = {}
    for name, group in by_name.items():
        alive = np.ones(group.size, bool) if previous is None else np.asarray(previous[name], bool)
        width = widths.get(name, int(alive.sum()))
        if width > alive.sum():
            raise ValueError(f"group {name!r}: cannot grow from {int(alive.sum())} to {width} channels")
        if width == alive.sum():
            keep[name] = alive.copy()
            continue
        score = np.where(alive, np.asarray(score_fn(flat, group), np.float64), -np.inf)
        order = np.argsort(-score, kind="stable")  # ties: lower channel index wins
        vec = np.zeros(group.size, bool)
        vec[order[:width]] = True
        keep[name] = vec
    return keep


def _memberships(groups: Sequence[ChannelGroup]) -> dict[Path, list[tuple[int, str]]]:
    out: dict[Path, list[tuple[int, str]]] = {}
    for g in groups:
        for path, axis in g.members:
            out.setdefault(path, []).append((axis, g.name))
    return out


def masks_from_keep(tree: Any, groups: Sequence[ChannelGroup], keep: Keep) -> Any:
    """Full-shape bool masks with the structure of `tree` (params), from keep vectors."""
    member_of = _memberships(groups)

    def mask(path, leaf):
        m = np.ones(np.shape(leaf), bool)
        for axis, name in member_of.get(key_path(path), ()):
            shape = [1] * m.ndim
            shape[axis] = -1
            m = m & np.asarray(keep[name], bool).reshape(shape)
        return jnp.asarray(m)

    return jax.tree_util.tree_map_with_path(mask, tree)


def keep_from_masks(masks: Any, groups: Sequence[ChannelGroup]) -> dict[str, np.ndarray]:
    """Recovers keep vectors from a mask tree (e.g. one from `compute_masks`).

    A channel is kept iff any entry of its slice is kept; that reads correctly from kernels
    whose other axis is pruned too (a slice of a masked in-row is all False only if the row is).
    All members of a group present in `masks` must agree.
    """
    flat = flat_leaves(masks)
    keep = {}
    for g in groups:
        seen = [(p, a) for p, a in g.members if p in flat]
        if not seen:
            raise ValueError(f"the masks cover no leaf of group {g.name!r}")
        votes = [np.asarray(flat[p]).any(axis=tuple(k for k in range(np.ndim(flat[p])) if k != a))
                 for p, a in seen]
        if any(not np.array_equal(v, votes[0]) for v in votes[1:]):
            raise ValueError(f"masks disagree between the members of group {g.name!r}")
        keep[g.name] = votes[0]
    return keep


def compute_masks(model_or_state: Any, groups: Sequence[ChannelGroup], target_widths: Mapping[str, int],
                  method: str = "l1", previous: Any = None) -> Any:
    """Masks for the params of `model_or_state` keeping the most important channels.

    Args:
      model_or_state: an nnx.Module (masks then cover its nnx.Param state, the tree the training
        loop differentiates) or a params tree (masks get its structure).
      groups, target_widths, method: see `compute_keep`.
      previous: the mask tree of the previous round, if any (keeps masks nested).
    Returns:
      A mask tree: bool arrays with the structure and shapes of the params.
    """
    params = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    prev = None if previous is None else keep_from_masks(previous, groups)
    return masks_from_keep(params, groups, compute_keep(params, groups, target_widths, method, prev))
