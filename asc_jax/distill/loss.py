"""The KD loss, the train step's loss function built on it, and named KD hyper-parameter presets.

Presets (``kd_preset(name)``, the ``kd=`` variant of ``configs/kd_tau.py`` and
``configs/kd_demo.py``):

  cpjku   CPJKU's KD recipe, lambda = 0.02, tau = 2, KL scaled by tau^2. CPJKU average their KL
          over classes as well as the batch, ``kd_loss`` only over the batch, so their lambda is
          converted to the one giving the same loss up to a constant factor (which Adam
          ignores): lam = 0.02 C / (0.02 C + 0.98) = 0.1695 for C = 10 classes (``cpjku_lam``).
  paper   the paper's values taken literally: tau = 0.1 as printed, lam = 0.02 in this loss's
          convention, no tau^2 factor. Not validated here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from asc_jax.config import Config, KDConfig, load_config, parse_variant
from asc_jax.data.tau import CLASSES

Batch = dict[str, Any]


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    lam: float,
    tau: float,
    scale_by_tau_sq: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Label loss plus mean KL to each teacher:

        loss = lam * CE(student, labels)
             + (1 - lam) * s * (1/K) sum_k mean_b KL(softmax(t_bk / tau) || softmax(s_b / tau)),
        s = tau**2 if scale_by_tau_sq else 1.

    KL direction is Hinton's / ``torch.nn.functional.kl_div(log_softmax(s / tau),
    log_softmax(t / tau), log_target=True)``: the teacher distribution is the target, and
    ``KL = sum_c p_t (log p_t - log p_s)`` is summed over classes and averaged over the batch
    ("batchmean"). Note that the CPJKU DCASE code reduces ``KLDivLoss(reduction="none")`` with
    ``.mean()`` over batch *and* classes, i.e. its KD term is this one divided by C; rescale
    ``lam`` accordingly when copying their hyper-parameters. The tau**2 factor keeps the
    gradient magnitude of the soft term independent of tau (Hinton et al.); the paper quotes tau
    as written, so both choices are configurable.

    Both terms use optax (``softmax_cross_entropy_with_integer_labels`` and
    ``kl_divergence_with_log_targets``, which takes the teacher in log space so that a teacher
    probability underflowing at small tau cannot produce ``0 * log 0``).

    Args:
      student_logits: (B, C).
      teacher_logits: (B, K, C), treated as constants.
      labels: (B,) integer class indices.
      lam: weight of the label loss in [0, 1].
      tau: softmax temperature (> 0).
      scale_by_tau_sq: multiply the KL term by tau**2.

    Returns:
      (loss, metrics) with metrics: "loss", "ce", "kl" (mean over teachers, unscaled),
      "kl_per_teacher" (K,), "agree_ensemble" (student top-1 == top-1 of the teachers' mean
      logits, the CPJKU ensemble target), "agree_per_teacher" (K,).
    """
    if teacher_logits.ndim != 3 or teacher_logits.shape[::2] != student_logits.shape:
        raise ValueError(
            f"teacher logits must be (B, K, C) matching student (B, C) = {student_logits.shape}, "
            f"got {teacher_logits.shape}"
        )
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(student_logits.dtype))
    ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels).mean()
    log_p_s = jax.nn.log_softmax(student_logits / tau, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
    kl_bk = optax.losses.kl_divergence_with_log_targets(log_p_s[:, None, :], log_p_t)  # (B, K)
    kl_per_teacher = kl_bk.mean(axis=0)
    kl = kl_per_teacher.mean()
    scale = tau**2 if scale_by_tau_sq else 1.0
    loss = lam * ce + (1.0 - lam) * scale * kl

    pred = jnp.argmax(student_logits, axis=-1)
    metrics = {
        "loss": loss,
        "ce": ce,
        "kl": kl,
        "kl_per_teacher": kl_per_teacher,
        "agree_ensemble": jnp.mean(pred == jnp.argmax(teacher_logits.mean(axis=1), axis=-1)),
        "agree_per_teacher": jnp.mean(pred[:, None] == jnp.argmax(teacher_logits, axis=-1), axis=0),
    }
    return loss, metrics


def make_kd_loss(lam: float, tau: float, scale_by_tau_sq: bool
                 ) -> Callable[[jax.Array, Batch], tuple[jax.Array, dict]]:
    """The train step's ``loss_fn(logits, batch)``: ``kd_loss`` against ``batch["teacher_logits"]``
    (the store's view of each clip, attached by ``StoreExtras``) and ``batch["label"]``."""

    def loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
        value, metrics = kd_loss(logits, batch["teacher_logits"], batch["label"], lam=lam, tau=tau,
                                 scale_by_tau_sq=scale_by_tau_sq)
        # Per-teacher vectors are logged element-wise by the host logger.
        return value, {k: v for k, v in metrics.items() if k != "loss"}

    return loss


def cpjku_lam(lam: float, n_classes: int = len(CLASSES)) -> float:
    """The label weight that reproduces CPJKU's ``lam * CE + (1 - lam) * T^2 * mean_{b,c} KL``
    with this project's ``mean_b sum_c KL``: equal ratio of the two terms."""
    return lam * n_classes / (lam * n_classes + 1.0 - lam)


# The store and teacher selection stay "" / "all": a config names its own store and ensemble.
KD_PRESETS: dict[str, KDConfig] = {
    "cpjku": KDConfig(lam=cpjku_lam(0.02), tau=2.0, scale_by_tau_sq=True),
    "paper": KDConfig(lam=0.02, tau=0.1, scale_by_tau_sq=False),
}


def kd_preset(name: str) -> KDConfig:
    """The KD hyper-parameters ``KD_PRESETS[name]`` (see the module docstring).

    Raises:
      ValueError: naming the presets, for an unknown ``name``.
    """
    if name not in KD_PRESETS:
        raise ValueError(f"kd must be one of {sorted(KD_PRESETS)}; got {name!r}")
    return KD_PRESETS[name]


def kd_student_config(arg: str | None, *, base: str | Path, base_variants: Mapping[str, Any],
                      teacher_sets: Sequence[str], store_prefix: str, config: str) -> Config:
    """A KD student's config: the base config file's run plus a KD section, from a variant string.

    The student config files (configs/kd_demo.py, configs/kd_tau.py) are this one recipe over
    different base configs. Variants: teachers (one of ``teacher_sets``; "none" returns the base
    run unchanged), kd (a ``KD_PRESETS`` name), store (default ``{store_prefix}{split}``), and
    ``base_variants``, passed on to ``base`` (which checks them and holds their defaults).

    Args:
      arg: the text after the colon of ``--config configs/x.py:...``.
      base: the base config file.
      base_variants: its variant keys, each defaulting to None (= the base file's default).
      teacher_sets: the accepted ``teachers`` values.
      store_prefix: default store directory, before the training split.
      config: the student config file's name, for errors.
    """
    variant = parse_variant(arg, {**base_variants, "teachers": "all", "kd": "cpjku", "store": None},
                            config=config)
    teachers = variant["teachers"]
    if teachers not in teacher_sets:
        raise ValueError(f"teachers must be one of {tuple(teacher_sets)}; got {teachers!r}")
    kd = kd_preset(variant["kd"])
    base_arg = ",".join(f"{k}={variant[k]}" for k in base_variants if variant[k] is not None)
    student = load_config(f"{base}:{base_arg}")
    if teachers == "none":
        return student
    store = str(variant["store"] or f"{store_prefix}{student.data.train_split}")
    return dataclasses.replace(student, kd=dataclasses.replace(kd, store=store, teachers=teachers))
