"""Conversion of module trees, and the int8 saved-model form.

`quantize` (float -> int8), `prepare_qat` (float -> QAT) and `convert_qat` (QAT -> int8) return
copies of a fused deploy model with every conv replaced by its quantized form
(`asc_jax.quantize.layers`); `set_ranges` re-sets their activation ranges. `save_quantized` writes
an int8 model with `asc_jax.checkpoint`, and importing this module registers the "int8" entry of
`checkpoint.MODEL_FORMS`, with which `checkpoint.load_model` rebuilds it.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax import checkpoint
from asc_jax.complexity import memory_report
from asc_jax.quantize.config import QuantConfig
from asc_jax.quantize.layers import (QUANT_CONVS, ActRange, ConvSpec, FakeQuantConv, Int8Conv, QuantWeight,
                                     WeightScale)
from asc_jax.quantize.numerics import quantize_weight


def path_name(path: Sequence[Any]) -> str:
    """The name ("stages/0/1/expand/conv") of an nnx module path, as in `conv_layers` and the ranges."""
    return "/".join(map(str, path))


def _child(node: Any, key: Any) -> Any:
    return node[key] if isinstance(node, (nnx.List, nnx.Dict)) else getattr(node, key)


def _set_child(node: Any, key: Any, value: Any) -> None:
    if isinstance(node, (nnx.List, nnx.Dict)):
        node[key] = value
    else:
        setattr(node, key, value)


def conv_layers(model: nnx.Module) -> dict[str, nnx.Module]:
    """{path name ("stages/0/1/expand/conv"): module} of every conv (float, QAT or int8) of `model`."""
    return {path_name(path): m for path, m in nnx.iter_modules(model)
            if isinstance(m, (nnx.Conv, *QUANT_CONVS))}


def check_deploy(model: nnx.Module) -> None:
    """Raises ValueError unless `model` is a fused (BN-free) model with convs to quantize."""
    bns = [path_name(p) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    if bns:
        raise ValueError(f"the model has BatchNorm layers ({bns[0]}, ...): quantize the fused deploy "
                         "model (asc_jax.reparam.fuse; training writes it to <workdir>/deploy)")
    if not conv_layers(model):
        raise ValueError(f"{type(model).__name__} has no conv layer to quantize")


def map_convs(model: nnx.Module, fn: Callable[[str, nnx.Module], nnx.Module]) -> nnx.Module:
    """A copy of `model` with each conv replaced by fn(name, conv); `model` is left untouched."""
    graphdef, state = nnx.split(model)
    # Fresh buffers, not shared ones: a train step that donates the QAT model's arrays must not
    # delete the float model's.
    copy = nnx.merge(graphdef, jax.jit(lambda s: jax.tree.map(jnp.copy, s))(state))
    targets = [path for path, m in nnx.iter_modules(copy) if isinstance(m, (nnx.Conv, *QUANT_CONVS))]
    for path in targets:
        parent = copy
        for key in path[:-1]:
            parent = _child(parent, key)
        _set_child(parent, path[-1], fn(path_name(path), _child(parent, path[-1])))
    return copy


@functools.partial(jax.jit, static_argnums=1)
def _quantize_kernels(kernels: dict[str, jax.Array], bits: int) -> dict[str, tuple[jax.Array, jax.Array]]:
    # One compiled call for all layers: eager per-layer ops would compile a small program each.
    return {name: quantize_weight(kernel, bits) for name, kernel in kernels.items()}


def _lookup(ranges: Mapping[str, Any] | None, name: str, act_bits: int | None) -> Any:
    if act_bits is None:
        return None
    if ranges is None or name not in ranges:
        raise ValueError(f"no calibrated activation range for conv {name!r} "
                         f"(have {sorted(ranges or {})}); run calibrate() on this model")
    return ranges[name]


def _bias(conv: nnx.Module) -> jax.Array | None:
    return None if conv.bias is None else conv.bias[...]


def _float_convs(model: nnx.Module) -> dict[str, nnx.Conv]:
    check_deploy(model)
    convs = conv_layers(model)
    quantized = [name for name, conv in convs.items() if isinstance(conv, QUANT_CONVS)]
    if quantized:
        raise ValueError(f"conv {quantized[0]!r} is already quantized ({type(convs[quantized[0]]).__name__})")
    return convs


def quantize(model: nnx.Module, ranges: Mapping[str, Any] | None,
             cfg: QuantConfig = QuantConfig()) -> nnx.Module:
    """Int8 copy of a float deploy model: every conv becomes an `Int8Conv`.

    Args:
      model: a BN-free (fused) model.
      ranges: {conv name: [lo, hi]} from `calibrate` (unused when cfg.act_bits is None).
      cfg: bit widths.
    """
    convs = _float_convs(model)
    codes = _quantize_kernels({name: conv.kernel[...] for name, conv in convs.items()}, cfg.weight_bits)
    return map_convs(model, lambda name, conv: Int8Conv(
        ConvSpec.of(conv), *codes[name], _bias(conv), _lookup(ranges, name, cfg.act_bits),
        weight_bits=cfg.weight_bits, act_bits=cfg.act_bits))


def prepare_qat(model: nnx.Module, ranges: Mapping[str, Any] | None,
                cfg: QuantConfig = QuantConfig()) -> nnx.Module:
    """QAT copy of a float deploy model: every conv becomes a `FakeQuantConv` (trainable kernel)."""
    _float_convs(model)
    return map_convs(model, lambda name, conv: FakeQuantConv(
        ConvSpec.of(conv), conv.kernel[...], _bias(conv), _lookup(ranges, name, cfg.act_bits),
        weight_bits=cfg.weight_bits, act_bits=cfg.act_bits))


def convert_qat(model: nnx.Module) -> nnx.Module:
    """Int8 model from a QAT model, with the QAT model's bit widths and ranges."""
    convs = conv_layers(model)
    wrong = [name for name, conv in convs.items() if not isinstance(conv, FakeQuantConv)]
    if wrong or not convs:
        raise ValueError(f"conv {wrong[0] if wrong else None!r} is not a FakeQuantConv: convert_qat expects "
                         "the model returned by prepare_qat")
    bits = {conv.weight_bits for conv in convs.values()}
    if len(bits) != 1:
        raise ValueError(f"mixed weight bit widths {sorted(bits)}")
    codes = _quantize_kernels({name: conv.kernel[...] for name, conv in convs.items()}, bits.pop())
    return map_convs(model, lambda name, conv: Int8Conv(
        conv.spec, *codes[name], _bias(conv), None if conv.act_range is None else conv.act_range[...],
        weight_bits=conv.weight_bits, act_bits=conv.act_bits))


def set_ranges(model: nnx.Module, ranges: Mapping[str, Any]) -> nnx.Module:
    """Overwrites the activation ranges of a QAT or int8 model in place (e.g. after finetuning)."""
    for name, conv in conv_layers(model).items():
        if isinstance(conv, QUANT_CONVS) and conv.act_range is not None:
            conv.act_range.value = jnp.asarray(_lookup(ranges, name, conv.act_bits), jnp.float32)
    return model


# The int8 saved-model form. Everything a quantized model needs; RNG streams (if any) are rebuilt from a seed, as in
# asc_jax.checkpoint.
QUANT_STATE = (nnx.Param, nnx.BatchStat, QuantWeight, WeightScale, ActRange)


def _build_int8(spec: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    """The int8 model of a model.json written by `save_quantized` (placeholder ranges)."""
    deploy = checkpoint.build_float(spec, rngs)
    zeros = {name: jnp.zeros((2,)) for name in conv_layers(deploy)}
    return quantize(deploy, zeros, QuantConfig(**spec["quantization"]["config"]))


# `checkpoint.load_model` rebuilds a saved int8 model with this (it imports `asc_jax.quantize`, and
# with it this module, when it meets one).
checkpoint.MODEL_FORMS.register("int8")(checkpoint.ModelForm(QUANT_STATE, _build_int8))


def save_quantized(directory: str | Path, model: nnx.Module, spec: Mapping[str, Any], cfg: QuantConfig,
                   **extra: Any) -> Path:
    """Saves an int8 model with `checkpoint.save_model`; `checkpoint.load_model` reads it back.

    Args:
      directory: output folder (`weights/` + `model.json`).
      model: the result of `quantize` / `convert_qat`.
      spec: model.json of the float deploy model it came from ({"model", "frontend", "class_names"...}).
      cfg: the QuantConfig it was made with.
      **extra: more JSON-able entries for model.json (evaluation results...).
    Returns:
      The absolute directory.
    """
    convs = conv_layers(model)
    if not convs or not all(isinstance(c, Int8Conv) for c in convs.values()):
        raise ValueError("save_quantized expects an int8 model (from quantize or convert_qat)")
    if not spec.get("model", {}).get("deploy"):
        raise ValueError("spec must describe the deploy model (model.json with model.deploy = true)")
    m = spec["model"]
    entries = {k: v for k, v in spec.items() if k not in ("model", "quantization")} | extra
    return checkpoint.save_model(directory, model, name=m["name"], options=m["options"], deploy=True, **entries,
                                 quantization={"form": "int8", "config": dataclasses.asdict(cfg),
                                               "memory": memory_report(model).as_dict()})
