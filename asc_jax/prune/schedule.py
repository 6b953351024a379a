"""Pruning configuration and schedule: what to prune, and to which widths in each round.

A `PruneConfig` (frozen, built from an experiment config) plus the model gives a
`PruneSchedule` via `plan`: the channel groups and the target widths after each round. Each round
keeps the most important channels down to its widths (`compute_masks`, or `schedule.masks`),
slices them out (`slice_model`) and finetunes the narrow model; `asc_jax.train.progressive` runs
the rounds as training phases.

Target widths come either from a reference model (`target`: model-config overrides, e.g.
base_channels=32: every group gets the width it has in the base-32 model, which is what "prune
width 96 to width 32" means) or from a uniform sparsity. The "linear" schedule lowers every group's
width linearly over the rounds (sparsity increasing linearly, 96 -> 64 -> 32 in two rounds).

Each round's finetuning has a recipe of its own (finetune_epochs, finetune_lr,
finetune_warmup_epochs): a fresh optimizer, a short warmup or none, then cosine to 0 within the
round, so that every round hands a settled model to the next one rather than one at its peak lr.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np
from flax import nnx

from asc_jax.prune.groups import DEFAULT_INPUT_SHAPE, ChannelGroup, channel_groups
from asc_jax.prune.masks import IMPORTANCE, compute_masks
from asc_jax.registry import Registry

# name -> fn(start width, final width, rounds, round_to) -> width after each round.
SCHEDULES: Registry[Callable[[int, int, int, int], list[int]]] = Registry("prune schedule")


def round_width(width: float, multiple: int) -> int:
    """Nearest multiple of `multiple` (halves round up), at least `multiple`."""
    return max(multiple, int(width / multiple + 0.5) * multiple)


@SCHEDULES.register("one_shot")
def one_shot(start: int, final: int, rounds: int, round_to: int) -> list[int]:
    return [final]


@SCHEDULES.register("linear")
def linear(start: int, final: int, rounds: int, round_to: int) -> list[int]:
    """Width after round r of R: start - (start - final) * r / R, rounded to `round_to` and kept
    within [final, start]; the last round lands exactly on `final`."""
    widths = [min(start, max(final, round_width(start - (start - final) * r / rounds, round_to)))
              for r in range(1, rounds)]
    return widths + [final]


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    method: str = "l1"  # Channel importance: "l1" (NNI L1NormPruner) or "bn_scale" (|BN gamma|).
    schedule: str = "linear"  # Widths over rounds: "one_shot" or "linear" (sparsity linear in rounds).
    # Final width as model-config overrides of a reference model, e.g. (("base_channels", 32),):
    # every channel group is pruned to its width in that model.
    target: tuple[tuple[str, Any], ...] = ()
    sparsity: float | None = None  # Instead of `target`: fraction of each prunable group removed.
    rounds: int = 1  # Pruning rounds; each slices the model, then finetunes the narrow one.
    finetune_epochs: int = 0  # Epochs of finetuning after each round.
    # Peak learning rate of every finetuning round, which is its own warmup_cosine schedule (cosine
    # to 0 at the round's last step), whatever the dense phase's recipe. A tenth of the students'
    # dense 0.01: the sliced model starts from trained weights, and a fresh Adam state makes the
    # first updates about lr per weight whatever the gradient's size, so the dense peak risks
    # scrambling much of what the round keeps.
    finetune_lr: float = 1e-3
    # Linear warmup epochs of each round before its cosine (0: start at finetune_lr). Less than
    # finetune_epochs, so that every round decays to 0 before the next prunes it.
    finetune_warmup_epochs: int = 0
    round_to: int = 1  # Intermediate and sparsity-derived widths are multiples of this (e.g. 8).
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE  # Batch shape used to trace the model.

    def __post_init__(self):
        if isinstance(self.target, Mapping):
            object.__setattr__(self, "target", tuple(sorted(self.target.items())))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        IMPORTANCE.get(self.method)
        SCHEDULES.get(self.schedule)
        if bool(self.target) == (self.sparsity is not None):
            raise ValueError("set exactly one of PruneConfig.target and PruneConfig.sparsity")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.rounds < 1 or (self.schedule == "one_shot" and self.rounds != 1):
            raise ValueError(f"schedule {self.schedule!r} cannot have {self.rounds} rounds")
        if self.rounds > 1 and self.finetune_epochs < 1:
            raise ValueError("progressive pruning needs finetune_epochs >= 1 between rounds")
        if self.round_to < 1 or self.finetune_epochs < 0:
            raise ValueError("round_to must be >= 1 and finetune_epochs >= 0")
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise ValueError(f"finetune_lr must be a finite learning rate > 0, got {self.finetune_lr}")
        if self.finetune_warmup_epochs < 0:
            raise ValueError(f"finetune_warmup_epochs must be >= 0, got {self.finetune_warmup_epochs}")
        if self.finetune_warmup_epochs and self.finetune_warmup_epochs >= self.finetune_epochs:
            # The round would end at (or before) its peak lr instead of decaying to 0.
            raise ValueError(f"finetune_warmup_epochs={self.finetune_warmup_epochs} must be less than "
                             f"finetune_epochs={self.finetune_epochs}: each round must decay after its warmup")


@dataclasses.dataclass(frozen=True)
class PruneSchedule:
    groups: tuple[ChannelGroup, ...]  # Channel groups of the unpruned model.
    widths: tuple[Mapping[str, int], ...]  # Target width of every group after each round.
    method: str  # Importance method.

    @property
    def rounds(self) -> int:
        return len(self.widths)

    def masks(self, round_index: int, params: Any, previous: Any = None,
              groups: tuple[ChannelGroup, ...] | None = None) -> Any:
        """Masks of round `round_index` (0-based) for `params`, nested inside `previous`.

        Args:
          groups: the groups of the model `params` belong to; defaults to the unpruned model's.
            After a round pass those of the current narrow model (`slice_model` returns them):
            same names and members, smaller sizes.
        """
        return compute_masks(params, groups or self.groups, self.widths[round_index], self.method, previous)


def widths_from_reference(groups: tuple[ChannelGroup, ...], reference: nnx.Module,
                          input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> dict[str, int]:
    """Width of every group in `reference`, a model of the same structure but other widths."""
    ref = {g.name: g for g in channel_groups(reference, input_shape)}
    own = {g.name: g for g in groups}
    if set(ref) != set(own) or any(ref[n].members != own[n].members for n in own):
        differ = sorted(n for n in set(ref) | set(own)
                        if n not in ref or n not in own or ref[n].members != own[n].members)
        raise ValueError(f"the reference model's channel groups differ from the model's: {differ}")
    return {n: ref[n].size for n in own}


def widths_from_sparsity(groups: tuple[ChannelGroup, ...], sparsity: float, round_to: int = 1) -> dict[str, int]:
    """Every prunable group keeps (1 - sparsity) of its channels, rounded to `round_to`."""
    return {g.name: (min(g.size, round_width(g.size * (1.0 - sparsity), round_to)) if g.prunable else g.size)
            for g in groups}


def plan(cfg: PruneConfig, model: nnx.Module,
         build_reference: Callable[[dict], nnx.Module] | None = None) -> PruneSchedule:
    """The pruning schedule of `model` under `cfg`.

    Args:
      cfg: the pruning config.
      model: the wide model to prune (may be abstract).
      build_reference: needed when `cfg.target` is set: builds the model with the given config
        overrides applied (e.g. `lambda o: build_model(name, rngs=nnx.Rngs(0), **{**kw, **o})`);
        it is only traced abstractly.
    Returns:
      The PruneSchedule.
    """
    groups = channel_groups(model, cfg.input_shape)
    if cfg.sparsity is not None:
        final = widths_from_sparsity(groups, cfg.sparsity, cfg.round_to)
    else:
        if build_reference is None:
            raise ValueError("PruneConfig.target is set: plan() needs build_reference")
        reference = nnx.eval_shape(lambda: build_reference(dict(cfg.target)))
        final = widths_from_reference(groups, reference, cfg.input_shape)
    for g in groups:
        if final[g.name] > g.size:
            raise ValueError(f"target width {final[g.name]} of group {g.name!r} exceeds its size {g.size}")
        if final[g.name] < g.size and not g.prunable:
            raise ValueError(f"the target prunes group {g.name!r}, which cannot be pruned: {g.frozen}")
    per_group = {g.name: SCHEDULES.get(cfg.schedule)(g.size, final[g.name], cfg.rounds, cfg.round_to)
                 for g in groups}
    widths = tuple({name: w[r] for name, w in per_group.items()} for r in range(cfg.rounds))
    return PruneSchedule(groups=groups, widths=widths, method=cfg.method)


def sparsity_of(widths: Mapping[str, int], groups: tuple[ChannelGroup, ...]) -> float:
    """Fraction of the prunable channels removed by `widths` (for logging)."""
    total = sum(g.size for g in groups if g.prunable)
    return float(1.0 - np.sum([widths[g.name] for g in groups if g.prunable]) / total) if total else 0.0
