"""Demo: ensemble knowledge distillation on the embedded synthetic dataset, end to end.

  # 1. two CNN teachers, twice as wide as the student and trained twice as long, on the same
  #    split (data generated on first use)
  python train.py --config configs/demo.py:model=cp_mobile,seed=1,epochs=12 \
      --set model.options.base_channels=64 --workdir runs/demo_teacher_cpm
  python train.py --config configs/demo.py:seed=2,epochs=12 \
      --set model.options.base_channels=64 --workdir runs/demo_teacher_rpm
  # 2. their logits under 6 stored augmentations of every training clip (one per student
  #    epoch), sampled from this (the student's) config's augmentation; written to its kd.store,
  #    stores/demo_split100
  python -m asc_jax.distill precompute --config configs/kd_demo.py \
      --teacher runs/demo_teacher_cpm --teacher runs/demo_teacher_rpm --views 6 --seed 0
  # 3. the student (configs/demo.py) distilled from them, and the same run without KD
  python train.py --config configs/kd_demo.py --workdir runs/kd_demo
  python train.py --config configs/kd_demo.py:teachers=none --workdir runs/kd_demo_none

The teachers are named cp_mobile-demo_teacher_cpm and rep_mobile-demo_teacher_rpm (both CNNs, so
teachers=cnn selects the same ensemble as all; a converted PaSST added with --teacher would form
the transformer ensemble); teachers never run during student training.

Measured (these commands, the realistic profile, on the project's 2-core CPU VM shared with other
jobs; one run each; README "Demo grid"), eval macro-class accuracy (chance 0.10):
    teacher CP-Mobile base 64 (seed 1)     0.774  (unseen devices 0.660), 38 min
    teacher Rep-Mobile base 64 (seed 2)    0.759  (unseen 0.587), 42 min
    precompute (6 views x 3,000 clips)     5.5 min
    configs/kd_demo.py:seed=0|1|2         0.708 +- 0.003 (0.704, 0.709, 0.711; unseen 0.573), 9-10 min
    no KD: configs/demo.py:seed=0|1|2     0.683 +- 0.022 (0.671, 0.708, 0.670; unseen 0.540)
KD gains +2.5 +- 2.1 points seed for seed (+3.3, +0.1, +4.1; one store, one set of teachers):
in the paper's direction on every seed, about one no-KD seed std, so an indication rather than
a significant effect. The same recipe over splits 5/25/100 is the demo grid
(`python -m asc_jax.experiments demo`), not yet run.

Variants: teachers=none|cnn|all, kd=cpjku|paper (asc_jax.distill.KD_PRESETS), store=PATH (default
stores/demo_split{split}), and those of configs/demo.py: split=N, epochs=N, model=..., seed=N.
"""
from pathlib import Path

from asc_jax.config import Config
from asc_jax.distill import kd_student_config

# Passed on to configs/demo.py, which checks them and holds their defaults.
_BASE_VARIANTS = {"split": None, "epochs": None, "model": None, "seed": None}


def get_config(arg: str | None = None) -> Config:
    return kd_student_config(arg, base=Path(__file__).with_name("demo.py"), base_variants=_BASE_VARIANTS,
                             teacher_sets=("none", "cnn", "all"), store_prefix="stores/demo_split",
                             config="kd_demo.py")
