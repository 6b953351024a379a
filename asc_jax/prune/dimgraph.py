"""The dimension graph behind channel groups: every axis of every value in a jaxpr is a node of a
union-find, and each primitive unites the axes that must stay the same size and aligned:

  * elementwise ops (add, mul, max, ...) unite axes of equal size (this is how residual sums,
    BN affine vectors and biases join a group), broadcasts/reshapes/transposes map axes through;
  * a dense conv unites the input's feature axis with the kernel's in-axis and the kernel's
    out-axis with the output's feature axis (a new channel space starts there, so the kernel's
    out-axis is recorded as a *producer*); a depthwise conv unites input, kernel-out and output
    features; dot_general does the same for Linear layers (a producer only where the weight is a
    state leaf);
  * reductions over an axis (means over channels, as in GRN) and windows that span an axis are
    recorded as *cross-channel* notes on the axis;
  * ops the rules do not model (concatenation, channel slicing, merging reshapes, grouped convs,
    unknown primitives) *freeze* the axes they touch, with the reason.

`walk` interprets a jaxpr on these nodes, descending into call-like primitives (jit, custom
derivatives, remat); `asc_jax.prune.groups` turns the result into channel groups. A new
structural op needs one rule in `_RULES`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax.extend.core as jcore
from jax.extend import source_info_util


class DimGraph:
    """Union-find over the axes of traced values, with per-node annotations."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, str] = {}
        self.notes: dict[int, list[str]] = {}
        self.producers: set[int] = set()  # weight axes that a conv/dot turns into output channels
        self.first_use: dict[int, int] = {}  # node -> index of the first equation reading it
        self.n_eqns = 0

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def fresh(self, shape: Sequence[int]) -> list[int]:
        return [self.new(s) for s in shape]

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise AssertionError(f"tracer tried to unite axes of sizes {self.size[ra]} and {self.size[rb]}")
        self.parent[rb] = ra

    def freeze(self, nodes: Sequence[int], reason: str) -> None:
        for n in nodes:
            self.frozen.setdefault(n, reason)

    def note(self, node: int, text: str) -> None:
        self.notes.setdefault(node, []).append(text)


def _unite_equal(g: DimGraph, a: Sequence[int], b: Sequence[int]) -> None:
    """Unites axis i of `a` with axis i of `b` where both have the same size > 1.

    Size-1 axes are never united: they are broadcast axes (or the batch axis of a batch of one)
    and carry no channels, and uniting them would glue unrelated groups together.
    """
    for x, y in zip(a, b):
        if g.size[x] == g.size[y] > 1:
            g.union(x, y)


def _where(eqn) -> str:
    return f"{eqn.primitive.name} at {source_info_util.summarize(eqn.source_info)}"


# --- rules: (graph, eqn, input axis nodes, output axis nodes) -> None --------------------------

def _elementwise(g, eqn, ins, outs):
    for nodes in ins:
        if len(nodes) == len(outs[0]):  # rank-0 literals broadcast implicitly
            _unite_equal(g, nodes, outs[0])


def _broadcast_in_dim(g, eqn, ins, outs):
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        _unite_equal(g, [ins[0][i]], [outs[0][d]])


def _reshape(g, eqn, ins, outs):
    # Match the non-1 axes of both shapes in blocks of equal product: a one-to-one block keeps its
    # axis, a block that merges or splits axes (a flatten before a Linear) cannot be sliced
    # channel-wise by this code, so its axes are frozen.
    a = [n for n in ins[0] if g.size[n] > 1]
    b = [n for n in outs[0] if g.size[n] > 1]
    i = j = 0
    while i < len(a) and j < len(b):
        block_a, block_b = [a[i]], [b[j]]
        pa, pb = g.size[a[i]], g.size[b[j]]
        while pa != pb:
            if pa < pb:
                i += 1
                block_a.append(a[i])
                pa *= g.size[a[i]]
            else:
                j += 1
                block_b.append(b[j])
                pb *= g.size[b[j]]
        if len(block_a) == len(block_b) == 1:
            g.union(block_a[0], block_b[0])
        else:
            g.freeze(block_a + block_b, f"{_where(eqn)} merges or splits axes")
        i, j = i + 1, j + 1


def _transpose(g, eqn, ins, outs):
    for out_axis, in_axis in enumerate(eqn.params["permutation"]):
        g.union(ins[0][in_axis], outs[0][out_axis])


def _squeeze(g, eqn, ins, outs):
    dropped = {d % len(ins[0]) for d in eqn.params["dimensions"]}
    _unite_equal(g, [n for k, n in enumerate(ins[0]) if k not in dropped], outs[0])


def _reduce(g, eqn, ins, outs):
    axes = set(eqn.params["axes"])
    _unite_equal(g, [n for k, n in enumerate(ins[0]) if k not in axes], outs[0])
    for k in axes:
        if g.size[ins[0][k]] > 1:
            g.note(ins[0][k], f"{_where(eqn)} reduces over this axis")


def _scan_along_axis(g, eqn, ins, outs):
    axis = eqn.params.get("axis", eqn.params.get("dimension"))
    for nodes in ins:
        for k, (x, y) in enumerate(zip(nodes, outs[0])):
            if k == axis:
                g.note(x, f"{_where(eqn)} mixes values along this axis")
            elif g.size[x] == g.size[y] > 1:
                g.union(x, y)


def _reduce_window(g, eqn, ins, outs):
    p = eqn.params
    for k, (x, y) in enumerate(zip(ins[0], outs[0])):
        plain = (p["window_dimensions"][k] == 1 and p["window_strides"][k] == 1
                 and tuple(p["padding"][k]) == (0, 0) and p["base_dilation"][k] == 1)
        if plain:
            _unite_equal(g, [x], [y])
        elif p["window_dimensions"][k] > 1:
            g.note(x, f"{_where(eqn)} pools over this axis")
        else:
            g.freeze([x, y], f"{_where(eqn)} subsamples this axis")


def _conv(g, eqn, ins, outs):
    dn = eqn.params["dimension_numbers"]
    lhs, rhs, out = ins[0], ins[1], outs[0]
    lhs_b, lhs_f = lhs[dn.lhs_spec[0]], lhs[dn.lhs_spec[1]]
    rhs_o, rhs_i = rhs[dn.rhs_spec[0]], rhs[dn.rhs_spec[1]]
    out_b, out_f = out[dn.out_spec[0]], out[dn.out_spec[1]]
    groups, batch_groups = eqn.params["feature_group_count"], eqn.params["batch_group_count"]
    _unite_equal(g, [lhs_b], [out_b])
    g.union(rhs_o, out_f)
    g.producers.add(rhs_o)
    if batch_groups != 1:
        g.freeze([lhs_f, rhs_o, out_f], f"{_where(eqn)} has batch_group_count > 1")
    elif groups == 1:
        _unite_equal(g, [lhs_f], [rhs_i])
    elif groups == g.size[lhs_f] == g.size[out_f]:
        g.union(lhs_f, out_f)  # depthwise: channel c in, channel c out
    else:
        # Grouped (or channel-multiplier) convs couple channels in blocks; slicing single
        # channels out of them would break the grouping.
        _unite_equal(g, [lhs_f], [out_f])
        g.freeze([lhs_f, rhs_o, out_f], f"{_where(eqn)} is a grouped conv")


def _dot_general(g, eqn, ins, outs, *, params: set[int]):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs, out = ins[0], ins[1], outs[0]
    for a, b in zip(lc, rc):
        _unite_equal(g, [lhs[a]], [rhs[b]])
    for k, (a, b) in enumerate(zip(lb, rb)):
        _unite_equal(g, [lhs[a], rhs[b]], [out[k], out[k]])
    free = [n for k, n in enumerate(lhs) if k not in lc and k not in lb]
    free += [n for k, n in enumerate(rhs) if k not in rc and k not in rb]
    _unite_equal(g, free, out[len(lb):])
    # Output features start a new channel space only where a weight (a state leaf) supplies them;
    # free axes of two activations (attention) are tokens, not channels.
    g.producers.update(n for n in free if n in params)


def _concatenate(g, eqn, ins, outs):
    d = eqn.params["dimension"]
    for nodes in ins:
        _unite_equal(g, [n for k, n in enumerate(nodes) if k != d], [n for k, n in enumerate(outs[0]) if k != d])
    g.freeze([nodes[d] for nodes in ins] + [outs[0][d]], f"{_where(eqn)} concatenates along this axis")


def _split(g, eqn, ins, outs):
    axis = eqn.params["axis"]
    for nodes in outs:
        _unite_equal(g, [n for k, n in enumerate(ins[0]) if k != axis], [n for k, n in enumerate(nodes) if k != axis])
    g.freeze([ins[0][axis]] + [nodes[axis] for nodes in outs], f"{_where(eqn)} splits along this axis")


def _along_axes(untouched: Callable) -> Callable:
    """Rule for ops that keep some axes intact (united) and rearrange the others (frozen)."""

    def rule(g, eqn, ins, outs):
        keep = untouched(eqn, [g.size[n] for n in ins[0]], [g.size[n] for n in outs[0]])
        for k, (x, y) in enumerate(zip(ins[0], outs[0])):
            if keep[k]:
                _unite_equal(g, [x], [y])
            else:
                g.freeze([x, y], f"{_where(eqn)} rearranges this axis")

    return rule


_ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type
copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real
reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor
""".split())

_RULES: dict[str, Callable] = {
    **{name: _elementwise for name in _ELEMENTWISE},
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    **{name: _reduce for name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod",
                                  "reduce_and", "reduce_or", "argmax", "argmin")},
    **{name: _scan_along_axis for name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp", "sort")},
    **{name: _reduce_window for name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min")},
    "conv_general_dilated": _conv,
    "concatenate": _concatenate,
    "split": _split,
    "pad": _along_axes(lambda eqn, i, o: [tuple(c) == (0, 0, 0) for c in eqn.params["padding_config"]]),
    "slice": _along_axes(lambda eqn, i, o: [a == b for a, b in zip(i, o)]),
    "rev": _along_axes(lambda eqn, i, o: [k not in eqn.params["dimensions"] for k in range(len(i))]),
}

# Primitives that only wrap a sub-jaxpr with the same inputs and outputs (jit, custom
# derivatives, remat): the tracer walks into them.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                    "custom_vjp_call_jaxpr", "remat", "checkpoint"})


def _inner_jaxpr(eqn):
    for sub in jcore.jaxprs_in_params(eqn.params):
        jaxpr = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
        if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
            return jaxpr
    return None


def walk(g: DimGraph, jaxpr, in_nodes: list[list[int]], params: set[int]) -> list[list[int]]:
    """Interprets `jaxpr` on axis nodes; each call site gets its own nodes (jit caches share
    inner jaxprs between call sites, so inner variables must not be global nodes).

    Args:
      g: the graph the nodes live in; the rules unite, freeze and annotate them there.
      in_nodes: the axis nodes of each of `jaxpr`'s input variables.
      params: the nodes of state-leaf axes (a dot_general output axis supplied by one of them
        produces channels).
    Returns:
      The axis nodes of each output variable.
    """
    env: dict = {}

    def read(v) -> list[int]:
        if isinstance(v, jcore.Literal):
            return g.fresh(v.aval.shape)
        return env[v]

    for v, nodes in zip(jaxpr.invars, in_nodes):
        env[v] = nodes
    for v in jaxpr.constvars:
        env[v] = g.fresh(v.aval.shape)
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        for nodes in ins:
            for n in nodes:
                g.first_use.setdefault(n, g.n_eqns)
        g.n_eqns += 1
        name = eqn.primitive.name
        inner = _inner_jaxpr(eqn) if name in _CALLS else None
        if inner is not None:
            outs = walk(g, inner, ins, params)
        else:
            outs = [g.fresh(getattr(v.aval, "shape", ())) for v in eqn.outvars]
            if name == "dot_general":
                _dot_general(g, eqn, ins, outs, params=params)
            elif name in _RULES:
                _RULES[name](g, eqn, ins, outs)
            else:
                g.freeze([n for nodes in ins + outs for n in nodes], f"unsupported primitive {_where(eqn)}")
        for v, nodes in zip(eqn.outvars, outs):
            env[v] = nodes
    return [read(v) for v in jaxpr.outvars]
