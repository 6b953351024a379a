"""DCASE2025 Task 1, stage 2: fine-tune the general (stage-1) model on one recording device.

    # stage 1, the general model on the 25 % split (any student: KD, pruned, fused at the end)
    python train.py --config configs/rep_mobile_tau.py:split=25 --workdir runs/s25 --set data.root=DATA
    # stage 2 for every training device (a, b, c, s1, s2, s3), then the device set in runs/s25_dev/set
    python -m asc_jax.device_specific train --base runs/s25 --config configs/device_tau.py:split=25 \
        --workdir runs/s25_dev --set data.root=DATA
    # or one device as a plain train.py run
    python train.py --config configs/device_tau.py:split=25,device=b,base=runs/s25 --workdir runs/s25_dev/b \
        --set data.root=DATA

Recipe (asc_jax.device_specific.device_config fills in the rest): the stage-1 model, its name
and options read from the base's model/model.json (a pruned model keeps its sliced widths),
initialised from that training form (model.init_from); the training split restricted to the
device's clips (data.devices); the eval split whole (every device's accuracy, the device's own
among them, lands in eval/final.json). The frontend must be stage 1's (here the default log-mel;
a run initialised from weights of another frontend is refused).

Optimisation follows the DCASE2025 baseline's device-specific fine-tuning
(CPJKU/dcase2025_task1_baseline, train_device_specific.py, read from a public copy of it): all
parameters fine-tuned with AdamW, lr 5e-4, weight decay 1e-4, batch 256, 50 epochs, cosine decay
after a warmup, Freq-MixStyle off (mixstyle_p = 0 there: mixing device statistics works against
specialising on one device). Differences, chosen here: the warmup is counted in epochs (2; the
baseline's 200 steps are ~2 epochs of device a's ~25k clips at batch 256 but ~28 of a small
device's ~1.9k), and the roll (0.125 s) and frequency mask (48 bins) are stage 1's settings (the
baseline rolls 0.1 s in both stages).

Runtime: the six devices together see the split's clips for 50 epochs at twice stage 1's batch,
about a third of stage 1's training compute (150 epochs of configs/rep_mobile_tau.py), plus four
passes over the whole test split per device (every 25 epochs and two at the end). Expected:
each device's accuracy on its own clips at or above the base's (the baseline reports +0.2 to
+4.9 points on devices a, b, c, s1, s2 and -0.1 on s3); unknown devices unchanged.
Variants: split=25 (DCASE2025's; 5/10/50/100 for experiments), device=a|b|c|s1|s2|s3 with
base=WORKDIR (both or neither: the command above sets them per device), epochs=N, seed=N.
"""
from asc_jax.audio.augment import AugmentConfig
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, parse_variant
from asc_jax.device_specific import device_variant

VARIANTS = {"split": "25", "device": None, "base": None, "epochs": 50, "seed": 0}  # key -> default


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, VARIANTS, config="device_tau.py")
    if variant["split"] not in ("5", "10", "25", "50", "100"):
        raise ValueError(f"device_tau.py: split must be one of 5, 10, 25, 50, 100; got {variant['split']}")
    config = Config(
        seed=variant["seed"],
        data=DataConfig(root="data/tau22", generate=False, train_split=variant["split"], eval_split="test"),
        model=ModelConfig(),  # replaced by the base's (device_config)
        optim=OptimConfig(lr=5e-4, epochs=variant["epochs"], warmup_epochs=2, batch_size=256, weight_decay=1e-4),
        augment=AugmentConfig(mixstyle=None),
        eval_every_epochs=25,
        log_every_steps=20,
    )
    return device_variant(config, variant["device"], variant["base"], config_name="device_tau.py")
