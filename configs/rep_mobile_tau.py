"""The paper's recipe: Rep-Mobile on TAU22 Mobile (DCASE2024 Task 1), one of the data splits.

    python train.py --config configs/rep_mobile_tau.py:split=25 --workdir runs/rep_mobile_s25 \
        --set data.root=/path/to/TAU-urban-acoustic-scenes-2022-mobile-development

Adam, peak lr 0.01 with 5 warmup epochs then cosine to 0, batch 128, 150 epochs (Han et al.);
roll <= 125 ms, freq-mask <= 48 bins, Freq-MixStyle (0.3, 0.7). On a single modern GPU a split-100
run takes about an hour (see benchmarks/README.md for throughput); the paper reports ~ 0.50-0.62
macro-class accuracy from split 5 to 100 without KD. Variants (comma-separated):
  split=5|10|25|50|100   training split (percent of the development-train set)
  model=rep_mobile|cp_mobile|...   any registered model
  width=N                base_channels (e.g. 64 or 96 as a pruning starting point)
  branches=3x3+1x1+3x1+1x3         depthwise branches (Table II ablations)
  seed=N, epochs=N
"""
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, parse_variant

# key -> default; width (base_channels) and branches ("3x3+1x1") default to the model's own.
VARIANTS = {"split": "100", "width": None, "branches": None, "model": "rep_mobile", "seed": 0, "epochs": 150}


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, VARIANTS, config="rep_mobile_tau.py")
    split = variant["split"]
    if split not in ("5", "10", "25", "50", "100"):
        raise ValueError(f"split must be one of 5, 10, 25, 50, 100; got {split}")
    options = {}
    if variant["width"] is not None:
        options["base_channels"] = variant["width"]
    if variant["branches"] is not None:
        options["branches"] = tuple(str(variant["branches"]).split("+"))
    return Config(
        seed=variant["seed"],
        data=DataConfig(root="data/tau22", generate=False, train_split=split, eval_split="test"),
        model=ModelConfig(name=variant["model"], options=options),
        optim=OptimConfig(lr=0.01, epochs=variant["epochs"], warmup_epochs=5, batch_size=128),
        eval_every_epochs=10,
        log_every_steps=50,
    )
