"""Train steps per host dispatch: one step, or k of them as one `lax.scan` (`OptimConfig.
steps_per_dispatch`), fed by host batches or by the split on the device (`device_data`).

A small model on a fast accelerator finishes a step in well under a millisecond of device time,
so a Python loop that dispatches one step, logs and fetches the next host batch keeps the device
idle most of the time. Scanning k steps in one program (and drawing the batches on the device)
leaves the host one call per k steps. The scanned step is the same function as the single step
(`steps.train_step_fn`), so k steps in one dispatch compute what k single dispatches compute
(tests/test_dispatch.py compares them).

Every function here returns `run(state, data, k) -> (state, metrics)` jitted with the state
donated; `metrics` leaves have a leading axis of length k (k = 1 included), and `k` is static:
each length compiles once (the loop's dispatches never cross an epoch's end, so a run needs k
and the remainder of an epoch, plus whatever a max_steps stop or a resume off the grid asks).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np

from asc_jax.audio import augment
from asc_jax.train import device_data
from asc_jax.train.state import TrainState

Step = Callable[[TrainState, dict], tuple[TrainState, dict]]


def host_batches(step_fn: Step, constrain: Callable[[Any], Any] = lambda b: b) -> Callable:
    """`run(state, batches, k)`: `batches` is k host batches stacked on a leading axis (one
    transfer), scanned in order. `constrain` re-states each batch's sharding inside the scan."""

    @functools.partial(jax.jit, donate_argnums=0, static_argnums=2)
    def run(state: TrainState, batches: dict, k: int):
        del k  # the batches' leading axis

        def body(state, batch):
            return step_fn(state, constrain(batch))

        return jax.lax.scan(body, state, batches)

    return run


def on_device(step_fn: Step, *, key: jax.Array, batch_size: int, roll: augment.RollConfig | None, sr: int,
              constrain: Callable[[Any], Any] = lambda b: b) -> Callable:
    """`run(state, split, k)`: k steps whose batches `device_data.batch_at` draws from the
    device-resident `split` at each step's number (state.step)."""

    @functools.partial(jax.jit, donate_argnums=0, static_argnums=2)
    def run(state: TrainState, split: device_data.DeviceSplit, k: int):
        def body(state, _):
            batch = device_data.batch_at(split, state.step, key=key, batch_size=batch_size, roll=roll, sr=sr)
            return step_fn(state, constrain(batch))

        return jax.lax.scan(body, state, None, length=k)

    return run


def stack(batches: list[dict]) -> dict:
    """Host batches -> one pytree with a leading batch-of-steps axis."""
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def unstack(metrics: Any) -> list[Any]:
    """Host metrics with a leading axis of k -> k per-step metric trees."""
    k = len(jax.tree.leaves(metrics)[0])
    return [jax.tree.map(lambda a: a[i], metrics) for i in range(k)]
