"""DCASE2025 Task 1 device-specific models: two-stage training, evaluation and deployment of a set.

DCASE2025 gives the recording device at inference and allows one model per device; the limits
(128 kB of parameters, 30 MMACs) apply to each, and a device without a model of its own (any
device not in the training split, or "unknown") uses the general model. Training uses the 25 %
split only. The DCASE2025 baseline (CPJKU/dcase2025_task1_baseline) trains in two stages, as
here:

  stage 1  the general model: an ordinary train.py run (configs/rep_mobile_tau.py:split=25, or a
           KD / pruning config; the result is its workdir);
  stage 2  a copy of it fine-tuned on each training device's clips (`train.train_devices`, the
           recipe of configs/device_tau.py), each an ordinary train.py workdir;
  set      the stage-1 deploy model as the base plus every device's deploy model, one artifact
           (`asc_jax.device_set`: routing, loading, routed prediction).

Modules:
  train.py       `device_config` (one device's stage-2 config), `train_devices` (all of them,
                 resumable, then the set)
  evaluation.py  overall / known-device / unknown-device accuracy of a set, against its base
  deploy.py      per-member complexity against the limits, int8 quantization, export
  cli.py         `python -m asc_jax.device_specific {train,evaluate,complexity,quantize,export}`
"""
from asc_jax.device_specific.deploy import (MemberComplexity, complexity_table, export_set, member_complexity,
                                            quantize_set, set_complexity)
from asc_jax.device_specific.evaluation import dcase2025_metrics, evaluate_and_record, evaluate_set, summary_table
from asc_jax.device_specific.train import base_training_form, device_config, device_variant, train_devices

__all__ = [
    "MemberComplexity", "complexity_table", "export_set", "member_complexity", "quantize_set", "set_complexity",
    "dcase2025_metrics", "evaluate_and_record", "evaluate_set", "summary_table",
    "base_training_form", "device_config", "device_variant", "train_devices",
]
