"""The jitted train step: the model's frontend + augmentation on device, then the model.

The step is a pure function of (TrainState, batch); its PRNG key is `fold_in(key, step)` so a
resumed run draws exactly the augmentations the uninterrupted run would have drawn. Evaluation
runs the one inference path, `asc_jax.inference`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from asc_jax.audio import augment
from asc_jax.audio.frontends import Frontend
from asc_jax.train.state import TrainState

Batch = dict[str, Any]

# The step key's stream for the frontend's own training-time draw (the Kaldi-mel fmin/fmax
# jitter); augmentation i of the AugmentConfig uses stream i, so this one stays clear of them.
FRONTEND_STREAM = 0x7FFF_FFFF


def classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return ce, {"ce": ce}


def _mel_replay(batch: Batch) -> dict:
    """Stored (teacher-time) parameters of log-mel augmentations, if the batch carries them."""
    return {k: v for k, v in batch.get("aug", {}).items() if k != "roll"}


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    frontend: Frontend,
    aug_cfg: augment.AugmentConfig,
    loss_fn: Callable[[jax.Array, Batch], tuple[jax.Array, dict]],
    key: jax.Array,
    schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """Builds `step(state, batch) -> (state, metrics)`, jitted with the state donated.

    Args:
      graphdef: static part of the model (from `create_train_state`).
      tx: the optimiser.
      frontend: the model's frontend (`asc_jax.audio.frontends`): waveform -> features.
      aug_cfg: augmentations; the waveform roll already happened on the host, so only the
        log-mel stage (frequency mask, Freq-MixStyle) runs here.
      loss_fn: (logits, batch) -> (loss, metrics).
      key: base PRNG key of the augmentations.
      schedule: learning-rate schedule, only for logging.
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(key, state.step)
        mel = frontend.training_features(batch["audio"], jax.random.fold_in(step_key, FRONTEND_STREAM))
        mel, _ = augment.augment_batch(step_key, mel, aug_cfg, params=_mel_replay(batch))

        def objective(params, batch_stats):
            # copy=True builds fresh Variables at this trace level: NNX refuses to update (in
            # train-mode BN) Variables created by the enclosing jit trace.
            model = nnx.merge(graphdef, params, batch_stats, copy=True)
            logits, _ = model(mel, train=True)
            loss, metrics = loss_fn(logits, batch)
            return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)), logits)

        (loss, (metrics, batch_stats, logits)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.batch_stats)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": optax.global_norm(grads),
            "update_norm": optax.global_norm(updates),
            "param_norm": optax.global_norm(params),
        }
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)

