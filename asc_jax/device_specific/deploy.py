"""Deploying a device set member by member: complexity against the limits, int8, export.

DCASE2025 applies the limits (128 kB of parameters, 30 MMACs) to each device's model, not to
their sum, so every member is measured and checked on its own (`set_complexity`):

* MACs in the DCASE/torchinfo convention (`asc_jax.complexity.count_macs`) of the member's
  deploy architecture as its model.json describes it (an int8 member computes its float form's
  graph layer for layer: the same parameters and MACs), no weights read;
* parameters and their memory at the precision the member is deployed at: an int8 member at one
  byte per parameter (`complexity.memory_report`, which also gives the bytes it is stored in),
  a float member at `float_precision` (fp32 as saved; fp16 as the DCASE2025 baseline deploys).

`quantize_set` runs post-training int8 quantization (`asc_jax.quantize`) on every member,
calibrating a device's model on clips of that device and the base on the whole training split,
and writes a new set of int8 members; `export_set` exports every member (`asc_jax.export`).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asc_jax import complexity, export, inference
from asc_jax.audio.frontends import frontend_of
from asc_jax.checkpoint import MODEL_FORMS, WEIGHTS, build_float, model_form, read_spec
from asc_jax.device_set import BASE, UNKNOWN, DeviceModelSet, write_device_set

FLOAT_PRECISIONS = ("fp32", "fp16")
EXPORT_INDEX = "device_set_export.json"


@dataclasses.dataclass(frozen=True)
class MemberComplexity:
    """One member's complexity at its deployed precision, against the DCASE limits."""

    member: str  # BASE or a device id
    form: str  # "float" or "int8" (model.json)
    precision: str  # the precision its parameters are counted at
    params: int
    macs: int
    param_bytes: int  # DCASE parameter memory: params at `precision`
    stored_bytes: int | None  # int8 members: the bytes asc_jax.quantize stores (scales etc. on top)
    input_shape: tuple[int, ...]

    @property
    def macs_ok(self) -> bool:
        return self.macs <= complexity.DCASE_MAX_MACS

    @property
    def memory_ok(self) -> bool:
        return self.param_bytes <= complexity.DCASE_MAX_PARAM_BYTES

    @property
    def within_limits(self) -> bool:
        return self.macs_ok and self.memory_ok

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "input_shape": list(self.input_shape), "macs_ok": self.macs_ok,
                "memory_ok": self.memory_ok, "within_limits": self.within_limits,
                "dcase_max_macs": complexity.DCASE_MAX_MACS,
                "dcase_max_param_bytes": complexity.DCASE_MAX_PARAM_BYTES}


def _counting_model(spec: Mapping[str, Any]) -> nnx.Module:
    """The float deploy model a model.json describes, with zero weights: the counters need its
    layers and shapes, not its values, and an eager random init costs seconds per model."""
    model = nnx.eval_shape(lambda: build_float(spec, nnx.Rngs(0)))
    weights = nnx.state(model, WEIGHTS)
    nnx.replace_by_pure_dict(weights, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), nnx.to_pure_dict(weights)))
    nnx.update(model, weights)
    return model


def member_complexity(member: str, model_dir: str | Path, *, float_precision: str = "fp32") -> MemberComplexity:
    """Params, MACs and parameter memory of one saved model at its deployed precision, from its
    model.json alone (the architecture; no weights are read)."""
    if float_precision not in FLOAT_PRECISIONS:
        raise ValueError(f"float_precision must be one of {FLOAT_PRECISIONS}, got {float_precision!r}")
    spec = read_spec(model_dir)
    frontend = frontend_of(spec, model_dir)
    wave = jax.ShapeDtypeStruct((1, round(export.CLIP_SECONDS * frontend.sample_rate)), np.float32)
    input_shape = tuple(jax.eval_shape(frontend.features, wave).shape)
    # Counted on the float form with zero weights for every member: the counter traces concrete
    # modules, and an int8 member has its float form's layers, parameters and MACs.
    counted = complexity.report(_counting_model(spec), input_shape)
    form = model_form(spec)
    if form == "int8":
        importlib.import_module("asc_jax.quantize")  # registers the int8 form in MODEL_FORMS
        memory = complexity.memory_report(nnx.eval_shape(lambda: MODEL_FORMS.get("int8").build(spec, nnx.Rngs(0))))
        if counted.params != memory.params:
            raise RuntimeError(f"{model_dir}: the int8 model holds {memory.params} parameters, its float "
                               f"architecture {counted.params}")
        precision, param_bytes, stored = "int8", memory.int8_bytes, memory.stored_bytes
    else:
        precision, param_bytes, stored = float_precision, counted.param_bytes(float_precision), None
    return MemberComplexity(member, form, precision, counted.params, counted.macs, param_bytes, stored, input_shape)


def set_complexity(device_set: DeviceModelSet, *, float_precision: str = "fp32") -> list[MemberComplexity]:
    """`member_complexity` of every member, the base first."""
    return [member_complexity(key, path, float_precision=float_precision)
            for key, path in device_set.members().items()]


def complexity_table(rows: Sequence[MemberComplexity]) -> str:
    """One line per member, each checked against the limits ("OVER" marks a violation)."""
    head = f"{'member':<8}{'form':<6}{'precision':<10}{'params':>10}{'memory (B)':>12}{'MACs':>13}  limits"
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = "ok" if r.within_limits else " ".join(
            ["memory OVER"] * (not r.memory_ok) + ["MACs OVER"] * (not r.macs_ok))
        lines.append(f"{r.member:<8}{r.form:<6}{r.precision:<10}{r.params:>10,}{r.param_bytes:>12,}"
                     f"{r.macs:>13,}  {verdict}")
    lines.append(f"limits per model: {complexity.DCASE_MAX_PARAM_BYTES:,} B of parameters, "
                 f"{complexity.DCASE_MAX_MACS:,} MACs (input {'x'.join(map(str, rows[0].input_shape[1:]))})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Int8
# ---------------------------------------------------------------------------------------------

def quantize_set(device_set: DeviceModelSet, data_root: str | Path, out: str | Path, *,
                 calib_split: str | None = None, n_calib: int = 256, cfg: Any = None, seed: int = 0,
                 batch_size: int = 64, overwrite: bool = False) -> DeviceModelSet:
    """Post-training int8 quantization of every member into a new set at `out`.

    Args:
      device_set: a set of float deploy members.
      data_root: TAU-layout dataset root.
      calib_split: split the calibration clips are drawn from; default the set's training split
        (meta["train_split"]: DCASE2025 allows no other data of the dataset).
      n_calib: calibration clips per member.
      cfg: an `asc_jax.quantize.QuantConfig` (default settings if None).
    Returns:
      The int8 set; its meta keeps the float set's provenance (without its evaluation) and adds
      "quantization": {"float_set", "config", "calib_split", "members": {member: {"split",
      "n_calib", "devices" (those calibrated on), "memory"}}}.
    """
    from asc_jax.quantize import QuantConfig, post_training_quantize, save_quantized
    from asc_jax.quantize.cli import calibration_clips, clip_features

    cfg = QuantConfig() if cfg is None else cfg
    calib_split = calib_split or device_set.meta.get("train_split")
    if calib_split is None:
        raise ValueError(f"{device_set.directory} records no training split (meta['train_split']); "
                         "name the calibration split")
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    staging = out.with_name(out.name + ".members")
    shutil.rmtree(staging, ignore_errors=True)
    report = {}
    for key, path in device_set.members().items():
        saved = inference.load(path, form="float")
        if not saved.spec["model"].get("deploy"):
            raise ValueError(f"member {key!r} ({path}) is not a deploy model; quantize a set of fused models")
        # A device's model is calibrated on its own device's clips, the base on every device's.
        clips = calibration_clips(data_root, str(calib_split), n=n_calib, seed=seed,
                                  device=None if key == BASE else key)
        mels = clip_features(clips, data_root, saved.frontend, batch_size=batch_size)
        int8 = post_training_quantize(saved.model, mels, cfg, batch_size=batch_size)
        calibration = {"split": str(calib_split), "n_calib": len(clips),
                       "devices": sorted({c.device for c in clips})}
        save_quantized(staging / key, int8, saved.spec, cfg, calibration=calibration)
        report[key] = {**calibration, "memory": complexity.memory_report(int8).as_dict()}
    meta = {k: v for k, v in device_set.meta.items() if k not in ("eval", "quantization")}
    meta["quantization"] = {"float_set": str(device_set.directory), "config": dataclasses.asdict(cfg),
                            "calib_split": str(calib_split), "members": report}
    quantized = write_device_set(out, staging / BASE, {d: staging / d for d in device_set.devices},
                                 class_names=device_set.class_names, meta=meta, overwrite=overwrite)
    shutil.rmtree(staging)
    return quantized


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export_set(device_set: DeviceModelSet, out: str | Path, *, formats: Iterable[str] = ("stablehlo",),
               onnx_frontend: bool = False, onnx_batch_size: int = 1) -> dict[str, Any]:
    """Exports every member to `out/<member>/` (`export.export_saved`) and writes
    `out/device_set_export.json`: {"class_names", "members": {member: [files]}, "routing":
    {device: member}, "default": BASE} (an unknown device, "unknown" included, uses the default)."""
    out = Path(out)
    formats = tuple(formats)
    members = {key: [str(p) for p in export.export_saved(path, out / key, formats=formats,
                                                         onnx_frontend=onnx_frontend,
                                                         onnx_batch_size=onnx_batch_size)]
               for key, path in device_set.members().items()}
    index = {"class_names": list(device_set.class_names), "members": members,
             "routing": {d: d for d in device_set.devices}, "default": BASE, "unknown_id": UNKNOWN}
    (out / EXPORT_INDEX).write_text(json.dumps(index, indent=2))
    return index


def complexity_summary(rows: Sequence[MemberComplexity]) -> Mapping[str, Any]:
    """The JSON of `complexity` runs: every member's row and whether all are within the limits."""
    return {"members": {r.member: r.as_dict() for r in rows}, "all_within_limits": all(r.within_limits for r in rows),
            "max_macs": max(r.macs for r in rows), "max_param_bytes": max(r.param_bytes for r in rows)}
