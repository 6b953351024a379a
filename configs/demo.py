"""Demo: Rep-Mobile on the embedded synthetic TAU-layout dataset (the project's main job).

    python train.py --config configs/demo.py --workdir runs/demo

Generates the dataset on first use (data/synthetic_tau, < 1 min), then trains for a few
minutes on 2 CPU cores. Expected: eval macro-class accuracy well above chance (0.10), see
README for measured numbers; writes checkpoints, metrics, plots and the fused deploy model.
Variants: `configs/demo.py:epochs=30,model=cp_mobile`.
"""
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, parse_variant


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg)
    return Config(
        seed=variant.get("seed", 0),
        data=DataConfig(root="data/synthetic_tau", generate=True, train_split=str(variant.get("split", 100))),
        model=ModelConfig(name=variant.get("model", "rep_mobile")),
        optim=OptimConfig(lr=0.01, epochs=variant.get("epochs", 12), warmup_epochs=1, batch_size=64),
        eval_every_epochs=3,
        log_every_steps=10,
    )

