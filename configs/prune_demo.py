"""Demo of progressive pruning on the embedded synthetic dataset, with tiny budgets.

    python train.py --config configs/prune_demo.py --workdir runs/prune_demo

Trains Rep-Mobile at width 64 for 3 epochs on data/synthetic_tau (generated on first use), then
prunes it 64 -> 48 -> 32 (L1 importance, two rounds, widths linear in the round) and finetunes
1 epoch after each round; the result (workdir/deploy) has the base-32 widths: 126,952 params /
28,893,268 MACs in the BN form without branches. Expected on 2 CPU cores: ~10-15 minutes (three
runs; compilation dominates), macro-class accuracy above chance (0.10) in every phase; the
summary table (workdir/summary.json) lists accuracy, params and MACs per phase.
Variants: `configs/prune_demo.py:variant=single` (64 -> 32 in one round), width=N, epochs=N
(dense phase), finetune_epochs=N (per round), split=25, seed=N.
"""
import dataclasses
from pathlib import Path

from asc_jax.config import Config, ModelConfig, load_config, parse_variant
from asc_jax.prune import PruneConfig


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg)
    name = str(variant.get("variant", "progressive"))
    if name not in ("single", "progressive"):
        raise ValueError(f"variant must be single or progressive; got {name!r}")
    rounds = 2 if name == "progressive" else 1
    base = load_config(f"{Path(__file__).with_name('demo.py')}:epochs={variant.get('epochs', 3)},"
                       f"split={variant.get('split', 100)},seed={variant.get('seed', 0)}")
    return dataclasses.replace(
        base,
        model=ModelConfig(name="rep_mobile", options={"base_channels": int(variant.get("width", 64))}),
        eval_every_epochs=1,
        prune=PruneConfig(
            method="l1",
            schedule="linear" if rounds > 1 else "one_shot",
            target=(("base_channels", 32),),
            rounds=rounds,
            finetune_epochs=int(variant.get("finetune_epochs", 1)),
            round_to=8,
            finetune="sliced",
        ))
