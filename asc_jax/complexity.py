"""Model complexity in the DCASE convention: parameters, MACs and parameter memory.

DCASE Task 1 counts complexity with torchinfo (via the organisers' `nessi` helper). Its rules,
reproduced here so the numbers are comparable with the challenge's:
  * parameters: every trainable parameter (conv/linear weights and biases, BN affine, GRN...);
    BN running statistics are buffers and do not count;
  * MACs, per layer, only for parameters that torchinfo calls "weight"/"bias" (flax: kernel,
    scale, bias): a conv adds n_params * batch * prod(output spatial dims); any other layer
    (BN, LayerNorm, Linear) adds n_params * batch. Custom parameters (GRN's gamma/beta, position
    embeddings, tokens) add none.
MACs are counted per layer from the output shapes seen while tracing the model abstractly
(`jax.eval_shape`: nothing is computed). `xla_flops` gives XLA's own estimate as a cross-check.

Parameter memory is the parameter count at the bytes of a precision (`ComplexityReport`), and for
the int8 form of `asc_jax.quantize` also what that form stores on top (`memory_report`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax.inference import forward

DCASE_MAX_PARAM_BYTES = 128_000
DCASE_MAX_MACS = 30_000_000
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}

# flax parameter names that torchinfo would call "weight" or "bias".
_MAC_PARAM_NAMES = ("kernel", "scale", "bias")


def count_params(model: nnx.Module) -> int:
    """Number of parameters in the DCASE count: the nnx.Param leaves, plus the int8 weight codes
    of quantized convs (Variables, not Params, as integers take no gradient, but the weights all
    the same: an int8 model has the parameters of its float form)."""
    codes = sum(_quantized_kernel_size(m) for _, m in nnx.iter_modules(model))
    return codes + sum(int(math.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _quantized_kernel_size(module: nnx.Module) -> int:
    """Size of a quantized conv's kernel when it is not an nnx.Param (int8 codes), else 0."""
    if isinstance(module, QuantizedConv) and not isinstance(module.kernel, nnx.Param):
        return int(math.prod(module.kernel.shape))
    return 0


def _direct_params(module: nnx.Module) -> dict[str, int]:
    """{attribute name: size} of the parameters held directly by `module` (not by children):
    its nnx.Params, and a quantized conv's int8 kernel (`count_params`)."""
    params = {name: int(math.prod(value.shape)) for name, value in vars(module).items()
              if isinstance(value, nnx.Param)}
    if _quantized_kernel_size(module):
        params["kernel"] = _quantized_kernel_size(module)
    return params


@contextlib.contextmanager
def _recording_outputs(model: nnx.Module) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
    """Patches `__call__` of every module class that owns MAC weights to log (id, output shape).

    NNX has no method interceptor (linen's `intercept_methods`), so the classes are patched for
    the duration of one abstract trace and restored afterwards, also on error. A call is logged
    once per layer call, at the outermost level: a subclass may delegate to its patched base
    (`layers.DepthwiseConv` with conv_lowering "xla" calls `nnx.Conv.__call__`), and the layer
    must count the same whichever way it lowers.
    """
    calls: list[tuple[int, tuple[int, ...]]] = []
    running: set[int] = set()  # ids of the layers whose patched __call__ is on the stack
    # Only layers with multiply-accumulate weights: a model's own parameters (PaSST's tokens and
    # positional embeddings) cost no MACs, and its __call__ returns (logits, aux), not an array.
    classes = {type(m) for _, m in nnx.iter_modules(model) if set(_direct_params(m)) & set(_MAC_PARAM_NAMES)}
    originals = {cls: cls.__call__ for cls in classes}

    def wrap(original):
        def recorded(self, *args, **kwargs):
            if id(self) in running:
                return original(self, *args, **kwargs)
            running.add(id(self))
            try:
                out = original(self, *args, **kwargs)
            finally:
                running.discard(id(self))
            calls.append((id(self), tuple(out.shape)))
            return out
        return recorded

    try:
        for cls, original in originals.items():
            cls.__call__ = wrap(original)
        yield calls
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def count_macs(model: nnx.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass (inference mode) in the DCASE/torchinfo convention.

    Args:
      model: any model of the zoo.
      input_shape: e.g. (1, 256, 63); the leading axis is the batch.
    """
    modules = {id(m): m for _, m in nnx.iter_modules(model)}
    with _recording_outputs(model) as calls:
        # Called on the module itself (not a split/merge copy) so recorded ids are its layers';
        # inference mode mutates nothing, and eval_shape computes nothing.
        jax.eval_shape(lambda x: model(x, train=False)[0], jax.ShapeDtypeStruct(input_shape, jnp.float32))
    if not calls:
        raise RuntimeError(f"no parameterised layer of {type(model).__name__} ran while tracing")
    return sum(_layer_macs(modules[module_id], out_shape) for module_id, out_shape in calls)


def _layer_macs(module: nnx.Module, out_shape: tuple[int, ...]) -> int:
    n = sum(size for name, size in _direct_params(module).items() if name in _MAC_PARAM_NAMES)
    if isinstance(module, (nnx.Conv, QuantizedConv)):
        return n * out_shape[0] * math.prod(out_shape[1:-1])  # batch x output spatial (NHWC)
    return n * out_shape[0]


def xla_flops(model: nnx.Module, input_shape: tuple[int, ...]) -> float:
    """XLA's flop estimate of the compiled inference forward pass (`inference.forward`; a cross-check)."""
    graphdef, state = nnx.split(model)
    compiled = jax.jit(forward(graphdef)).lower(state, jnp.zeros(input_shape, jnp.float32)).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returns one dict per computation
        analysis = analysis[0]
    return float(analysis["flops"])


@dataclasses.dataclass(frozen=True)
class ComplexityReport:
    params: int
    macs: int
    input_shape: tuple[int, ...]

    def param_bytes(self, precision: str = "fp32") -> int:
        return self.params * BYTES_PER_PARAM[precision]

    def within_dcase_limits(self, precision: str = "int8") -> bool:
        return self.param_bytes(precision) <= DCASE_MAX_PARAM_BYTES and self.macs <= DCASE_MAX_MACS

    def as_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "input_shape": list(self.input_shape),
                **{f"param_bytes_{p}": self.param_bytes(p) for p in BYTES_PER_PARAM},
                "dcase_max_param_bytes": DCASE_MAX_PARAM_BYTES, "dcase_max_macs": DCASE_MAX_MACS}

    def table(self) -> str:
        """A human-readable report against the DCASE limits."""
        def mark(ok: bool) -> str:
            return "ok" if ok else "OVER LIMIT"
        rows = [f"input            {'x'.join(map(str, self.input_shape))}",
                f"parameters       {self.params:,}",
                f"MACs             {self.macs:,}  (limit {DCASE_MAX_MACS:,}: {mark(self.macs <= DCASE_MAX_MACS)})"]
        for p in BYTES_PER_PARAM:
            b = self.param_bytes(p)
            rows.append(f"memory {p:<6}    {b:,} B  (limit {DCASE_MAX_PARAM_BYTES:,} B: "
                        f"{mark(b <= DCASE_MAX_PARAM_BYTES)})")
        return "\n".join(rows)


def report(model: nnx.Module, input_shape: tuple[int, ...] = (1, 256, 63)) -> ComplexityReport:
    return ComplexityReport(count_params(model), count_macs(model, input_shape), tuple(input_shape))


class QuantizedConv(nnx.Module):
    """Base class of the quantized forms of a conv (`asc_jax.quantize.layers`: FakeQuantConv, Int8Conv).

    They hold `kernel` (HWIO: float, or int8 codes), `bias` (or None) and `act_range` (the
    calibrated range of the conv input, or None where the input stays float). The base lives here
    so that `memory_report` knows them without importing asc_jax.quantize, which imports this module.
    """


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Parameter memory of a model quantized with the scheme of `asc_jax.quantize`.

    Attributes:
      params: parameters in the DCASE count (conv weights + biases + other trainables).
      weight_params: conv weights, int8 in the quantized model.
      bias_params: conv biases (float32 here; int32 in integer runtimes).
      other_params: other trainable values kept in float32 (GRN gamma/beta).
      weight_scales: per-output-channel float32 weight scales (one per conv output channel).
      act_ranges: quantized activation tensors, each with a float32 [lo, hi] (-> scale, zero point).
    """

    params: int
    weight_params: int
    bias_params: int
    other_params: int
    weight_scales: int
    act_ranges: int

    @property
    def int8_bytes(self) -> int:
        """DCASE parameter memory at int8: every parameter at one byte."""
        return self.params

    @property
    def overhead_bytes(self) -> int:
        """Quantization parameters on top: float32 weight scales + [lo, hi] per activation."""
        return 4 * self.weight_scales + 8 * self.act_ranges

    @property
    def stored_bytes(self) -> int:
        """Bytes of the int8 model as asc_jax.quantize stores it (float32 biases and GRN)."""
        return self.weight_params + 4 * (self.bias_params + self.other_params) + self.overhead_bytes

    @property
    def fits_dcase(self) -> bool:
        return self.int8_bytes <= DCASE_MAX_PARAM_BYTES

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "int8_bytes": self.int8_bytes, "overhead_bytes": self.overhead_bytes,
                "stored_bytes": self.stored_bytes, "dcase_limit_bytes": DCASE_MAX_PARAM_BYTES,
                "fits_dcase": self.fits_dcase}

    def table(self) -> str:
        return "\n".join([
            f"parameters            {self.params:>9,}  (weights {self.weight_params:,}, biases "
            f"{self.bias_params:,}, other {self.other_params:,})",
            f"DCASE memory at int8  {self.int8_bytes:>9,} B  (limit {DCASE_MAX_PARAM_BYTES:,} B: "
            f"{'fits' if self.fits_dcase else 'EXCEEDS'}, {DCASE_MAX_PARAM_BYTES - self.int8_bytes:,} B to spare)",
            f"+ quantization params {self.overhead_bytes:>9,} B  ({self.weight_scales:,} float32 weight scales, "
            f"{self.act_ranges} activation ranges)",
            f"stored int8 model     {self.stored_bytes:>9,} B  (int8 weights, float32 biases/GRN/scales)",
        ])


def memory_report(model: nnx.Module, cfg: Any = None) -> MemoryReport:
    """Memory of `model` in int8 form.

    Args:
      model: a float deploy model, or its QAT or int8 form (`asc_jax.quantize`).
      cfg: for a float model, the `asc_jax.quantize.QuantConfig` it would be quantized with: its
        act_bits say whether conv inputs get ranges (by default, as with QuantConfig(), they do).
    """
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, (nnx.Conv, QuantizedConv))]
    float_inputs_ranged = cfg is None or cfg.act_bits is not None
    weights = biases = scales = ranges = 0
    for conv in convs:
        weights += int(math.prod(conv.kernel.shape))
        biases += 0 if conv.bias is None else int(math.prod(conv.bias.shape))
        scales += int(conv.kernel.shape[-1])
        ranges += int(conv.act_range is not None if isinstance(conv, QuantizedConv) else float_inputs_ranged)
    other = count_params(model) - sum(count_params(conv) for conv in convs)
    return MemoryReport(weights + biases + other, weights, biases, other, scales, ranges)
