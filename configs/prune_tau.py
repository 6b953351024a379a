"""Table V of Han et al.: direct training vs single-step vs progressive pruning to width 32.

    python train.py --config configs/prune_tau.py:split=25,variant=progressive96 --workdir runs/p96 \
        --set data.root=/path/to/TAU-urban-acoustic-scenes-2022-mobile-development

Every variant uses the paper's recipe of configs/rep_mobile_tau.py (Rep-Mobile, Adam, lr 0.01,
5 warmup epochs + cosine, batch 128) on the chosen split; the pruned variants end with a model of
exactly the base-32 widths (BN form without branches: 126,952 params, 28,893,268 MACs).
Variants (`variant=`):
  direct32 | direct64 | direct96   no pruning: train at that width for `epochs`
  single64to32 | single96to32     train the wide model, prune once (L1, NNI L1NormPruner) to the
                                  base-32 widths, finetune
  progressive96                   train width 96, prune 96 -> 64 -> 32 (two rounds, widths linear
                                  in the round, intermediate widths multiples of 8), finetune after
                                  each round
Epochs. The dense phase trains for the recipe's 150 epochs (`epochs=N`), like direct training.
The paper does not state the finetuning length per round; the choice here is an equal
finetuning budget of 150 epochs after the dense phase for every pruned variant (single-step:
1 x 150, progressive: 2 x 75), so that Table V compares pruning schedules rather than compute
(`finetune_epochs=N` per round to change it). The finetuning optimizer is this repository's
choice too (no recipe for it is taken from the paper): each round starts a fresh Adam (batch
128) from the pruned weights at peak lr 0.001, a tenth of the dense 0.01 because the sliced
model is already trained, without warmup, cosine to 0 at the round's last step
(`--set prune.finetune_lr=X`, `--set prune.finetune_warmup_epochs=N` with N below the round's
epochs). KD settings (kd.*) apply to all phases.
Runtime: one 150-epoch split-25 run at width 32 is ~1/4 of the ~1 h split-100 run on a modern
GPU; width 96 costs ~3x more per epoch, so progressive96 takes roughly 1.5 h on one GPU.
Expected: the paper reports progressive > single-step > direct training at width 32 (Table V).
The dense wide model of a direct64/direct96 run can be reused as the starting point of
single64to32 / single96to32 / progressive96 with `--set model.init_from=runs/direct96/model`
(phase 0 is then only evaluated). Other variants: seed=N, split=5|10|25|50|100.
"""
import dataclasses
from pathlib import Path

from asc_jax.config import Config, load_config, parse_variant
from asc_jax.prune import PruneConfig

# variant -> (width trained first, pruning rounds to base 32 or None for direct training).
VARIANTS = {
    "direct32": (32, None), "direct64": (64, None), "direct96": (96, None),
    "single64to32": (64, 1), "single96to32": (96, 1), "progressive96": (96, 2),
}
FINETUNE_BUDGET = 150  # Finetuning epochs after the dense phase, shared equally by the rounds.


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, {"variant": "progressive96", "split": "25", "seed": 0, "epochs": 150,
                                  "finetune_epochs": 0}, config="prune_tau.py")  # 0: the budget's share
    name = variant["variant"]
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {name!r}")
    width, rounds = VARIANTS[name]
    base = load_config(f"{Path(__file__).with_name('rep_mobile_tau.py')}:split={variant['split']},"
                       f"width={width},seed={variant['seed']},epochs={variant['epochs']}")
    if rounds is None:
        return base
    return dataclasses.replace(base, prune=PruneConfig(
        method="l1",
        schedule="linear" if rounds > 1 else "one_shot",
        target=(("base_channels", 32),),
        rounds=rounds,
        finetune_epochs=variant["finetune_epochs"] or FINETUNE_BUDGET // rounds,
        # Not the paper's (none is taken from it). A tenth of the dense peak: the pruned model is
        # trained, and a fresh Adam's first updates are ~lr per weight. No warmup: rounds may be
        # as short as 1 epoch (the experiments' smoke grid), and warmup < finetune_epochs.
        finetune_lr=1e-3,
        finetune_warmup_epochs=0,
        round_to=8,
    ))
