"""Physical slicing: a state and keep masks -> the state and config of a genuinely narrower model.

`slice_tree` is the pure surgery (drop the pruned indices along every member axis of every
group); `slice_state` adds the narrowed model config, read off the sliced shapes by
`narrow_config` (the only model-specific piece of pruning: it knows which config fields the
widths live in, for the Rep-Mobile family); `slice_model` loads the result into a freshly built
narrow module through the strict `asc_jax.surgery.load_into` and re-traces it to prove that
slicing changed widths only, not structure (equal widths can switch on shortcuts that the wide
model lacked).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
from flax import nnx

from asc_jax.models.rep_mobile import RepMobileConfig
from asc_jax.prune.groups import DEFAULT_INPUT_SHAPE, ChannelGroup, channel_groups
from asc_jax.prune.masks import Keep, flat_leaves, keep_from_masks
from asc_jax.surgery import Path, load_into, module_tree


def _unflatten(flat: Mapping[Path, Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def slice_tree(tree: Any, groups: Sequence[ChannelGroup], keep: Keep) -> dict:
    """Keeps only the kept channels of every group in every leaf of `tree`.

    Args:
      tree: a state tree (params and batch statistics, nested dict or nnx.State), or any tree
        with the same paths (gradients, optimizer moments as nested dicts).
      groups: from `channel_groups`.
      keep: {group name: bool vector}; groups not named keep all channels.
    Returns:
      A nested dict of numpy arrays.
    """
    unknown = sorted(set(keep) - {g.name for g in groups})
    if unknown:
        raise ValueError(f"keep vectors name unknown channel groups {unknown}")
    idx = {g.name: np.flatnonzero(np.asarray(keep[g.name], bool)) for g in groups if g.name in keep}
    for g in groups:
        if g.name in idx:
            if len(keep[g.name]) != g.size:
                raise ValueError(f"keep vector of {g.name!r} has {len(keep[g.name])} entries, group has {g.size}")
            if not len(idx[g.name]):
                raise ValueError(f"keep vector of {g.name!r} keeps no channel")
            if len(idx[g.name]) < g.size and not g.prunable:
                raise ValueError(f"group {g.name!r} cannot be pruned: {g.frozen}")
    flat = {p: np.asarray(v) for p, v in flat_leaves(tree).items()}
    for g in groups:
        if g.name not in idx:
            continue
        for path, axis in g.members:
            if path in flat:
                flat[path] = np.take(flat[path], idx[g.name], axis=axis)
    return _unflatten(flat)


def narrow_config(config: Any, tree: dict) -> RepMobileConfig:
    """The config of the model whose (sliced) state is `tree`: `config` with explicit widths.

    Args:
      config: the config of the model `tree` was sliced from: a RepMobileConfig (rep_mobile,
        cp_mobile, dcase2024_baseline), which has a field for every width.
      tree: the sliced state tree (training or deploy form).
    Raises:
      TypeError: for any other config.
    """
    if not isinstance(config, RepMobileConfig):
        raise TypeError(f"{type(config).__name__} cannot be narrowed: slicing only knows where "
                        f"RepMobileConfig (rep_mobile, cp_mobile, dcase2024_baseline) keeps its widths")

    # Output widths read off the conv kernels (last axis), which exist in training and deploy form.
    def out_width(*path) -> int:
        node = tree
        for key in path:
            node = node[key]
        return int(np.shape(node["conv"]["kernel"])[-1])

    stages = tree["stages"]
    return dataclasses.replace(
        config,
        stem_channels=out_width("stem", 0),
        stage_channels=(out_width("stem", 1),) + tuple(
            out_width("stages", s, len(stages[s]) - 1, "project") for s in range(len(stages))),
        expansion_channels=tuple(out_width("stages", s, b, "expand")
                                 for s in range(len(stages)) for b in range(len(stages[s]))))


def slice_state(state: Any, groups: Sequence[ChannelGroup], masks: Any, config: Any) -> tuple[Any, dict]:
    """Pure slicing of a model state down to the channels `masks` keeps.

    Args:
      state: the wide model's full state (params and batch stats; nested dict or nnx.State).
      groups: from `channel_groups` of the wide model.
      masks: the mask tree (from `compute_masks`).
      config: the wide model's config.
    Returns:
      (config of the narrow model, its state tree).
    """
    tree = slice_tree(state, groups, keep_from_masks(masks, groups))
    return narrow_config(config, tree), tree


class SlicedModel(NamedTuple):
    config: Any  # Config of the narrow model.
    model: nnx.Module  # The narrow model, carrying the kept weights.
    groups: tuple[ChannelGroup, ...]  # Its channel groups (same names and members, new sizes).


def slice_model(model: nnx.Module, groups: Sequence[ChannelGroup], masks: Any,
                build: Callable[[Any], nnx.Module],
                input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> SlicedModel:
    """The narrow module holding the channels of `model` that `masks` keeps, built by
    `build(narrow_config)`.

    Raises ValueError if the narrow model's channel groups differ from the wide model's in
    anything but their sizes (e.g. a residual shortcut appeared because two widths became
    equal), since it would then compute something else than the wide model restricted to the
    kept channels.
    """
    keep = keep_from_masks(masks, groups)
    tree = slice_tree(module_tree(model), groups, keep)
    config = narrow_config(model.config, tree)
    narrow = load_into(lambda: build(config), tree)
    expected = {g.name: (int(np.sum(keep[g.name])), g.members) for g in groups}
    narrow_groups = channel_groups(narrow, input_shape)
    got = {g.name: (g.size, g.members) for g in narrow_groups}
    if got != expected:
        changed = sorted(n for n in set(got) | set(expected) if got.get(n) != expected.get(n))
        raise ValueError(f"slicing changed the structure of the network, not only its widths "
                         f"(groups {changed}); e.g. equal in/out widths switch on a residual "
                         f"shortcut. Choose other target widths.")
    return SlicedModel(config, narrow, narrow_groups)
