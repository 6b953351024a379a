"""Demo: Rep-Mobile on the embedded synthetic TAU-layout dataset (the project's main job).

    python train.py --config configs/demo.py --workdir runs/demo

Generates the dataset on first use (data/synthetic_tau: 3,000 train + 900 test clips, under a
minute), then trains the full Rep-Mobile for 6 epochs (276 steps of 64 clips) on the CPU or
accelerator. Expected on 2 CPU cores: ~6-10 minutes, eval macro-class accuracy well above chance
(0.10); see README for measured numbers. Writes checkpoints, metrics, plots, the fused deploy
model and its complexity report into the workdir.
Variants: `configs/demo.py:epochs=12,model=cp_mobile,split=25`.
"""
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, parse_variant

VARIANTS = {"split": "100", "epochs": 6, "model": "rep_mobile", "seed": 0}  # key -> default


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, VARIANTS, config="demo.py")
    return Config(
        seed=variant["seed"],
        data=DataConfig(root="data/synthetic_tau", generate=True, train_split=variant["split"]),
        model=ModelConfig(name=variant["model"]),
        optim=OptimConfig(lr=0.01, epochs=variant["epochs"], warmup_epochs=1, batch_size=64),
        eval_every_epochs=2,
        log_every_steps=10,
    )
