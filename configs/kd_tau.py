"""Table IV (Han et al.): Rep-Mobile students distilled from teacher ensembles, for every split.

Each row of the table is one run per split N in 5, 10, 25, 50, 100:

  teachers=none          baseline without KD (exactly configs/rep_mobile_tau.py:split=N)
  teachers=cnn           ensemble of the CNN teachers (cp_resnet, cp_mobile, ...)
  teachers=transformer   ensemble of the PaSST teachers
  teachers=all           both ensembles together

Teachers are trained on split N only (the DCASE2024 rule) and precomputed once per split into a
teacher-logit store, by default `stores/split{N}`; the ensembles are selected from it by name
(`<arch>-<tag>`, see asc_jax.distill.ENSEMBLES), so one store serves the three KD rows:

  # CNN teachers: train.py with a bigger model, on split N; PaSST teachers: checkpoints
  # fine-tuned on split N, converted (convert_weights.py --arch passt --num-classes 10).
  python -m asc_jax.distill precompute --config configs/kd_tau.py:split=25 \
      --set data.root=/path/to/TAU22 \
      --teacher s1=teachers/split25/passt_1 --teacher s2=teachers/split25/passt_2 \
      --teacher s1=runs/cp_resnet_s25_1 --teacher s2=runs/cp_resnet_s25_2 \
      --views 8 --seed 0
  python train.py --config configs/kd_tau.py:split=25,teachers=all --workdir runs/kd_s25_all \
      --set data.root=/path/to/TAU22

The precompute reads the student's config (same --config and --set as train.py): the store
holds the clips of its split, goes to its kd.store (stores/split25) and samples its
augmentation, here roll <= 125 ms and one frequency band <= 48 of 256 bins per view. The
student replays them and adds Freq-MixStyle fresh; it refuses a store computed under other
augmentation settings. Runtime is that of the baseline (teachers never run during training: about
an hour for split 100 on one modern GPU); the result to compare is eval macro-class accuracy of
the four rows per split, as in Table IV (summary.json, eval/final.json).

KD hyper-parameters (variant kd=..., or --set kd.lam=... kd.tau=...), from
asc_jax.distill.KD_PRESETS (asc_jax/distill/loss.py explains them):

  kd=cpjku (default)  CPJKU's KD recipe: tau = 2, KL scaled by tau^2, and their lambda = 0.02
                      converted to this code's KL convention (lam = 0.1695 for 10 classes).
  kd=paper            the paper's values taken literally (tau = 0.1, lam = 0.02, no tau^2 factor).
                      Not validated here.

Other variants (passed to configs/rep_mobile_tau.py): width=N, branches=..., model=..., seed=N,
epochs=N; store=PATH overrides the store directory.
"""
from pathlib import Path

from asc_jax.config import Config
from asc_jax.distill import kd_student_config

TEACHER_SETS = ("none", "cnn", "transformer", "all")
# Passed on to configs/rep_mobile_tau.py, which checks them and holds their defaults.
_BASE_VARIANTS = {"split": None, "width": None, "branches": None, "model": None, "seed": None, "epochs": None}


def get_config(arg: str | None = None) -> Config:
    return kd_student_config(arg, base=Path(__file__).with_name("rep_mobile_tau.py"),
                             base_variants=_BASE_VARIANTS, teacher_sets=TEACHER_SETS,
                             store_prefix="stores/split", config="kd_tau.py")
