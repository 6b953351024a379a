"""Demo: Rep-Mobile on the embedded synthetic TAU-layout dataset (the project's main job).

    python train.py --config configs/demo.py --workdir runs/demo

Generates the dataset on first use (data/synthetic_tau, the realistic profile: 3,000 train + 900
test clips, a few minutes), then trains the full Rep-Mobile for 6 epochs (276 steps of 64 clips)
on the CPU or accelerator, and writes checkpoints, metrics, plots, the fused deploy model and its
complexity report into the workdir.

Measured (seeds 0-2 where given, else seed 0; the project's 2-core CPU machine, shared with other
jobs; README "The embedded dataset"), eval macro-class accuracy (chance 0.10):
    configs/demo.py                       0.671  (seen devices 0.757, unseen s4-s6 0.500), 12 min
      seeds 0, 1, 2                       0.683 +- 0.022 (0.671, 0.708, 0.670); seen devices
                                          0.754, unseen 0.540 +- 0.058
    configs/demo.py:split=25,epochs=24    0.648 +- 0.015 (0.639, 0.666, 0.639; 264 steps on 25 % of
                                          the clips; unseen 0.476 +- 0.046), 8-10 min
    configs/demo.py:split=5,epochs=138    0.464 +- 0.040 (0.424, 0.466, 0.503; the same 276 steps
                                          on 5 % of the clips; unseen 0.338 +- 0.037), 5-10 min
    configs/demo.py:model=cp_mobile       0.685 +- 0.012 (0.680, 0.699, 0.676; unseen 0.551), 6-7 min
Over 3 seeds and more systems: the demo grid, `python -m asc_jax.experiments demo`.
Variants: `configs/demo.py:epochs=12,model=cp_mobile,split=25`.
"""
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, parse_variant

VARIANTS = {"split": "100", "epochs": 6, "model": "rep_mobile", "seed": 0}  # key -> default


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, VARIANTS, config="demo.py")
    return Config(
        seed=variant["seed"],
        # The realistic profile (asc_jax.data.synthetic.profiles): scenes share sources, places
        # colour their sound, devices distort strongly; the easy one is for unit tests.
        data=DataConfig(root="data/synthetic_tau", generate=True, synthetic={"profile": "realistic"},
                        train_split=variant["split"]),
        model=ModelConfig(name=variant["model"]),
        optim=OptimConfig(lr=0.01, epochs=variant["epochs"], warmup_epochs=1, batch_size=64),
        # Three evaluations per run whatever the split (split=5,epochs=138 is 2 steps an epoch).
        eval_every_epochs=max(1, variant["epochs"] // 3),
        log_every_steps=10,
    )
