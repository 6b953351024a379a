"""Demo of DCASE2025 device-specific models on the embedded synthetic dataset (CPU-sized).

    python train.py --config configs/demo.py:split=25 --workdir runs/demo25          # stage 1
    python -m asc_jax.device_specific train --base runs/demo25 \
        --config configs/device_demo.py --workdir runs/demo25_dev                     # stage 2 + set
    python -m asc_jax.device_specific complexity --set runs/demo25_dev/set
    python -m asc_jax.device_specific quantize --set runs/demo25_dev/set \
        --data-root data/synthetic_tau --out runs/demo25_dev/set_int8

The recipe of configs/device_tau.py (stage-1 model and weights, the device's clips of the 25 %
split, AdamW with weight decay 1e-4, no Freq-MixStyle) scaled to the demo: split 25 of the
embedded set holds ~125 clips per device, so batch 32 for 10 epochs (~40 steps per device) at
lr 1e-3, twice the baseline's 5e-4 because a 6-epoch demo model has further to go than a
150-epoch one. Runtime on 2 CPU cores, estimated from the demo's step time (not measured): 1-2
minutes per device, three passes over the 900 test clips included. It reads configs/demo.py's
dataset (the realistic profile), as stage 1 does. Expected (not measured at this size): the device models' accuracy on their own clips near or above the base's; with
tests/test_device_specific.py's tiny model and 50 training clips per device this recipe gained
6-12 points on four of the six devices and lost 2 and 14 on the other two (50 test clips each, so
one clip is 2 points). Unseen devices s4-s6 are unchanged: they use the base.
Variants as configs/device_tau.py: split, device + base (one device as a train.py run), epochs, seed.
"""
import dataclasses
from pathlib import Path

from asc_jax.audio.augment import AugmentConfig
from asc_jax.config import Config, ModelConfig, OptimConfig, load_config, parse_variant
from asc_jax.device_specific import device_variant

VARIANTS = {"split": "25", "device": None, "base": None, "epochs": 10, "seed": 0}  # key -> default


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, VARIANTS, config="device_demo.py")
    config = Config(
        seed=variant["seed"],
        # configs/demo.py's dataset (root, realistic profile), which stage 1 trained on.
        data=dataclasses.replace(load_config(str(Path(__file__).with_name("demo.py"))).data,
                                 train_split=variant["split"]),
        model=ModelConfig(),  # replaced by the base's (device_config)
        optim=OptimConfig(lr=1e-3, epochs=variant["epochs"], warmup_epochs=1, batch_size=32, weight_decay=1e-4),
        augment=AugmentConfig(mixstyle=None),
        eval_every_epochs=10,
        log_every_steps=10,
    )
    return device_variant(config, variant["device"], variant["base"], config_name="device_demo.py")
