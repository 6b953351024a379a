"""Demo: ensemble knowledge distillation on the embedded synthetic dataset, end to end.

  # 1. two CNN teachers, wider than the student, on the same split (data generated on first use)
  python train.py --config configs/demo.py:model=cp_mobile,seed=1 \
      --set model.options.base_channels=48 --workdir runs/demo_teacher_cpm
  python train.py --config configs/demo.py:seed=2 \
      --set model.options.base_channels=48 --workdir runs/demo_teacher_rpm
  # 2. their logits under 4 stored augmentations of every training clip, sampled from this
  #    (the student's) config's augmentation; written to its kd.store, stores/demo_split100
  python -m asc_jax.distill precompute --config configs/kd_demo.py \
      --teacher runs/demo_teacher_cpm --teacher runs/demo_teacher_rpm --views 4 --seed 0
  # 3. the student (configs/demo.py) distilled from them, and the same run without KD
  python train.py --config configs/kd_demo.py --workdir runs/kd_demo
  python train.py --config configs/kd_demo.py:teachers=none --workdir runs/kd_demo_none

The teachers are named cp_mobile-demo_teacher_cpm and rep_mobile-demo_teacher_rpm (both CNNs, so
teachers=cnn selects the same ensemble as all; a converted PaSST added with --teacher would form
the transformer ensemble). Runtime: the student runs take as long as configs/demo.py (6 epochs,
~6-10 minutes on 2 CPU cores; teachers never run during training); each 48-channel teacher costs
roughly twice that (estimated from its MACs, not measured), the precompute a few minutes. Expect
the KD student's eval macro accuracy at or above the run without KD, and `agree_ensemble` in
metrics.jsonl to rise over training.

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
