"""Orbax checkpointing: resumable training state, best-N by validation metric, deploy models.

Layout of a workdir:
  checkpoints/latest/<step>/  {state, data}: full TrainState + grain iterator state (resume)
  checkpoints/best/<step>/    {state}: the N best states by eval macro accuracy
  deploy/                     fused model weights (orbax) + model.json (how to rebuild it)
Two managers rather than one with `best_fn`: a best-N policy may delete the newest checkpoint,
which would make resuming restart from an older step.

Integrity (DESIGN rule 17): every array is recorded at save time as {shape, dtype, sha256 of
dtype + shape + bytes}, under its slash-joined path (`params/stages/1/0/expand/conv/kernel`).
Training checkpoints keep these records in the step's orbax custom metadata
(`<step>/_CHECKPOINT_METADATA`); saved models keep them in model.json under "integrity", together
with the size and sha256 of every file under `weights/`. Loads check files, then arrays, and turn
any mismatch or orbax failure into one `CorruptModelError` naming the directory and the damaged
file or array. A training state is saved only when all its floating-point leaves are finite.

Saved models have one format and one save / load (`save_model`, `load_model`) for all their
forms: float, or int8 (`asc_jax.quantize`), as model.json's "quantization"/"form" says. A form
(`MODEL_FORMS`) says which Variables `weights/` holds and how the model is rebuilt from model.json.

Modules:
  integrity.py    array / file records and their checks, CorruptModelError, first_non_finite
  training.py     TrainCheckpoints (latest + best-N, verified on restore)
  saved_model.py  ModelForm / MODEL_FORMS, save_model / write_model, read_spec / read_weights,
                  restore_weights, load_model
"""
from asc_jax.checkpoint.integrity import (
    INTEGRITY_KEY, CorruptModelError, array_records, first_non_finite, named_leaves)
from asc_jax.checkpoint.saved_model import (
    MODEL_FORMS, WEIGHTS, ModelForm, build_float, load_model, model_form, read_spec, read_weights,
    resolve_model_dir, restore_weights, save_model, write_model)
from asc_jax.checkpoint.training import TrainCheckpoints

__all__ = [
    "INTEGRITY_KEY", "CorruptModelError", "array_records", "first_non_finite", "named_leaves",
    "MODEL_FORMS", "WEIGHTS", "ModelForm", "build_float", "load_model", "model_form", "read_spec",
    "read_weights", "resolve_model_dir", "restore_weights", "save_model", "write_model",
    "TrainCheckpoints",
]
