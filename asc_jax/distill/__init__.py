"""Knowledge distillation from teacher ensembles whose logits are precomputed, never run in training.

The picture, one module per job:

  teachers.py    saved models (a converted PaSST, a CNN trained here) loaded as teachers named
                 ``<arch>-<tag>``, each with its own frontend; ``make_apply`` replays stored
                 augmentation parameters through a teacher exactly as the student will see them.
  precompute.py  ``precompute``: every teacher on every training clip of the student's config
                 under ``n_views`` sampled augmentations (view ``v`` of clip ``i`` keyed by
                 ``view_keys(seed, [i], v)``), batched by ``asc_jax.inference.predict``.
  importing.py   ``import_logits``: logits computed elsewhere (PyTorch .pt, .npy, CSV) aligned by
                 filename into a store of one view that replays nothing (``meta["import"]``).
  store.py       the teacher-logit store on disk: ``write_store`` (atomic, every array's shape
                 and dtype in the header, finite logits only), ``read_store`` (memory-mapped
                 ``TeacherStore``), and teacher selection from it (``resolve_teachers``,
                 ``teacher_columns``).
  ensembles.py   named ensembles ("cnn", "transformer", "all") selecting on a teacher's arch.
  extras.py      the student's side: the store holds its per-clip augmentation
                 (``store_augment``: all but Freq-MixStyle), must match its config
                 (``check_augment``), and ``StoreExtras`` (a grain per-record hook) hands each
                 training clip one stored view: teacher logits plus the parameters they were
                 computed under, which the student replays (roll on the waveform, the frequency
                 band on its own log-mel; Freq-MixStyle is applied fresh on top).
  loss.py        ``kd_loss`` (label CE + KL to each teacher), the train step's ``make_kd_loss``,
                 and the hyper-parameter presets ``KD_PRESETS`` / ``kd_preset``.
  cli.py         ``python -m asc_jax.distill precompute --config <the student's config> ...`` and
                 ``python -m asc_jax.distill import --logits FILE --filenames ... --classes ...``.

Data flow: saved teachers + the student's config -> ``precompute`` -> store directory ->
``StoreExtras`` in the student's grain pipeline -> batch["teacher_logits"], batch["aug"] ->
``make_kd_loss`` in the jitted train step.
"""
from asc_jax.distill.ensembles import CNN_ARCHS, ENSEMBLES, TRANSFORMER_ARCHS, teacher_arch
from asc_jax.distill.extras import StoreExtras, augment_mismatch, check_augment, store_augment
from asc_jax.distill.importing import import_logits
from asc_jax.distill.loss import KD_PRESETS, cpjku_lam, kd_loss, kd_preset, kd_student_config, make_kd_loss
from asc_jax.distill.precompute import precompute, view_keys
from asc_jax.distill.store import (STORE_FORMAT, STORE_VERSION, StoreError, TeacherStore, read_store,
                                   resolve_teachers, teacher_columns, write_store)
from asc_jax.distill.teachers import (STORE_AUGMENT, Teacher, TeacherFn, default_tag,
                                      load_teacher, make_apply, teacher_name)

__all__ = [
    "CNN_ARCHS", "ENSEMBLES", "TRANSFORMER_ARCHS", "teacher_arch",
    "StoreExtras", "augment_mismatch", "check_augment", "store_augment", "import_logits",
    "KD_PRESETS", "cpjku_lam", "kd_loss", "kd_preset", "kd_student_config", "make_kd_loss",
    "precompute", "view_keys",
    "STORE_FORMAT", "STORE_VERSION", "StoreError", "TeacherStore", "read_store", "resolve_teachers",
    "teacher_columns", "write_store",
    "STORE_AUGMENT", "Teacher", "TeacherFn", "default_tag", "load_teacher",
    "make_apply", "teacher_name",
]
