"""PaSST teachers fine-tuned on one TAU22 Mobile split, in JAX (Table III rows "PaSST" and "PaSST-PT").

    # AudioSet weights (PaSST-PT), converted once with a new 10-class head:
    python convert_weights.py --arch passt --torch-ckpt passt-s-f128-p16-s10-ap.476-swa.pt \
        --out pretrained/passt_audioset --num-classes 10
    python train.py --config configs/passt_tau.py:split=25,init=audioset,seed=1 \
        --workdir runs/passt_pt_s25_1 --set data.root=/path/to/TAU-urban-acoustic-scenes-2022-mobile-development
    # then, per split, the teacher store the students distil from:
    python -m asc_jax.distill precompute --config configs/kd_tau.py:split=25 \
        --set data.root=... --teacher s1=runs/passt_pt_s25_1 --views 8

The recipe is CPJKU's published PaSST teacher fine-tuning for this dataset (cpjku_dcase23
`run_passt_training.py`, the teachers of the DCASE2023/24 CPJKU systems), stated setting by
setting:

  model       passt_s_swa_p16_128_ap476 (PaSST-S, 16x16 patches, stride 10, 128 mels), new 10-class
              head. The positional embeddings keep the released 10-s layout (99 time columns) and
              are cropped to the 9 columns of a 1-s clip, as hear21passt does for short clips.
  patchout    structured, frequency only: 6 of the 12 frequency rows dropped per training step
              (s_patchout_f=6, s_patchout_t=0); none in evaluation.
  frontend    PaSST's own log-mel (frontend="passt": preemphasis, 128 Kaldi mels, hop 320,
              (x + 4.5) / 5).
  optimiser   AdamW, lr 1e-5, weight decay 1e-3, batch 80, 25 epochs; lr schedule
              exp_warmup_linear_down (exponential warmup for 3 epochs, constant, linear ramp down
              from epoch 3 over 10 epochs to 1 % of the peak, then constant).
  augment     roll <= 10,000 samples (0.3125 s at 32 kHz), frequency mask <= 48 of 128 bins,
              time mask <= 20 frames, Freq-MixStyle alpha 0.4, p 0.4.
  not here    device impulse responses (their dir_prob 0.6) and the filterbank's fmin/fmax jitter
              are not implemented yet (the PyTorch-assets issue); they are left out, not replaced.

Initialisations (variant init=...):
  audioset  PaSST-PT: `pretrained/passt_audioset`, the AudioSet checkpoint converted as above.
  scratch   PaSST without AudioSet: a random initialisation (torch-style init of every layer). The
            paper's "PaSST" row is not AudioSet-pretrained; its exact initialisation is not
            stated, so this row is the fully from-scratch transformer. An ImageNet DeiT checkpoint
            of the same layout, converted to a saved model, can be used with init=DIR instead.
  DIR       any saved asc-jax PaSST of this layout (10 classes, 128 mels, patch 16): loaded
            strictly, its frontend must be PaSST's.

Runtime: PaSST-S is ~86 M parameters; a split-100 epoch (139,620 clips) is GPU work (not measured
here). CPU runs are only practical for the tiny PaSST of the tests (`tests/test_passt_training.py`).
Variants: split=5|10|25|50|100, init=audioset|scratch|DIR, seed=N, epochs=N.
"""
from asc_jax.audio.augment import (AugmentConfig, FreqMaskConfig, MixStyleConfig, RollConfig,
                                   TimeMaskConfig)
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, parse_variant

VARIANTS = {"split": "100", "init": "audioset", "seed": 0, "epochs": 25}
AUDIOSET_INIT = "pretrained/passt_audioset"


def get_config(arg: str | None = None) -> Config:
    variant = parse_variant(arg, VARIANTS, config="passt_tau.py")
    split = variant["split"]
    if split not in ("5", "10", "25", "50", "100"):
        raise ValueError(f"split must be one of 5, 10, 25, 50, 100; got {split}")
    init = str(variant["init"])
    init_from = {"audioset": AUDIOSET_INIT, "scratch": ""}.get(init, init)
    return Config(
        seed=variant["seed"],
        frontend="passt",
        data=DataConfig(root="data/tau22", generate=False, train_split=split, eval_split="test"),
        augment=AugmentConfig(
            roll=RollConfig(max_shift_s=10_000 / 32_000),
            freq_mask=FreqMaskConfig(mask_param=48, n_mels=128),
            mixstyle=MixStyleConfig(alpha=0.4, p=0.4),
            time_mask=TimeMaskConfig(mask_param=20, n_frames=100),
        ),
        model=ModelConfig(name="passt", options={"n_classes": 10, "s_patchout_t": 0, "s_patchout_f": 6},
                          init_from=init_from),
        optim=OptimConfig(lr=1e-5, epochs=variant["epochs"], warmup_epochs=3, batch_size=80,
                          weight_decay=1e-3, lr_schedule="exp_warmup_linear_down", ramp_down_start=3,
                          ramp_down_epochs=10, last_lr_factor=0.01),
        eval_every_epochs=1,
        log_every_steps=50,
    )
