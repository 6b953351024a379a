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
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from asc_jax.registry import Registry
from asc_jax.surgery import check_tree_match

log = logging.getLogger(__name__)

INTEGRITY_KEY = "integrity"  # in model.json and in a checkpoint step's custom metadata
_MAX_LISTED = 8  # damaged files / arrays named in one message


class CorruptModelError(ValueError):
    """A saved model or training checkpoint that cannot be read back as it was written.

    The message names the directory and every damaged file or array found (up to a few). An
    orbax / tensorstore failure is summarised in the message instead of chained: its traceback
    runs to a hundred lines of asyncio internals that say less than the summary.
    """


# ---------------------------------------------------------------------------------------------
# Array and file records
# ---------------------------------------------------------------------------------------------

def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """(slash-joined path, leaf) for every leaf; an nnx.Variable's trailing `.value` is dropped."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]
        out.append(("/".join(_key_name(k) for k in path), leaf))
    return out


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_leaves(tree: Any) -> dict[str, tuple[np.ndarray, str]]:
    """{path: (host copy, dtype name)}; typed PRNG keys as their key data, in one transfer.

    Training states are replicated (asc_jax.parallel), so every process hashes its own copy.
    """
    named = named_leaves(tree)
    dtypes = [str(x.dtype) if hasattr(x, "dtype") else str(np.asarray(x).dtype) for _, x in named]
    host = jax.device_get([jax.random.key_data(x) if _is_key(x) else x for _, x in named])
    return {path: (np.asarray(a), dtype) for (path, _), a, dtype in zip(named, host, dtypes)}


def _digest(a: np.ndarray, dtype: str) -> str:
    h = hashlib.sha256(f"{dtype}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def array_records(tree: Any) -> dict[str, dict[str, Any]]:
    """{path: {"shape", "dtype", "sha256"}} for every leaf of `tree`."""
    return {path: {"shape": list(a.shape), "dtype": dtype, "sha256": _digest(a, dtype)}
            for path, (a, dtype) in _host_leaves(tree).items()}


def _array_problems(tree: Any, expected: Mapping[str, Mapping[str, Any]]) -> list[str]:
    got = _host_leaves(tree)
    problems = [f"array {path} is missing" for path in expected if path not in got]
    problems += [f"array {path} was not recorded at save time" for path in got if path not in expected]
    for path, rec in expected.items():
        if path not in got:
            continue
        a, dtype = got[path]
        if list(a.shape) != list(rec["shape"]) or dtype != rec["dtype"]:
            problems.append(f"array {path} is {dtype}{list(a.shape)}, saved as {rec['dtype']}{list(rec['shape'])}")
        elif _digest(a, dtype) != rec["sha256"]:
            bad = int(np.size(a) - np.isfinite(a).sum()) if np.issubdtype(a.dtype, np.inexact) else 0
            problems.append(f"array {path} differs from the saved one (sha256 mismatch"
                            + (f"; {bad} of {a.size} values non-finite)" if bad else ")"))
    return problems


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_records(directory: Path, sub: str) -> dict[str, dict[str, Any]]:
    """{"weights/<file>": {"bytes", "sha256"}} for every file under `directory / sub`."""
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _file_sha256(p)}
            for p in sorted((directory / sub).rglob("*")) if p.is_file()}


def _file_problems(directory: Path, expected: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for name, rec in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {rec['bytes']} when saved")
        elif _file_sha256(path) != rec["sha256"]:
            problems.append(f"{name} changed since it was saved (sha256 mismatch)")
    return problems


# ---------------------------------------------------------------------------------------------
# Orbax failures
# ---------------------------------------------------------------------------------------------

def _summary(err: BaseException) -> str:
    """The most specific line of an exception chain (tensorstore's, not orbax's wrapper)."""
    texts = []
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).strip().splitlines()
        if text:
            texts.append(f"{type(err).__name__}: {text[0]}")
        err = err.__cause__ or err.__context__
    if not texts:
        return "unknown error"
    # orbax's own wrappers ("Encountered error while reading array index...") say least.
    specific = [t for t in texts if "See full TensorStore details" not in t]
    line = (specific or texts)[-1].split(" [tensorstore_spec")[0]  # a JSON spec follows
    return line if len(line) <= 400 else line[:400] + "..."


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Mutes orbax's and asyncio's logged copies of a failure we are about to raise ourselves."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _damaged(what: str, problems: list[str], advice: str) -> CorruptModelError:
    listed = problems[:_MAX_LISTED]
    more = len(problems) - len(listed)
    return CorruptModelError(f"{what} is damaged: " + "; ".join(listed)
                             + (f"; and {more} more" if more else "") + f". {advice}")


# ---------------------------------------------------------------------------------------------
# Finiteness
# ---------------------------------------------------------------------------------------------

@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def first_non_finite(tree: Any) -> str | None:
    """'path (n of size values non-finite)' of the first floating-point leaf holding NaN/inf, else None.

    One jitted reduction over all leaves; only a bool per leaf comes back to the host.
    """
    named = [(path, x) for path, x in named_leaves(tree)
             if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    if not named:
        return None
    flags = np.asarray(jax.device_get(_finite_flags([x for _, x in named])))
    if flags.all():
        return None
    path, x = named[int(np.argmin(flags))]
    bad = int(jax.device_get((~jnp.isfinite(x)).sum()))
    return f"{path} ({bad} of {x.size} values non-finite)"


# ---------------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------------

class TrainCheckpoints:
    """Latest (for resume) and best-N (by a metric) checkpoints of one run; a context manager.

    Saves refuse a state with a non-finite leaf (FloatingPointError) and record every array's
    checksum; restores verify them (CorruptModelError naming the step directory and the array).
    """

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
        # ((step, id(state)), array records): save_best and save_latest of one step share them.
        self._records: tuple[tuple[int, int], dict] | None = None

    def __enter__(self) -> "TrainCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def _integrity(self, step: int, state: Any) -> dict[str, Any]:
        """Refuses a non-finite state; returns the custom metadata recording its arrays."""
        if self._records is None or self._records[0] != (step, id(state)):
            leaf = first_non_finite(state)
            if leaf is not None:
                raise FloatingPointError(
                    f"non-finite training state at step {step}: {leaf}; training stopped before saving "
                    f"it ({self.last_good()}). Lower optim.lr or enable optim.grad_clip.")
            self._records = ((step, id(state)), array_records(state))
        return {INTEGRITY_KEY: {"algorithm": "sha256", "arrays": self._records[1]}}

    def save_latest(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)),
            custom_metadata=self._integrity(step, state))

    def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       metrics={self.best_metric: float(metrics[self.best_metric])},
                       custom_metadata=self._integrity(step, state))

    @staticmethod
    def _step_dir(manager: ocp.CheckpointManager, step: int) -> Path:
        return Path(manager.directory) / str(step)

    @staticmethod
    def _recorded(manager: ocp.CheckpointManager, step: int) -> dict | None:
        """The step's array records, or None when it has none (or its metadata is unreadable)."""
        try:
            with _quiet_orbax():
                custom = manager.metadata(step).custom_metadata or {}
        except Exception:  # noqa: BLE001 - an unreadable metadata file means "no records"
            return None
        return (custom.get(INTEGRITY_KEY) or {}).get("arrays")

    def _restore(self, manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite) -> Any:
        """Restores `step` of `manager` and verifies it against the records saved with it."""
        step_dir = self._step_dir(manager, step)
        advice = (f"Delete {step_dir} to fall back to an older checkpoint (with none left in "
                  f"{manager.directory}, training starts again from step 0).")
        problems = []
        metadata = step_dir / "_CHECKPOINT_METADATA"
        try:
            json.loads(metadata.read_text())
        except FileNotFoundError:
            problems.append("_CHECKPOINT_METADATA (which holds the array checksums) is missing")
        except (UnicodeDecodeError, ValueError) as err:
            problems.append(f"_CHECKPOINT_METADATA (which holds the array checksums) is not valid JSON ({err})")
        records = self._recorded(manager, step)
        try:
            with _quiet_orbax():
                restored = manager.restore(step, args=args)
        except Exception as err:  # noqa: BLE001 - every orbax failure means a damaged step
            raise _damaged(f"checkpoint {step_dir}", problems + [f"orbax cannot restore it ({_summary(err)})"],
                           advice) from None
        if records is not None:
            problems += _array_problems(restored.state, records)
        elif not problems:
            log.warning("checkpoint %s has no array checksums (saved by an older asc-jax): restored unverified",
                        step_dir)
        leaf = first_non_finite(restored.state)
        if leaf is not None:
            problems.append(f"it holds non-finite values in {leaf}")
        if problems:
            raise _damaged(f"checkpoint {step_dir}", problems, advice)
        return restored

    def restore_latest(self, abstract_state: Any, data_iterator: grain.DatasetIterator) -> Any:
        """Restores the newest state into `abstract_state`'s structure and rewinds the iterator.

        Raises:
          CorruptModelError: naming the step directory and the damaged file or array.
        """
        step = self.latest.latest_step()
        return self._restore(self.latest, step, ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator))).state

    def last_good(self) -> str:
        """Names the newest checkpoint on disk that was verified finite when saved, or says none is.

        Waits for pending saves first, so that the answer is about what is on disk.
        """
        self.wait()
        found = [(step, kind == "latest", self._step_dir(manager, step))
                 for kind, manager in (("latest", self.latest), ("best", self.best))
                 for step in manager.all_steps()
                 if self._step_dir(manager, step).is_dir() and self._recorded(manager, step) is not None]
        if not found:
            return "no checkpoint has been saved yet"
        step, _, path = max(found)
        return f"last good checkpoint: {path} (step {step})"

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()


# ---------------------------------------------------------------------------------------------
# Saved models
# ---------------------------------------------------------------------------------------------

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
    integrity = {"algorithm": "sha256", "arrays": array_records(tree), "files": _file_records(directory, "weights")}
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
    every array and weight file (module docstring).

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
        raise _damaged(f"saved model {directory}", [f"model.json is not valid JSON ({err})"],
                       "Restore it from a good copy or save the model again.") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise _damaged(f"saved model {directory}", ["model.json has no 'model' entry"],
                       "Restore it from a good copy or save the model again.")
    return spec, spec.pop(INTEGRITY_KEY, None)


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
    problems = _file_problems(directory, integrity["files"]) if integrity else []

    def orbax(fn: Callable[[ocp.StandardCheckpointer], Any]) -> Any:
        try:
            with _quiet_orbax(), _local_checkpointer() as ckptr:
                return fn(ckptr)
        except Exception as err:  # noqa: BLE001 - every orbax failure means damaged files
            raise _damaged(what, problems + [f"orbax cannot read weights/ ({_summary(err)})"], advice) from None

    stored = orbax(lambda c: c.metadata(weights).item_metadata)
    if stored is None:
        raise _damaged(what, problems or ["orbax cannot read weights/_METADATA (missing or damaged)"], advice)
    try:
        check_tree_match(stored.tree, target, what=f"restoring {weights}")
    except ValueError:
        if problems:  # a damaged tree description, not a different model
            raise _damaged(what, problems, advice) from None
        raise
    restored = orbax(lambda c: c.restore(weights, target))
    if integrity:
        problems += _array_problems(restored, integrity["arrays"])
    else:
        log.warning("%s has no integrity data (saved by an older asc-jax): loaded unverified", directory)
    if problems:
        raise _damaged(what, problems, advice)
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
