"""Export of deploy models (float or int8) to StableHLO (`jax.export`) and ONNX (`jax2onnx`).

Every model is exported with the frontend its model.json names (`frontends.frontend_of`: the
students' log-mel "logmel", PaSST's "passt", ...); the export functions take that `Frontend`.

StableHLO: waveform in, logits out. The frontend and the weights (int8 ones stay int8) are
constants of one serialized module with a symbolic batch dimension;
`jax.export.deserialize(bytearray(data)).call(waveforms)` runs it in any JAX process, without
this package. (The default log-mel's filterbank and frame indices make up ~3 MB of the file; the
int8 Rep-Mobile ~0.14 MB.)

ONNX: by default features in (dynamic batch), logits out; the frontend (name and options),
sample rate and clip length are written to the model's metadata_props, so a runtime can compute
the features. For the "logmel" frontend the options are the MelConfig fields, also written as
"mel_config": librosa.feature.melspectrogram(center=True, pad_mode="constant", power=2,
window="hann") with those fields, then log(mel + log_floor). With the frontend included the STFT
is in the graph too (jax2onnx lowers the FFT to ONNX DFT) but the batch size is fixed: in
jax2onnx 0.17.1 the lowering of the `lax.pad` that `jnp.fft.rfft` emits cannot take a symbolic
dimension.

Every export writes a JSON description next to the model (`<file>.json`; the same text is the
ONNX "asc_jax" metadata entry): input kind and shape, sample rate, the frontend
(`Frontend.describe()`; "logmel" models also keep their MelConfig under "mel", as in their
model.json), class names, the model spec and quantization settings. Outputs are logits; softmax
gives class probabilities.

Two jax2onnx workarounds live in `_jax2onnx_plugins_for_lax`, both because jax2onnx loads all of
its ~1,500 plugins on its first conversion:
  * loading time: its Equinox plugins compile JAX functions at import (about 30 s on 2 CPU
    cores); a model given as a function of lax/jnp calls needs only the lax/jnp plugins;
  * its Flax NNX plugin patches `nnx.avg_pool` with a keyword-only `window_shape` and string
    padding, which breaks Rep-Mobile's `avg_pool_3x3` (positional window, explicit padding).
So the model is converted as a plain function (weights closed over) with only jax2onnx's lax/jnp
plugins loaded. jax2onnx 0.17.1 has no option for that: the conversion calls its plugin discovery
function `import_all_plugins` by name, so it is replaced for the duration of the conversion and
restored afterwards. That relies on jax2onnx internals, so it runs only with the versions it was
tested on (JAX2ONNX_TESTED, the range of the deploy extra in pyproject.toml) and any other version
is refused with an error rather than patched blindly. If the Flax plugins were already loaded in
this process, export_onnx refuses with an error that says so (use a fresh process).

CLI: python -m asc_jax.export --checkpoint <workdir>/deploy --out <workdir>/export
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import inference
from asc_jax.audio.frontends import Frontend
from asc_jax.data import tau

FORMAT_VERSION = 1
CLIP_SECONDS = 1.0  # DCASE2024 Task 1 clips; the models are trained on exactly this length.


def _logits_fn(model: nnx.Module, frontend: Frontend, include_frontend: bool) -> Callable[[jax.Array], jax.Array]:
    """`inference.model_fn` with the weights closed over, so they become constants of the export;
    waveform input through `frontend` when it is included, feature input without."""
    return inference.model_fn(model, frontend.features if include_frontend else None, jit=False)


def input_shape(frontend: Frontend, include_frontend: bool, clip_seconds: float = CLIP_SECONDS
                ) -> tuple[int, ...]:
    """Shape of one example: (n_samples,) of waveform, or the frontend's (n_mels, n_frames)
    features of such a waveform (traced with `jax.eval_shape`, nothing computed)."""
    n_samples = round(clip_seconds * frontend.sample_rate)
    if include_frontend:
        return (n_samples,)
    wave = jax.ShapeDtypeStruct((1, n_samples), jnp.float32)
    return tuple(jax.eval_shape(frontend.features, wave).shape[1:])


def metadata(frontend: Frontend, class_names: Sequence[str], *, include_frontend: bool, batch: int | str,
             clip_seconds: float = CLIP_SECONDS, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON description written next to every export."""
    shape = [batch, *input_shape(frontend, include_frontend, clip_seconds)]
    spec = dict(spec or {})
    # "logmel" exports keep the MelConfig under "mel" too, the key their model.json uses.
    mel = {"mel": dict(frontend.options)} if frontend.name == "logmel" else {}
    return {
        "format_version": FORMAT_VERSION,
        "input": {
            "name": "waveform" if include_frontend else "log_mel",
            "shape": shape,
            "dtype": "float32",
            "description": (f"mono waveform at {frontend.sample_rate} Hz, {clip_seconds} s per example"
                            if include_frontend else
                            f"features (n_mels, n_frames) of the {frontend.name!r} frontend with the options "
                            f"under 'frontend', of a {clip_seconds} s clip at {frontend.sample_rate} Hz"),
        },
        "output": {"name": "logits", "shape": [batch, len(class_names)],
                   "description": "softmax -> class probabilities"},
        "frontend_included": include_frontend,
        "clip_seconds": clip_seconds,
        "frontend": frontend.describe(),
        **mel,
        "class_names": list(class_names),
        "model": spec.get("model"),
        "quantization": (spec.get("quantization") or {}).get("config"),
    }


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# ---------------------------------------------------------------------------------------------
# StableHLO
# ---------------------------------------------------------------------------------------------

def export_stablehlo(model: nnx.Module, path: str | Path, *, frontend: Frontend,
                     class_names: Sequence[str] = tau.CLASSES, include_frontend: bool = True,
                     clip_seconds: float = CLIP_SECONDS, platforms: Sequence[str] | None = None,
                     spec: Mapping[str, Any] | None = None) -> Path:
    """Serializes `model` (with the frontend by default) as StableHLO with a symbolic batch.

    Args:
      model: deploy model (float or int8).
      path: output file; its description goes to `<path>.json`.
      frontend: the model's frontend (recorded in any case; in the graph when include_frontend).
      class_names: names of the logits, in order.
      include_frontend: waveform input (True) or feature input (False).
      clip_seconds: example length.
      platforms: lowering targets, e.g. ("cpu", "cuda"); default: the current backend.
      spec: model.json of the saved model (recorded in the description).
    Returns:
      The path written.
    """
    fn = _logits_fn(model, frontend, include_frontend)
    batch, = jax.export.symbolic_shape("batch")
    arg = jax.ShapeDtypeStruct((batch, *input_shape(frontend, include_frontend, clip_seconds)), jnp.float32)
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(arg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(exported.serialize())
    meta = metadata(frontend, class_names, include_frontend=include_frontend, batch="batch",
                    clip_seconds=clip_seconds, spec=spec)
    _sidecar(path).write_text(json.dumps(meta, indent=2))
    return path


def load_stablehlo(path: str | Path) -> tuple[jax.export.Exported, dict[str, Any]]:
    """(Exported, description) of a file written by `export_stablehlo`; call `.call(x)` on the first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as err:  # the deserializer raises several types on foreign bytes
        raise ValueError(f"{path}: not a serialized jax.export module ({err})") from err
    meta_path = _sidecar(path)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return exported, meta


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------

# jax2onnx versions _jax2onnx_plugins_for_lax was tested with: [low, high), as in pyproject.toml's
# deploy extra. Widen both together, after checking that the plugin discovery function still has
# the same name and owners, that plugins/jax still holds the lax/jnp plugins, and tests/test_export.py.
JAX2ONNX_TESTED = ((0, 17, 1), (0, 18))


def _release(version: str) -> tuple[int, ...]:
    """(0, 17, 1) of "0.17.1" (also of "0.17.1rc1", "0.17.1.dev3+g1234")."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise ValueError(f"cannot read version {version!r}")
    return tuple(int(part) for part in match.group().split("."))


def _check_jax2onnx_version() -> None:
    version = importlib.metadata.version("jax2onnx")
    low, high = JAX2ONNX_TESTED
    if not low <= _release(version) < high:
        tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        raise RuntimeError(
            f"ONNX export replaces jax2onnx's plugin discovery (asc_jax/export.py) and is tested only "
            f"with jax2onnx{tested}; jax2onnx {version} is installed. Install a tested version "
            "(pip install -c scripts/constraints.txt -e '.[deploy]'), or check the workaround against "
            "this version and widen JAX2ONNX_TESTED and the deploy extra.")


@contextlib.contextmanager
def _jax2onnx_plugins_for_lax() -> Iterator[Any]:
    """jax2onnx with only its lax/jnp plugins discoverable during the conversion (module docstring).

    Raises:
      RuntimeError: jax2onnx is not a tested version, or its Flax plugins are already loaded.
    """
    _check_jax2onnx_version()
    import jax2onnx
    from jax2onnx.converter import conversion_api
    from jax2onnx.plugins import plugin_system

    if "jax2onnx.plugins.flax.nnx.avg_pool" in sys.modules:
        raise RuntimeError(
            "jax2onnx's Flax plugins are loaded in this process; their nnx.avg_pool patch cannot trace "
            "Rep-Mobile's pooling (jax2onnx 0.17.1). Export ONNX from a fresh process.")
    loaded = set()

    def import_lax_plugins() -> None:
        if loaded:
            return
        package = importlib.import_module("jax2onnx.plugins.jax")
        for info in pkgutil.walk_packages(package.__path__, prefix="jax2onnx.plugins.jax."):
            importlib.import_module(info.name)
        loaded.add(True)

    # The conversion looks the discovery function up by name in these two modules (conversion_api
    # imported it from plugin_system).
    owners = (conversion_api, plugin_system)
    originals = [owner.import_all_plugins for owner in owners]
    try:
        for owner in owners:
            owner.import_all_plugins = import_lax_plugins
        yield jax2onnx
    finally:
        for owner, original in zip(owners, originals):
            owner.import_all_plugins = original


def export_onnx(model: nnx.Module, path: str | Path, *, frontend: Frontend,
                class_names: Sequence[str] = tau.CLASSES, include_frontend: bool = False, batch_size: int = 1,
                clip_seconds: float = CLIP_SECONDS, spec: Mapping[str, Any] | None = None,
                opset: int = 23) -> Path:
    """Converts `model` to ONNX with jax2onnx.

    Args:
      model: deploy model (float or int8: int8 weights stay int8 initializers, dequantized in
        the graph).
      path: output .onnx file; its description goes to `<path>.json` and metadata_props.
      frontend: the model's frontend (recorded in any case; in the graph when include_frontend).
      class_names: names of the logits, in order.
      include_frontend: waveform input with the frontend in the graph (fixed batch of
        `batch_size`), or feature input (dynamic batch; `batch_size` unused).
      clip_seconds: example length.
      spec: model.json of the saved model (recorded in the description).
      opset: ONNX opset.
    Returns:
      The path written.
    """
    _require_onnx_extra()
    import onnx

    if include_frontend and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: int | str = batch_size if include_frontend else "batch"
    meta = metadata(frontend, class_names, include_frontend=include_frontend, batch=batch,
                    clip_seconds=clip_seconds, spec=spec)
    with _jax2onnx_plugins_for_lax() as jax2onnx:
        proto = jax2onnx.to_onnx(_logits_fn(model, frontend, include_frontend),
                                 inputs=[(batch, *input_shape(frontend, include_frontend, clip_seconds))],
                                 model_name="asc_jax", opset=opset,
                                 input_names=[meta["input"]["name"]], output_names=["logits"])
    entries = {"asc_jax": json.dumps(meta), "frontend": json.dumps(meta["frontend"]),
               "class_names": json.dumps(meta["class_names"]), "input": meta["input"]["name"],
               "clip_seconds": str(clip_seconds)}
    if "mel" in meta:
        entries["mel_config"] = json.dumps(meta["mel"])
    onnx.helper.set_model_props(proto, entries)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    _sidecar(path).write_text(json.dumps(meta, indent=2))
    return path


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The "asc_jax" description stored in an exported ONNX model's metadata_props."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "asc_jax" not in props:
        raise ValueError(f"{path}: no asc_jax metadata (not written by asc_jax.export)")
    return json.loads(props["asc_jax"])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def _require_onnx_extra() -> None:
    """ONNX is an optional extra: say how to get it instead of failing deep inside an import."""
    missing = [m for m in ("jax2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs the deploy extra ({', '.join(missing)} not installed): "
            "pip install -c scripts/constraints.txt -e '.[deploy]' (jax2onnx 0.17 requires "
            "orbax-checkpoint<0.11.37, and the constraints file holds a tested set); "
            "StableHLO export (--format stablehlo, the default) needs no extra.")


def export_saved(model_dir: str | Path, out_dir: str | Path, *, formats: Iterable[str] = ("stablehlo",),
                 onnx_frontend: bool = False, onnx_batch_size: int = 1) -> list[Path]:
    """Exports a saved model dir (float deploy or int8) to `out_dir`/model.{stablehlo,onnx}, with
    the frontend its model.json names (`inference.load`)."""
    saved = inference.load(model_dir)
    model, spec, frontend = saved.model, saved.spec, saved.frontend
    class_names = spec.get("class_names", list(tau.CLASSES))
    out_dir = Path(out_dir)
    written = []
    for fmt in formats:
        if fmt == "stablehlo":
            written.append(export_stablehlo(model, out_dir / "model.stablehlo", frontend=frontend,
                                            class_names=class_names, spec=spec))
        elif fmt == "onnx":
            written.append(export_onnx(model, out_dir / "model.onnx", frontend=frontend, class_names=class_names,
                                       include_frontend=onnx_frontend, batch_size=onnx_batch_size, spec=spec))
        else:
            raise ValueError(f"unknown export format {fmt!r}; known: stablehlo, onnx")
    return written


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export a saved deploy model (float or int8) to StableHLO and ONNX.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="saved model dir (<workdir>/deploy)")
    parser.add_argument("--out", required=True, type=Path, help="output dir")
    parser.add_argument("--format", nargs="+", choices=("stablehlo", "onnx"), default=["stablehlo"],
                        help="stablehlo (default install) and/or onnx (needs the deploy extra)")
    parser.add_argument("--onnx-frontend", action="store_true",
                        help="waveform-input ONNX with the STFT in the graph (fixed batch)")
    parser.add_argument("--onnx-batch-size", type=int, default=1, help="batch of the waveform-input ONNX")
    args = parser.parse_args(None if argv is None else list(argv))
    if "onnx" in args.format:
        try:
            _require_onnx_extra()
        except ImportError as err:  # before any work: one line, not a traceback
            parser.error(str(err))
    for path in export_saved(args.checkpoint, args.out, formats=args.format, onnx_frontend=args.onnx_frontend,
                             onnx_batch_size=args.onnx_batch_size):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
