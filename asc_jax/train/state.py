"""The functional training state: NNX module split into a static graph and array pytrees."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree, so it can be jitted, donated and checkpointed.

    Attributes:
      step: number of optimiser updates done so far.
      params: nnx.Param state of the model.
      batch_stats: the rest of the model's state (BatchNorm running statistics).
      opt_state: optax state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, params, everything else) — the static/dynamic split of DESIGN rule 1."""
    return nnx.split(model, nnx.Param, ...)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, rest = split_model(model)
    return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=rest,
                                opt_state=tx.init(params))
