"""The DCASE2025 Task 1 inference API, as the challenge's evaluation scripts call it.

DCASE2025 Task 1 asks every submission for an importable module with four functions, which the
organisers' scripts (CPJKU/dcase2025_task1_inference: `evaluate_submission.py`,
`test_complexity.py`) call like this:

    predictions, class_order = api.predict(file_paths=paths, device_ids=ids, model_file_path=None,
                                           use_cuda=use_cuda)
    model = api.load_model()
    inputs = api.load_inputs([dummy_wav] * 13, ["a", "b", "c", "s1", ..., "s10"], model)
    for x, device in zip(inputs, devices):
        submodel = api.get_model_for_device(model, device)   # MACs and parameter bytes of
        ...                                                  # submodel at x.shape, per device

This module implements them for the models of this project, with numpy arrays where the
PyTorch reference has tensors:

* `load_model(path)` loads a device model set (`asc_jax.device_set`: a general model plus one
  model per known device) or a single saved model, which is then a set with only its general
  model. The "model" is an `asc_jax.predict.Predictor` (members loaded and jitted).
* `load_inputs(paths, device_ids, model)` reads each file (mono, resampled to the model's rate,
  cut into 1-s windows as `asc_jax.predict` does) and returns its model-ready features, computed
  with the frontend of the member its device routes to: one float32 array of shape
  (n_windows, n_mels, n_frames) per file, (1, n_mels, n_frames) for the challenge's 1-s clips.
* `get_model_for_device(model, device_id)` returns a `DeviceModel` holding only the member that
  device's clips go to: its own model for a device of the set, the general model for any other
  id ("unknown", an unseen device, None). It is callable on `load_inputs`' arrays (-> logits),
  and `measure_complexity(submodel, x.shape)` gives its MACs and parameter bytes, as the
  reference's `get_torch_macs_memory` does (`asc_jax.complexity`: torchinfo's MAC convention;
  bytes at the precision the member is deployed in: float32 weights 4 B, the int8 form 1 B per
  parameter as `complexity.memory_report` counts it).
* `predict(paths, device_ids, model_file_path=None, use_cuda=True)` returns one logit vector
  (numpy, shape [n_classes]) per file in input order, and the class order. A file of one window
  (every challenge clip) gets its member's logits unchanged; a longer one the log of its windows'
  mean softmax probabilities, so that a softmax of the result (what `evaluate_submission.py`
  writes to output.csv) is the mean probability `asc_jax.predict` writes. `use_cuda=False` runs
  on the CPU; True runs on JAX's default backend (the GPU when there is one).

The packaged model. Called with `model_file_path=None` (as the challenge scripts call them),
`load_model` and `predict` take the module-level setting `DEFAULT_MODEL`, else the environment
variable `ASC_JAX_DCASE2025_MODEL`; without either they fail with a message naming both. A
challenge package is then a thin module that sets the first and re-exports the API:

    # Lastname_Inst_task1/Lastname_Inst_task1_1.py
    from pathlib import Path
    import asc_jax.dcase2025 as api
    api.DEFAULT_MODEL = str(Path(__file__).parent / "ckpts" / "device_set")
    from asc_jax.dcase2025 import get_model_for_device, load_inputs, load_model, predict

`check_complexity` runs the measurement of `test_complexity.py` and returns its complexity.json
({"per_device": {id: {"MACs", "Params"}}, "max_MACs", "max_Params"}, plus the parameter count,
precision and member per device and the limits); the limits are `complexity`'s DCASE constants.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asc_jax import complexity, inference
from asc_jax.audio.frontends import Frontend
from asc_jax.checkpoint import model_form
from asc_jax.predict import Predictor, per_window

MODEL_ENV = "ASC_JAX_DCASE2025_MODEL"
# The model `load_model(None)` / `predict(model_file_path=None)` load; a submission package sets it.
DEFAULT_MODEL: str | None = None
# The devices test_complexity.py measures: the development set's and four more simulated ones.
COMPLEXITY_DEVICE_IDS: tuple[str, ...] = ("a", "b", "c", *(f"s{i}" for i in range(1, 11)))
DEFAULT_BATCH_SIZE = 64  # 1-s windows per forward pass
MAX_MACS = complexity.DCASE_MAX_MACS
MAX_PARAMS_MEMORY = complexity.DCASE_MAX_PARAM_BYTES
_DTYPE_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8"}


def default_model_path() -> Path:
    """`DEFAULT_MODEL`, else $ASC_JAX_DCASE2025_MODEL.

    Raises:
      FileNotFoundError: neither is set.
    """
    path = DEFAULT_MODEL or os.environ.get(MODEL_ENV)
    if not path:
        raise FileNotFoundError(
            f"no model given and no packaged default: set asc_jax.dcase2025.DEFAULT_MODEL or the "
            f"environment variable {MODEL_ENV} to a device model set or saved model directory")
    return Path(path)


def load_model(model_file_path: str | Path | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE
               ) -> Predictor:
    """The device model set (or single saved model) at `model_file_path` (None: the default,
    `default_model_path`), loaded for inference.

    Raises:
      FileNotFoundError, CorruptModelError, ValueError: as `asc_jax.predict.Predictor`.
    """
    return Predictor(default_model_path() if model_file_path is None else model_file_path, batch_size)


def _check_lengths(file_paths: Sequence[Any], device_ids: Sequence[Any]) -> None:
    if len(file_paths) != len(device_ids):
        raise ValueError(f"{len(file_paths)} files but {len(device_ids)} device ids: give one id per file")


def _device_id(device_id: Any) -> str | None:
    """An id as the routing takes it: a table's empty cell (None, NaN, "") is a missing id."""
    return device_id if isinstance(device_id, str) and device_id else None


def load_inputs(file_paths: Sequence[str | Path], device_ids: Sequence[str], model: Predictor
                ) -> list[np.ndarray]:
    """Model-ready features of each file: (n_windows, n_mels, n_frames) float32, input order,
    from the frontend of the member each file's device routes to.

    Raises:
      ValueError: lengths differ; tau.ClipError (naming the file): unreadable audio.
    """
    _check_lengths(file_paths, device_ids)
    out = []
    for path, device in zip(file_paths, device_ids):
        features = _jitted_features(model.members[model.route(_device_id(device))].frontend)
        out.append(np.asarray(features(model.load_windows(Path(path))), np.float32))
    return out


_FEATURES: dict[str, Callable[[np.ndarray], jax.Array]] = {}


def _jitted_features(frontend: Frontend) -> Callable[[np.ndarray], jax.Array]:
    """One jitted feature function per frontend setting: the members of a set share theirs."""
    key = json.dumps(frontend.describe(), sort_keys=True, default=str)
    if key not in _FEATURES:
        _FEATURES[key] = jax.jit(frontend.features)
    return _FEATURES[key]


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    """Logits of model-ready features; compiled once per architecture, shared by the members."""
    return nnx.merge(graphdef, state)(x, train=False)[0]


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """The member of a set that one device's clips go to (`get_model_for_device`).

    Attributes:
      device_id: the id asked for.
      member: the member's key: the device itself, or `device_set.BASE` (the general model).
      saved: the member, loaded (`inference.SavedModel`: model, spec, frontend).
    """

    device_id: str | None
    member: str
    saved: inference.SavedModel

    @property
    def model(self) -> nnx.Module:
        return self.saved.model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (B, n_classes) of model-ready features (B, n_mels, n_frames) (`load_inputs`)."""
        graphdef, state = nnx.split(self.saved.model)
        return np.asarray(_apply(graphdef, state, jnp.asarray(x, jnp.float32)))


def get_model_for_device(model: Predictor, device_id: str | None) -> DeviceModel:
    """Only the member that clips of `device_id` are predicted with (unknown ids: the general model)."""
    member = model.route(_device_id(device_id))
    return DeviceModel(device_id, member, model.members[member])


@dataclasses.dataclass(frozen=True)
class MemberComplexity:
    """One member's complexity in the DCASE convention.

    Attributes:
      macs: MACs of one forward pass at `input_shape` (torchinfo convention).
      params: parameters (the DCASE count).
      param_bytes: their memory at `precision`.
      precision: "fp32", "fp16", "bf16" or "int8": what the member's parameters are stored
        and run in (several joined by "+" for mixed dtypes).
    """

    macs: int
    params: int
    param_bytes: int
    precision: str
    input_shape: tuple[int, ...]

    @property
    def within_limits(self) -> bool:
        return self.macs <= MAX_MACS and self.param_bytes <= MAX_PARAMS_MEMORY


def measure_complexity(submodel: DeviceModel, input_shape: Sequence[int]) -> MemberComplexity:
    """MACs and parameter memory of a member at `input_shape` (e.g. `load_inputs(...)[i].shape`),
    as `get_torch_macs_memory` of the reference measures a submodel.

    Raises:
      ValueError: a model form this does not know how to count.
    """
    shape = tuple(int(d) for d in input_shape)
    form = model_form(submodel.saved.spec)
    if form == "int8":
        report, memory = complexity.report(submodel.model, shape), complexity.memory_report(submodel.model)
        return MemberComplexity(report.macs, report.params, memory.int8_bytes, "int8", shape)
    if form != "float":
        raise ValueError(f"{submodel.saved.spec.get('model')}: no complexity count for saved form {form!r}")
    report = complexity.report(submodel.model, shape)
    leaves = jax.tree.leaves(nnx.state(submodel.model, nnx.Param))
    dtypes = sorted({str(x.dtype) for x in leaves})
    precision = "+".join(_DTYPE_PRECISION.get(d, d) for d in dtypes)
    return MemberComplexity(report.macs, report.params, sum(int(x.size) * x.dtype.itemsize for x in leaves),
                            precision, shape)


def input_shape_of(model: Predictor, device_id: str | None) -> tuple[int, ...]:
    """Features shape of one 1-s window for the member of `device_id`: (1, n_mels, n_frames)."""
    frontend = model.members[model.route(_device_id(device_id))].frontend
    return tuple(jax.eval_shape(frontend.features, jax.ShapeDtypeStruct((1, model.window), jnp.float32)).shape)


def check_complexity(model: Predictor, device_ids: Sequence[str] = COMPLEXITY_DEVICE_IDS,
                     inputs: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """test_complexity.py's complexity.json for `model`, one entry per id of `device_ids`.

    Args:
      inputs: the features each device is measured at (`load_inputs` of a dummy clip, as the
        reference does); None: one 1-s window (`input_shape_of`).
    Returns:
      {"per_device": {id: {"MACs", "Params" (bytes), "parameters", "precision", "member"}},
       "max_MACs", "max_Params", "limits": {"MACs", "Params"}, "within_limits"}.
    """
    if inputs is not None:
        _check_lengths(inputs, device_ids)
    per_device = {}
    measured: dict[tuple[str, tuple[int, ...]], MemberComplexity] = {}
    for i, device in enumerate(device_ids):
        submodel = get_model_for_device(model, device)
        shape = tuple(inputs[i].shape) if inputs is not None else input_shape_of(model, device)
        key = (submodel.member, shape)
        if key not in measured:  # the base serves many ids: count it once per shape
            measured[key] = measure_complexity(submodel, shape)
        c = measured[key]
        per_device[device] = {"MACs": c.macs, "Params": c.param_bytes, "parameters": c.params,
                              "precision": c.precision, "member": submodel.member}
    max_macs = max((d["MACs"] for d in per_device.values()), default=0)
    max_params = max((d["Params"] for d in per_device.values()), default=0)
    return {"per_device": per_device, "max_MACs": max_macs, "max_Params": max_params,
            "limits": {"MACs": MAX_MACS, "Params": MAX_PARAMS_MEMORY},
            "within_limits": max_macs <= MAX_MACS and max_params <= MAX_PARAMS_MEMORY}


def predict_loaded(model: Predictor, file_paths: Sequence[str | Path], device_ids: Sequence[str]
                   ) -> list[np.ndarray]:
    """`predict` with a model loaded already: one (n_classes,) float32 logit vector per file."""
    _check_lengths(file_paths, device_ids)
    windows = [model.load_windows(Path(p)) for p in file_paths]
    counts = [len(w) for w in windows]
    ids = [_device_id(d) for d in device_ids]
    stacked = np.concatenate(windows) if windows else np.zeros((0, model.window), np.float32)
    logits = model.window_logits(stacked, per_window(ids, counts))
    out, start = [], 0
    for n in counts:
        rows = logits[start:start + n]
        start += n
        # Several windows: log of the mean probability, whose softmax is that mean (see module doc).
        out.append(rows[0] if n == 1 else
                   np.log(np.asarray(jax.nn.softmax(rows, axis=-1)).mean(axis=0)).astype(np.float32))
    return out


@contextlib.contextmanager
def backend(use_cuda: bool) -> Iterator[None]:
    """Arrays created inside go to the CPU if not `use_cuda`, else to JAX's default device."""
    if use_cuda:  # JAX's default backend: the accelerator if there is one
        yield
        return
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def predict(file_paths: Sequence[str | Path], device_ids: Sequence[str],
            model_file_path: str | Path | None = None, use_cuda: bool = True
            ) -> tuple[list[np.ndarray], list[str]]:
    """Logits of each file from the model of its device (see module docstring), and the class order.

    Args:
      file_paths: audio files (any rate and channel count; the challenge's are 1-s wavs).
      device_ids: one id per file ("a", "s4", "unknown", ...).
      model_file_path: device set or saved model directory; None: `default_model_path()`.
      use_cuda: False: compute on the CPU.
    Returns:
      (logits, class_order): float32 arrays of shape (n_classes,), in input order, and the
      class names in logit order.
    """
    with backend(use_cuda):
        model = load_model(model_file_path)
        return predict_loaded(model, file_paths, device_ids), list(model.class_names)
