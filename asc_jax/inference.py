"""The one inference path: waveform -> frontend -> model -> logits, and batched prediction over clips.

DESIGN rule 15, after big_vision's `predict_fn` that feeds all its evaluators: evaluation during
and after training, `asc_jax.predict`, quantization (calibration features and evaluation),
export and teacher precompute all build their model function here and run it over their data
with `predict`.

    fn = inference.model_fn(model, frontend.features)   # a live model, jitted x -> logits
    saved = inference.load("<workdir>/deploy")          # a saved model (float or int8) with the
    logits = inference.predict(saved.fn, source, 64)    #   frontend its model.json names

* `forward` is the pure function underneath, `(state, x, *frontend_args) -> logits`, for callers
  that pass the weights themselves: the training loop (its state changes every step; one
  compilation serves all evaluations) and the counters (`complexity.xla_flops`).
* Models run in inference mode (`train=False`) and return their logits, the first element of
  `(logits, aux)`.
* On CPU the functions built to run (`model_fn`, the training loop's evaluation) loop over
  8-row slices of each batch (`microbatched`, `default_microbatch`), which keeps a slice's
  activations in the CPU caches; the counters and export trace the plain whole-batch program.
* `predict` keeps shapes static (DESIGN rule 8): every call sees `batch_size` rows, the last
  batch is zero-padded and its padding masked out, so each clip comes back once, in order.
  Per-clip inputs (`rows`, e.g. the augmentation parameters a teacher replays) are batched and
  padded alongside the audio.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np
from flax import nnx

from asc_jax import parallel
from asc_jax.audio.frontends import Frontend, frontend_of
from asc_jax.checkpoint import load_model, read_spec, resolve_model_dir
from asc_jax.data import pipeline, sources
from asc_jax.microbatch import default_microbatch, microbatched

Features = Callable[..., jax.Array]  # frontend: (waveform (B, n_samples), *args) -> model input


def forward(graphdef: nnx.GraphDef, features: Features | None = None, *,
            microbatch: int | None = None) -> Callable[..., jax.Array]:
    """The pure `(state, x, *frontend_args) -> logits (B, C)` of a model in inference mode.

    Args:
      graphdef: the model's static part (`nnx.split`).
      features: the frontend, called as `features(x, *frontend_args)` (e.g. `Frontend.features`,
        or one that also replays augmentations); None when x is the model input already (a
        log-mel batch). Per-clip frontend_args have the batch as their leading axis.
      microbatch: None: one pass over the batch; else frontend + model run over slices of at
        most this many rows (`microbatched`; `default_microbatch()` for a function to run).
    Returns:
      fn(state, x, *frontend_args), where state is the model's `nnx.State` or a tuple of states
      that `nnx.merge` joins (e.g. `(params, batch_stats)` of a `TrainState`). Not jitted.
    """

    def logits(state: Any, x: jax.Array, *frontend_args: Any) -> jax.Array:
        if features is not None:
            x = features(x, *frontend_args)
        states = state if isinstance(state, tuple) else (state,)
        return nnx.merge(graphdef, *states)(x, train=False)[0]

    def fn(state: Any, x: jax.Array, *frontend_args: Any) -> jax.Array:
        return microbatched(lambda x, *args: logits(state, x, *args), microbatch)(x, *frontend_args)

    return fn


def jitted_forward(graphdef: nnx.GraphDef, features: Features | None = None) -> Callable[..., jax.Array]:
    """`forward` jitted, over slices of `default_microbatch()` rows: the function to run (the
    training loop's evaluations, `model_fn`, the benchmarks)."""
    return jax.jit(forward(graphdef, features, microbatch=default_microbatch()))


def model_fn(model: nnx.Module, features: Features | None = None, *, jit: bool = True
             ) -> Callable[..., jax.Array]:
    """`x, *frontend_args -> logits` of a live model (float, QAT or int8).

    Args:
      model: the model; its current weights are taken.
      features: its frontend, as in `forward`.
      jit: True: jitted with the weights passed as arguments (compiled once per input shape),
        over slices of `default_microbatch()` rows. False: pure, the plain whole-batch program
        with the weights closed over, so that tracing it (`jax.export`, jax2onnx) makes them
        constants of the traced program.
    """
    graphdef, state = nnx.split(model)
    fn = jitted_forward(graphdef, features) if jit else forward(graphdef, features)
    return lambda x, *frontend_args: fn(state, x, *frontend_args)


class SavedModel(NamedTuple):
    """A saved model ready for inference (`load`)."""

    fn: Callable[[jax.Array], jax.Array]  # jitted waveform (B, n_samples) -> logits (B, C)
    model: nnx.Module
    spec: dict  # model.json without its integrity data
    frontend: Frontend  # the one model.json names (`frontends.frontend_of`); fn includes it


def load(directory: str | Path, *, seed: int = 0, form: str | None = None) -> SavedModel:
    """A saved model (float or int8, `checkpoint.load_model`) with the frontend of its model.json.

    Args:
      directory: the saved model's directory (model.json + weights/), or a train.py workdir
        (its deploy/, else model/; `checkpoint.resolve_model_dir`).
      seed: initialises its non-weight state (RNG streams).
      form: the model form expected ("float", "int8"); None accepts any.
    Raises:
      FileNotFoundError, CorruptModelError: as `checkpoint.load_model`.
      ValueError: model.json names no usable frontend, or the model is not of `form`.
    """
    directory = resolve_model_dir(directory)
    frontend = frontend_of(read_spec(directory), directory)  # before reading any weights
    model, spec = load_model(directory, seed=seed, form=form)
    return SavedModel(model_fn(model, frontend.features), model, spec, frontend)


def _array_batches(waves: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """`pipeline.eval_batches` for waveforms already in memory: {"audio", "mask"} batches."""
    for start in range(0, len(waves), batch_size):
        yield {"audio": _padded(waves, start, batch_size),
               "mask": np.arange(start, start + batch_size) < len(waves)}


def _padded(a: np.ndarray, start: int, batch_size: int) -> np.ndarray:
    """Rows `start:start + batch_size` of `a`, zero-padded to `batch_size` rows."""
    chunk = a[start:start + batch_size]
    out = np.zeros((batch_size, *a.shape[1:]), a.dtype)
    out[:len(chunk)] = chunk
    return out


def predict(fn: Callable[..., Any], source: sources.ClipSource | np.ndarray, batch_size: int, *,
            rows: Any = None, mesh: jax.sharding.Mesh | None = None) -> Any:
    """`fn` over every clip of `source`, once each and in order, in batches of one static shape.

    Args:
      fn: `audio (B, n_samples) -> pytree of (B, ...) arrays` (logits, features...); with `rows`,
        `fn(audio, rows_of_the_batch)`. Traced (`jax.eval_shape`) only for an empty source, to
        shape the empty result.
      source: a ClipSource (read by `pipeline.eval_batches`) or waveforms (N, n_samples).
      batch_size: rows per call; with a mesh, rounded up to split evenly over its devices. The
        last batch is zero-padded and the padding dropped from the result.
      rows: optional pytree of per-clip inputs, each leaf an array of N rows in clip order (e.g.
        augmentation parameters); every batch gets the rows of its clips, zero-padded and placed
        like its audio.
      mesh: if given, every batch is placed on it (`parallel.put_eval_batch`) and the outputs
        gathered from every process (`parallel.to_host`); without one this process computes all
        rows itself and they are copied back with `jax.device_get`.
    Returns:
      fn's pytree with numpy leaves of N rows.
    Raises:
      ValueError: a leaf of `rows` without N rows.
    """
    if mesh is not None:
        batch_size = -(-batch_size // mesh.size) * mesh.size
    if isinstance(source, sources.ClipSource):
        n_samples, batches = source.num_samples, pipeline.eval_batches(source, batch_size, sr=source.sr)
    else:
        source = np.asarray(source, np.float32)
        n_samples, batches = source.shape[1], _array_batches(source, batch_size)
    if rows is not None:
        rows = jax.tree.map(np.asarray, rows)
        shapes = [a.shape for a in jax.tree.leaves(rows)]
        if any(not s or s[0] != len(source) for s in shapes):
            raise ValueError(f"rows must hold one row per clip ({len(source)}), got leaves of shapes {shapes}")
    place = (lambda x: x) if mesh is None else (lambda x: parallel.put_eval_batch(x, mesh))
    out = []
    for i, batch in enumerate(batches):
        args = (place(batch["audio"]),)
        if rows is not None:
            args += (place(jax.tree.map(lambda a: _padded(a, i * batch_size, batch_size), rows)),)
        # Sharded over the mesh: gather every process's rows; without a mesh this process
        # computed all of them itself (a gather would stack every process's copy).
        result = parallel.to_host(fn(*args)) if mesh is not None else jax.device_get(fn(*args))
        out.append(jax.tree.map(lambda a, mask=batch["mask"]: np.asarray(a)[mask], result))
    if not out:  # no clips: empty arrays of the shapes fn would return
        args = (jax.ShapeDtypeStruct((batch_size, n_samples), np.float32),)
        if rows is not None:
            args += (jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype),
                                  rows),)
        shapes = jax.eval_shape(fn, *args)
        return jax.tree.map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)
