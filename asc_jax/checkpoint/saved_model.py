"""Saved models: one format (orbax weights/ + model.json) and one save / load for every form."""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from asc_jax.checkpoint.integrity import (
    INTEGRITY_KEY, array_problems, array_records, damaged, file_problems, file_records, orbax_summary,
    quiet_orbax)
from asc_jax.registry import Registry
from asc_jax.surgery import check_tree_match

log = logging.getLogger(__name__)

# Only weights are stored: RNG streams (dropout, patchout) are rebuilt from a seed on load, since
# typed PRNG keys do not survive the pure-dict round trip.
WEIGHTS = (nnx.Param, nnx.BatchStat)


@dataclasses.dataclass(frozen=True)
class ModelForm:
    """How one form of saved model is stored and rebuilt (see `model_form`).

    Attributes:
      state: nnx filter of the Variables that `weights/` holds; the rest (RNG streams) is
        initialised from a seed on load.
      build: `(spec, rngs) -> model` from the model.json; run under `nnx.eval_shape` (and under
        `jax.jit` for the state that is not stored), so it may be as costly as it likes.
    """

    state: Any
    build: Callable[[Mapping[str, Any], nnx.Rngs], nnx.Module]


MODEL_FORMS: Registry[ModelForm] = Registry("saved model form")
# Forms registered by modules that import this one: imported when a model of that form is met.
_FORM_MODULES = {"int8": "asc_jax.quantize"}


def model_form(spec: Mapping[str, Any]) -> str:
    """The form of a saved model: model.json's "quantization"/"form" ("int8"), else "float"."""
    return (spec.get("quantization") or {}).get("form", "float")


def _form(name: str) -> ModelForm:
    if name not in MODEL_FORMS and name in _FORM_MODULES:
        importlib.import_module(_FORM_MODULES[name])
    return MODEL_FORMS.get(name)


def build_float(spec: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    """The float model a model.json describes ({"model": {"name", "options", "deploy"}})."""
    from asc_jax.models import MODELS

    m = spec["model"]
    return MODELS.get(m["name"])(rngs=rngs, deploy=m.get("deploy", False), **m["options"])


MODEL_FORMS.register("float")(ModelForm(WEIGHTS, build_float))


def _local_checkpointer() -> ocp.StandardCheckpointer:
    """A checkpointer for this process alone. A saved model is one process's file (in a multi-host
    run process 0 writes it, every process may read it); orbax's default would wait at barriers
    for processes that never take part, until the run times out."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def write_model(directory: str | Path, tree: dict, spec: Mapping[str, Any]) -> Path:
    """Writes a pure-dict weights tree (orbax, `weights/`) and `spec` + integrity data (model.json).

    Returns:
      The absolute directory.
    """
    directory = Path(directory).absolute()
    json.dumps(spec)  # fails before writing anything if something is not JSON
    directory.mkdir(parents=True, exist_ok=True)
    # Plain numpy: orbax refuses process-local jax.Arrays in a multi-host run.
    tree = jax.tree.map(np.asarray, tree)
    with _local_checkpointer() as ckptr:
        ckptr.save(directory / "weights", tree, force=True)
    integrity = {"algorithm": "sha256", "arrays": array_records(tree), "files": file_records(directory, "weights")}
    (directory / "model.json").write_text(json.dumps({**spec, INTEGRITY_KEY: integrity}, indent=2))
    return directory


def save_model(directory: str | Path, model: nnx.Module, *, name: str, options: Mapping[str, Any],
               deploy: bool = False, **extra: Any) -> Path:
    """Saves the model's weights (orbax) and how to rebuild it (model.json); `load_model` reads it.

    Layout: `directory/weights` holds the state of the model's form (`model_form`: parameters
    and batch statistics of a float model; an int8 model's codes, scales and ranges too) as a
    pure dict; `directory/model.json` holds {"model": {"name", "options", "deploy"}, **extra,
    "integrity"}, where `extra` may carry anything JSON-able (mel config, class names,
    provenance, accuracy, "quantization" for an int8 model...) and "integrity" the checksums of
    every array and weight file (`asc_jax.checkpoint` docstring).

    Returns:
      The absolute directory.
    """
    spec = {"model": {"name": name, "options": dict(options), "deploy": deploy}, **extra}
    return write_model(directory, nnx.to_pure_dict(nnx.state(model, _form(model_form(spec)).state)), spec)


def _read_model_json(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(spec, integrity data or None for models saved before it was recorded)."""
    directory = Path(directory).absolute()
    path = directory / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} holds no saved asc-jax model")
    try:
        spec = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(f"saved model {directory}", [f"model.json is not valid JSON ({err})"],
                       "Restore it from a good copy or save the model again.") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise damaged(f"saved model {directory}", ["model.json has no 'model' entry"],
                       "Restore it from a good copy or save the model again.")
    return spec, spec.pop(INTEGRITY_KEY, None)


def resolve_model_dir(path: str | Path) -> Path:
    """A saved model directory: ``path`` itself, or a train.py workdir's ``deploy/`` (the fused,
    faster form; same logits) else ``model/`` (the only one of a model without a fused form).

    Raises:
      FileNotFoundError: naming ``path``, if none of them holds a model.json.
    """
    path = Path(path).absolute()
    for candidate in (path, path / "deploy", path / "model"):
        if (candidate / "model.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no model.json there nor under deploy/ or model/ (expected a saved model written "
        "by train.py, convert_weights.py or python -m asc_jax.quantize, or a train.py workdir)")


def read_spec(directory: str | Path) -> dict[str, Any]:
    """The model.json written by `save_model`, without its integrity data.

    Raises:
      FileNotFoundError: if there is no model.json.
      CorruptModelError: if it does not parse.
    """
    return _read_model_json(directory)[0]


def read_weights(directory: str | Path, target: dict) -> dict:
    """The weights tree written by `write_model`, restored into `target` and verified.

    Args:
      target: the expected tree of jax.ShapeDtypeStruct (a model's pure-dict state).
    Raises:
      FileNotFoundError: naming the missing weights folder.
      ValueError: listing every missing, unexpected and mis-shaped weight (a different model).
      CorruptModelError: naming the directory and every damaged file or array.
    """
    directory = Path(directory).absolute()
    integrity = _read_model_json(directory)[1]
    weights = directory / "weights"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: {directory} holds no saved asc-jax model")
    what, advice = f"saved model {directory}", "Restore it from a good copy or save the model again."
    problems = file_problems(directory, integrity["files"]) if integrity else []

    def orbax(fn: Callable[[ocp.StandardCheckpointer], Any]) -> Any:
        try:
            with quiet_orbax(), _local_checkpointer() as ckptr:
                return fn(ckptr)
        except Exception as err:  # noqa: BLE001 - every orbax failure means damaged files
            raise damaged(what, problems + [f"orbax cannot read weights/ ({orbax_summary(err)})"], advice) from None

    stored = orbax(lambda c: c.metadata(weights).item_metadata)
    if stored is None:
        raise damaged(what, problems or ["orbax cannot read weights/_METADATA (missing or damaged)"], advice)
    try:
        check_tree_match(stored.tree, target, what=f"restoring {weights}")
    except ValueError:
        if problems:  # a damaged tree description, not a different model
            raise damaged(what, problems, advice) from None
        raise
    restored = orbax(lambda c: c.restore(weights, target))
    if integrity:
        problems += array_problems(restored, integrity["arrays"])
    else:
        log.warning("%s has no integrity data (saved by an older asc-jax): loaded unverified", directory)
    if problems:
        raise damaged(what, problems, advice)
    return restored


def restore_weights(directory: str | Path, model: nnx.Module, state: Any = WEIGHTS) -> nnx.Module:
    """Restores saved weights into `model` (concrete, or abstract from `nnx.eval_shape`), in place.

    Args:
      state: nnx filter of the Variables stored (`ModelForm.state`; a float model's by default).
    Raises:
      FileNotFoundError: naming the missing weights folder.
      ValueError: listing every missing, unexpected and mis-shaped weight.
      CorruptModelError: naming the directory and every damaged file or array.
    """
    stored = nnx.state(model, state)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(stored))
    nnx.replace_by_pure_dict(stored, read_weights(directory, target))
    nnx.update(model, stored)
    return model


def load_model(directory: str | Path, *, seed: int = 0, form: str | None = None) -> tuple[nnx.Module, dict[str, Any]]:
    """Loads any saved model: rebuilds it abstractly in the form its model.json names (`model_form`),
    restores its weights and initialises the rest from `seed`.

    Only non-weight state (RNG streams for dropout / patchout) is initialised, inside `jax.jit`
    so that XLA prunes the unused weight initialisers.

    Args:
      form: the form expected ("float", "int8"); None accepts any.
    Returns:
      (model, spec) with spec the saved model.json (without its integrity data).
    Raises:
      FileNotFoundError, CorruptModelError: as `read_weights`.
      ValueError: a model of another form than `form`, or weights of another model.
    """
    spec = read_spec(directory)
    found = model_form(spec)
    if form is not None and found != form:
        raise ValueError(f"{directory} holds a saved {found} model, not {form} (model.json)")
    how = _form(found)

    def build() -> nnx.Module:
        return how.build(spec, nnx.Rngs(seed))

    model = restore_weights(directory, nnx.eval_shape(build), how.state)
    nnx.update(model, jax.jit(lambda: nnx.state(build(), nnx.Not(how.state)))())
    return model, spec
