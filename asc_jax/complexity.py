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
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterator

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
    """Number of trainable parameters (nnx.Param leaves)."""
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _direct_params(module: nnx.Module) -> dict[str, int]:
    """{attribute name: size} of the nnx.Params held directly by `module` (not by children)."""
    return {name: int(math.prod(value.shape)) for name, value in vars(module).items()
            if isinstance(value, nnx.Param)}


@contextlib.contextmanager
def _recording_outputs(model: nnx.Module) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
    """Patches `__call__` of every module class that owns parameters to log (id, output shape).

    NNX has no method interceptor (linen's `intercept_methods`), so the classes are patched for
    the duration of one abstract trace and restored afterwards, also on error. A call is logged
    once per layer call, at the outermost level: a subclass may delegate to its patched base
    (`layers.DepthwiseConv` with conv_lowering "xla" calls `nnx.Conv.__call__`), and the layer
    must count the same whichever way it lowers.
    """
    calls: list[tuple[int, tuple[int, ...]]] = []
    running: set[int] = set()  # ids of the layers whose patched __call__ is on the stack
    classes = {type(m) for _, m in nnx.iter_modules(model) if _direct_params(m)}
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
    if isinstance(module, nnx.Conv):
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
