"""Training: functional state, jitted steps, the train-and-evaluate loop, pruning phases.

`run(config, workdir)` is what `train.py` and the experiments runner call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from asc_jax.config import Config
from asc_jax.train import progressive
from asc_jax.train.loop import check_resumable, record_config, train_and_evaluate

__all__ = ["check_resumable", "record_config", "run", "train_and_evaluate"]


def run(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming what an earlier call left there: one
    `train_and_evaluate`, or, when config.prune is set, the phases of `progressive.train_and_prune`
    (dense training, then prune + finetune rounds).

    Returns:
      The run's summary (summary["finished"] is False when config.max_steps stopped it early).
    """
    if config.prune is not None:
        return progressive.train_and_prune(config, workdir)
    return train_and_evaluate(config, workdir)
