"""Orbax checkpointing: resumable training state, best-N by validation metric, deploy models.

Layout of a workdir:
  checkpoints/latest/<step>/  {state, data}: full TrainState + grain iterator state (resume)
  checkpoints/best/<step>/    {state}: the N best states by eval macro accuracy
  deploy/                     fused model weights (orbax) + model.json (how to rebuild it)
Two managers rather than one with `best_fn`: a best-N policy may delete the newest checkpoint,
which would make resuming restart from an older step.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from asc_jax.surgery import check_tree_match


class TrainCheckpoints:
    """Latest (for resume) and best-N (by a metric) checkpoints of one run; a context manager."""

    def __init__(self, directory: str | Path, *, keep_best: int = 3, best_metric: str = "macro_accuracy"):
        directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            directory / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()},
        )
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep_best, create=True, best_fn=lambda m: m[best_metric], best_mode="max"),
            item_names=("state",),
        )

    def __enter__(self) -> "TrainCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save_latest(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)))

    def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       metrics={self.best_metric: float(metrics[self.best_metric])})

    def restore_latest(self, abstract_state: Any, data_iterator: grain.DatasetIterator) -> Any:
        """Restores the newest state into `abstract_state`'s structure and rewinds the iterator."""
        step = self.latest.latest_step()
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored.state

    def best_step(self) -> int | None:
        return self.best.best_step()

    def restore_best(self, abstract_state: Any) -> Any:
        step = self.best.best_step()
        return self.best.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state))).state

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()


# Only weights are stored: RNG streams (dropout, patchout) are rebuilt from a seed on load, since
# typed PRNG keys do not survive the pure-dict round trip.
WEIGHTS = (nnx.Param, nnx.BatchStat)


def save_model(directory: str | Path, model: nnx.Module, *, name: str, options: Mapping[str, Any],
               deploy: bool = False, **extra: Any) -> Path:
    """Saves the model's weights (orbax) and how to rebuild it (model.json).

    Layout: `directory/weights` holds parameters and batch statistics as a pure dict;
    `directory/model.json` holds {"model": {"name", "options", "deploy"}, **extra}, where `extra`
    may carry anything JSON-able (mel config, class names, provenance, accuracy...).

    Returns:
      The absolute directory.
    """
    directory = Path(directory).absolute()
    spec = json.dumps({"model": {"name": name, "options": dict(options), "deploy": deploy}, **extra},
                      indent=2)  # fails before writing anything if something is not JSON
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "weights", nnx.to_pure_dict(nnx.state(model, WEIGHTS)), force=True)
    (directory / "model.json").write_text(spec)
    return directory


def read_spec(directory: str | Path) -> dict[str, Any]:
    """The model.json written by `save_model`."""
    path = Path(directory).absolute() / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} holds no saved asc-jax model")
    return json.loads(path.read_text())


def restore_weights(directory: str | Path, model: nnx.Module) -> nnx.Module:
    """Restores saved weights into `model` (concrete, or abstract from `nnx.eval_shape`), in place.

    Raises:
      FileNotFoundError: naming the missing weights folder.
      ValueError: listing every missing, unexpected and mis-shaped weight.
    """
    weights = Path(directory).absolute() / "weights"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: {directory} holds no saved asc-jax model")
    state = nnx.state(model, WEIGHTS)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckptr:
        stored = ckptr.metadata(weights).item_metadata.tree
        check_tree_match(stored, target, what=f"restoring {weights}")
        restored = ckptr.restore(weights, target)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


def load_model(directory: str | Path, *, seed: int = 0) -> tuple[nnx.Module, dict[str, Any]]:
    """Rebuilds a saved model abstractly, restores its weights, initialises the rest from `seed`.

    Only non-weight state (RNG streams for dropout / patchout) is initialised, inside `jax.jit`
    so that XLA prunes the unused weight initialisers.

    Returns:
      (model, spec) with spec the saved model.json.
    """
    from asc_jax.models import MODELS

    spec = read_spec(directory)
    m = spec["model"]

    def build() -> nnx.Module:
        return MODELS.get(m["name"])(rngs=nnx.Rngs(seed), deploy=m.get("deploy", False), **m["options"])

    model = restore_weights(directory, nnx.eval_shape(build))
    nnx.update(model, jax.jit(lambda: nnx.state(build(), nnx.Not(WEIGHTS)))())
    return model, spec
