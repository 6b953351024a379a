"""Progressive structured (channel) pruning: groups, importance, masks, schedules, slicing.

A package rather than the single prune.py of the design sketch: tracing channel groups out of a
jaxpr, importance and keep masks, slicing and scheduling are separate concerns.

Every round keeps the most important channels of each group, slices the rest out and finetunes
the narrow model (`asc_jax.train.progressive` runs the rounds as training phases):

    schedule = plan(PruneConfig(target={"base_channels": 32}, rounds=2, finetune_epochs=5),
                    wide_model, build_reference=lambda o: build_model(name, rngs=nnx.Rngs(0), **o))
    model, groups = wide_model, schedule.groups
    for r in range(schedule.rounds):
        masks = schedule.masks(r, nnx.state(model, nnx.Param), groups=groups)
        config, model, groups = slice_model(model, groups, masks, build)  # a narrower model
        ... finetune `model` (a fresh optimizer state: the shapes changed)
"""
from asc_jax.prune.groups import DEFAULT_INPUT_SHAPE, ChannelGroup, channel_groups
from asc_jax.prune.masks import (
    IMPORTANCE, compute_keep, compute_masks, keep_from_masks, masks_from_keep)
from asc_jax.prune.schedule import (
    SCHEDULES, PruneConfig, PruneSchedule, plan, sparsity_of, widths_from_reference,
    widths_from_sparsity)
from asc_jax.prune.slicing import (
    SlicedModel, narrow_config, slice_model, slice_state, slice_tree)

__all__ = [
    "DEFAULT_INPUT_SHAPE", "ChannelGroup", "channel_groups",
    "IMPORTANCE", "compute_keep", "compute_masks", "keep_from_masks", "masks_from_keep",
    "SCHEDULES", "PruneConfig", "PruneSchedule", "plan", "sparsity_of", "widths_from_reference",
    "widths_from_sparsity",
    "SlicedModel", "narrow_config", "slice_model", "slice_state", "slice_tree",
]
