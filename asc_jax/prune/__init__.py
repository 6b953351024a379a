"""Progressive structured (channel) pruning: groups, importance, masks, schedules, slicing.

A package rather than the single prune.py of the design sketch: tracing channel groups out of a
jaxpr, the mask/optimizer plumbing, slicing and scheduling are separate concerns.

Masked finetuning (exact for models without cross-channel ops, e.g. dcase2024_baseline):

    schedule = plan(PruneConfig(target={"base_channels": 32}, rounds=2, finetune_epochs=5),
                    wide_model, build_reference=lambda o: build_model(name, rngs=nnx.Rngs(0), **o))
    tx = masked_pruning(optax.adam(1e-3))             # the masks live in the optimizer state
    ... before epoch e, if (r := schedule.round_at(e)) is not None:
        masks = schedule.masks(r, params, previous=get_masks(opt_state))
        params, opt_state = apply_masks(params, masks), set_masks(opt_state, masks)
    ... after training:
        config, narrow, groups = slice_model(model, schedule.groups, get_masks(opt_state), build)

With finetune="sliced" (needed for exactness with GRN, i.e. Rep-Mobile/CP-Mobile) each round
slices right away and finetuning continues on the narrow model:

        masks = schedule.masks(r, params, groups=groups)
        config, model, groups = slice_model(model, groups, masks, build)   # new optimizer state
"""
from asc_jax.prune.groups import DEFAULT_INPUT_SHAPE, ChannelGroup, channel_groups
from asc_jax.prune.masks import (
    IMPORTANCE, MaskedPruningState, apply_masks, compute_keep, compute_masks, get_masks,
    keep_from_masks, masked_pruning, masks_from_keep, set_masks)
from asc_jax.prune.schedule import (
    SCHEDULES, PruneConfig, PruneSchedule, plan, sparsity_of, widths_from_reference,
    widths_from_sparsity)
from asc_jax.prune.slicing import (
    NARROWERS, SlicedModel, narrow_config, slice_model, slice_state, slice_tree)

__all__ = [
    "DEFAULT_INPUT_SHAPE", "ChannelGroup", "channel_groups",
    "IMPORTANCE", "MaskedPruningState", "apply_masks", "compute_keep", "compute_masks", "get_masks",
    "keep_from_masks", "masked_pruning", "masks_from_keep", "set_masks",
    "SCHEDULES", "PruneConfig", "PruneSchedule", "plan", "sparsity_of", "widths_from_reference",
    "widths_from_sparsity",
    "NARROWERS", "SlicedModel", "narrow_config", "slice_model", "slice_state", "slice_tree",
]
