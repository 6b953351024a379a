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

from asc_jax import parallel
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


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    """`tree` with its floating-point leaves in `dtype` (the identity for float32)."""
    if dtype == jnp.float32:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _set_norm_dtype(model: nnx.Module, dtype: jnp.dtype) -> None:
    """Makes the model's Batch/LayerNorms return `dtype`: they infer their output dtype from their
    float32 statistics too, which would turn every later layer back to float32. Set on the
    step's own merged copy (a trace-time attribute), so no model needs a dtype option."""
    if dtype == jnp.float32:
        return
    for _, module in nnx.iter_modules(model):
        # A norm with a dtype of its own (PaSST's float32 LayerNorms) keeps it.
        if isinstance(module, (nnx.BatchNorm, nnx.LayerNorm)) and module.dtype is None:
            module.dtype = dtype


def _set_norm_axis(model: nnx.Module, axis_name: str | None) -> None:
    """Makes the model's BatchNorms average their batch statistics over `axis_name` (the
    data-parallel shard_map step), as `_set_norm_dtype` a trace-time attribute of the step's
    own merged copy: the model itself stays free of parallelism."""
    if axis_name is None:
        return
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            module.axis_name = axis_name


def _mel_replay(batch: Batch) -> dict:
    """Stored (teacher-time) parameters of log-mel augmentations, if the batch carries them."""
    return {k: v for k, v in batch.get("aug", {}).items() if k != "roll"}


def train_step_fn(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    frontend: Frontend,
    aug_cfg: augment.AugmentConfig,
    loss_fn: Callable[[jax.Array, Batch], tuple[jax.Array, dict]],
    key: jax.Array,
    schedule: optax.Schedule | None = None,
    compute_dtype: str = "float32",
    axis_name: str | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The pure `step(state, batch) -> (state, metrics)` (unjitted; `make_train_step` jits it,
    `asc_jax.train.dispatch` scans it).

    Args:
      graphdef: static part of the model (from `create_train_state`).
      tx: the optimiser.
      frontend: the model's frontend (`asc_jax.audio.frontends`): waveform -> features.
      aug_cfg: augmentations; the waveform roll already happened (host pipeline or
        `device_data`), so only the log-mel stage (frequency mask, Freq-MixStyle) runs here.
      loss_fn: (logits, batch) -> (loss, metrics).
      key: base PRNG key of the augmentations.
      schedule: learning-rate schedule, only for logging.
      compute_dtype: the model's compute dtype (`OptimConfig.compute_dtype`).
      axis_name: the step runs per device under a data-parallel shard_map over this axis
        (`asc_jax.parallel.shard_step`) on its shard of the batch. The batch's couplings are
        then made global: augmentation parameters are drawn for the global batch
        (`augment.augment_batch`), BatchNorm statistics are averaged over the devices, and the
        loss, gradients and metrics too (batch means of equal shards), so the update is the
        one a single device computes on the whole batch, up to float summation order.
        A model's own RNG streams (dropout) are replicated, so every device would draw the
        same masks; train_and_evaluate refuses such models for this step.
    """

    dtype = jnp.dtype(compute_dtype)

    def global_mean(tree):
        return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(key, state.step)
        # The frontend and its augmentations stay float32 (the log of small mel powers).
        mel = frontend.training_features(batch["audio"], jax.random.fold_in(step_key, FRONTEND_STREAM))
        mel, _ = augment.augment_batch(step_key, mel, aug_cfg, params=_mel_replay(batch), axis_name=axis_name)

        def objective(params, batch_stats):
            # copy=True builds fresh Variables at this trace level: NNX refuses to update (in
            # train-mode BN) Variables created by the enclosing jit trace.
            # Mixed precision: the model computes in `dtype` from a cast of the float32 master
            # weights (the cast's gradient returns float32); BatchNorm statistics stay float32
            # (flax computes them in at least float32, and batch_stats are not cast).
            model = nnx.merge(graphdef, _cast_floats(params, dtype), batch_stats, copy=True)
            _set_norm_dtype(model, dtype)
            _set_norm_axis(model, axis_name)
            logits, _ = model(mel.astype(dtype), train=True)
            logits = logits.astype(jnp.float32)
            loss, metrics = loss_fn(logits, batch)
            return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)), logits)

        (loss, (metrics, batch_stats, logits)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.batch_stats)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        loss, grads, metrics, accuracy = global_mean((loss, grads, metrics, accuracy))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": optax.global_norm(grads),
            "update_norm": optax.global_norm(updates),
            "param_norm": optax.global_norm(params),
        }
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    return step


def sharded_train_step_fn(mesh, *args, **kwargs) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """`train_step_fn(*args, **kwargs)` per device of `mesh` under shard_map, its couplings made
    global over the mesh's data axis (parallel.step="shard_map"; unjitted, as train_step_fn)."""
    return parallel.shard_step(train_step_fn(*args, axis_name=parallel.DATA_AXIS, **kwargs), mesh)


def make_train_step(*args, **kwargs) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """`train_step_fn(*args, **kwargs)` jitted with the state donated (arguments as there)."""
    return jax.jit(train_step_fn(*args, **kwargs), donate_argnums=0)
