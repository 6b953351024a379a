"""Demo of progressive pruning on the embedded synthetic dataset, with tiny budgets.

    python train.py --config configs/prune_demo.py --workdir runs/prune_demo

Trains Rep-Mobile at width 48 for 4 epochs on data/synthetic_tau (3,000 training clips,
generated on first use), then prunes it 48 -> 40 -> 32 (L1 importance, two rounds, widths linear
in the round) and finetunes 1 epoch after each round; the result (workdir/deploy) has the base-32
widths: 126,952 params / 28,893,268 MACs in the BN form without branches, 124,862 params fused.
Three ordinary runs (phase0_dense, phase1_w40, phase2_w32); ~15 minutes on 2 CPU cores (about
10 for the dense phase). Measured eval macro-class accuracy (chance 0.10): 0.91 dense, 0.87 at
width 40, 0.89 at width 32; the table printed at the end (and workdir/summary.json) lists
accuracy, params and MACs per phase. Rerunning the command skips finished phases.
Variants: `configs/prune_demo.py:variant=single` (48 -> 32 in one round), width=N, epochs=N
(dense phase), finetune_epochs=N (per round), split=5|10|25|50|100, seed=N.
"""
import dataclasses
from pathlib import Path

from asc_jax.config import Config, ModelConfig, load_config, parse_variant
from asc_jax.prune import PruneConfig


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, {"variant": "progressive", "width": 48, "epochs": 4, "finetune_epochs": 1,
                                  "split": "100", "seed": 0}, config="prune_demo.py")
    name = variant["variant"]
    if name not in ("single", "progressive"):
        raise ValueError(f"variant must be single or progressive; got {name!r}")
    rounds = 2 if name == "progressive" else 1
    base = load_config(f"{Path(__file__).with_name('demo.py')}:epochs={variant['epochs']},"
                       f"split={variant['split']},seed={variant['seed']}")
    return dataclasses.replace(
        base,
        model=ModelConfig(name="rep_mobile", options={"base_channels": variant["width"]}),
        eval_every_epochs=1,
        prune=PruneConfig(
            method="l1",
            schedule="linear" if rounds > 1 else "one_shot",
            target=(("base_channels", 32),),
            rounds=rounds,
            finetune_epochs=variant["finetune_epochs"],
            round_to=8,
        ))
