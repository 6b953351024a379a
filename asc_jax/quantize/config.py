"""Settings of int8 quantization (`QuantConfig`) and of quantization-aware finetuning (`QATConfig`)."""
from __future__ import annotations

import dataclasses

from asc_jax.audio.augment import AugmentConfig

CALIBRATIONS = ("minmax", "percentile")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 8  # Symmetric per-output-channel conv weights, stored as int8 (2..8 bits).
    act_bits: int | None = 8  # Per-tensor affine conv inputs (2..8 bits); None = weight-only.
    calibration: str = "minmax"  # Conv-input ranges over the calibration batch: "minmax" or "percentile".
    percentile: float = 99.99  # With "percentile": range = [P(100 - p), P(p)] of each conv input.

    def __post_init__(self):
        if not 2 <= self.weight_bits <= 8:
            raise ValueError(f"weight_bits must be in 2..8 (stored as int8), got {self.weight_bits}")
        if self.act_bits is not None and not 2 <= self.act_bits <= 8:
            raise ValueError(f"act_bits must be in 2..8 or None, got {self.act_bits}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")


@dataclasses.dataclass(frozen=True)
class QATConfig:
    """Quantization-aware finetuning of a float deploy model (`finetune_qat`, CLI --qat)."""

    epochs: int = 5  # Passes over the training split.
    lr: float = 1e-4  # Peak Adam lr, cosine-decayed to 0 without warmup (1% of training's 0.01).
    batch_size: int = 64  # Clips per step; each epoch drops its last partial batch.
    train_split: str = "100"  # DCASE split finetuned on: "5", "10", "25", "50" or "100".
    augment: AugmentConfig = AugmentConfig()  # Training augmentations (default: those of training).

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"QAT needs epochs >= 1, batch_size >= 1 and lr > 0, got {self}")
