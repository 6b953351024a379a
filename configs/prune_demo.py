"""Demo of progressive pruning on the embedded synthetic dataset, with tiny budgets.

    python train.py --config configs/prune_demo.py --workdir runs/prune_demo

Trains Rep-Mobile at width 48 for 4 epochs on data/synthetic_tau (3,000 training clips,
generated on first use), then prunes it 48 -> 40 -> 32 (L1 importance, two rounds, widths linear
in the round) and finetunes 2 epochs after each round, each round on its own schedule: a fresh
Adam at peak lr 0.001 (a tenth of the dense phase's 0.01: the sliced model is already trained)
without warmup, cosine to 0 at the round's last step. The result (workdir/deploy) has the base-32
widths: 126,952 params / 28,893,268 MACs in the BN form without branches, 124,862 params fused.
Three ordinary runs (phase0_dense, phase1_w40, phase2_w32). Measured (seed 0, one run, the
realistic profile, on the project's 2-core CPU machine while shared with other jobs: 22 min),
eval macro-class accuracy (chance 0.10): 0.679 dense at width 48, 0.668 after the round to 40,
0.671 after the round to 32 (real devices a/b/c 0.760, seen simulated s1-s3 0.743, unseen
s4-s6 0.510). As the issue measured it before
any fix (the easy profile, 64 -> 48 -> 32, 1-epoch rounds that were all warmup, ending at the
peak lr), the first round ended at 0.16. The table printed at the
end (and workdir/summary.json) lists accuracy, params and MACs per phase.
Rerunning the command skips finished phases.
Variants: `configs/prune_demo.py:variant=single` (48 -> 32 in one round), width=N, epochs=N
(dense phase), finetune_epochs=N (per round, >= 1), split=5|10|25|50|100, seed=N.
"""
import dataclasses
from pathlib import Path

from asc_jax.config import Config, ModelConfig, load_config, parse_variant
from asc_jax.prune import PruneConfig


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, {"variant": "progressive", "width": 48, "epochs": 4, "finetune_epochs": 2,
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
            # Rounds of a few epochs: no warmup (it would be a large share of the round), a tenth
            # of demo.py's dense lr 0.01 as the peak, cosine to 0 within the round.
            finetune_lr=1e-3,
            finetune_warmup_epochs=0,
            round_to=8,
        ))
