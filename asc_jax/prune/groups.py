"""Channel groups: which axes of which state leaves must be pruned together, found by tracing.

A channel can only be removed from a network if it is removed everywhere it lives at once: from
the conv that produces it (kernel out-columns), the BatchNorm that normalises it, every branch
that adds to it, every conv that reads it (kernel in-rows), and, through residual sums, from every
other layer writing into the same stream. Rather than listing these couplings per model, they are
derived from the model's jaxpr (DepGraph/Torch-Pruning style, on jaxprs instead of torch graphs):
every axis of every value in the traced forward pass is a node of a union-find, and each primitive
unites the axes that must stay the same size and aligned (the rules: `asc_jax.prune.dimgraph`).

A group is a channel space some weight *produces*: a conv/dot output axis in the trace, or the
out-axis of an nnx.Conv/nnx.Linear kernel (read from the modules, so that a layer that lowers its
conv without a conv, like layers.DepthwiseConv with conv_lowering "taps", still counts as a
producer: the groups are the same for every lowering). Reductions and windows across its channels
(GRN's mean over channels) are *cross-channel* notes: the group can still be sliced, but the
sliced model then differs from the wide one with those channels zeroed (the statistic is taken
over fewer channels), which is why pruning finetunes after every slice (see
`ChannelGroup.cross_channel`).

Axes that reach the model input or its logits, or pass through an op the tracer does not model
(concatenation, channel slicing, merging reshapes, grouped convs, unknown primitives), are
*frozen*: they keep their width. Supporting another model therefore needs nothing when it is
built from the primitives the dimension graph models; a new structural op needs one rule in
`asc_jax.prune.dimgraph`, and physically slicing it needs `asc_jax.prune.slicing.narrow_config` to
know where its config keeps its widths.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from asc_jax.prune.dimgraph import DimGraph, walk
from asc_jax.surgery import Path

# A (leaf path, axis) pair: one axis of one state leaf.
Member = tuple[Path, int]

DEFAULT_INPUT_SHAPE = (2, 256, 63)


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together.

    Attributes:
      name: path of the first layer (in execution order) producing these channels, e.g.
        "stages/0/0/expand/conv"; stable across widths and across training/deploy forms.
      size: number of channels.
      members: every (state leaf path, axis) carrying these channels, params and batch stats.
      producers: kernels whose output channels these are (conv out-axis, Linear out-axis);
        L1 importance is computed on them.
      bn_scales: BatchNorm scale leaves of these channels (for BN-scale importance).
      frozen: why the group must keep its width, or None if it is prunable.
      cross_channel: non-parametric ops mixing these channels (e.g. GRN's mean over channels).
        Slicing stays well defined, but is then not exactly the wide model with the pruned
        channels zeroed.
    """

    name: str
    size: int
    members: tuple[Member, ...]
    producers: tuple[Member, ...]
    bn_scales: tuple[Path, ...]
    frozen: str | None = None
    cross_channel: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        return self.frozen is None


def key_path(path) -> Path:
    """A jax key path of a state leaf (nnx.State or nested dict) -> its pure-dict path."""
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _bn_scale_paths(model: nnx.Module) -> set[Path]:
    return {tuple(path) + ("scale",) for path, m in nnx.iter_modules(model)
            if isinstance(m, nnx.BatchNorm) and getattr(m, "scale", None) is not None}


def _kernel_out_axes(model: nnx.Module) -> set[Member]:
    """Output-channel axes of Conv/Linear kernels (flax layout: (..., in, out)).

    Read from the modules because the trace alone may not show them: a layer may lower its
    conv differently (layers.DepthwiseConv uses shifted slices with conv_lowering "taps"), yet
    its kernel's last axis still produces the channels of its group and must count for L1
    importance.
    """
    return {(tuple(path) + ("kernel",), len(m.kernel.shape) - 1) for path, m in nnx.iter_modules(model)
            if isinstance(m, (nnx.Conv, nnx.ConvTranspose, nnx.Linear))}


def channel_groups(model: nnx.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
                   ) -> tuple[ChannelGroup, ...]:
    """Traces `model` (inference mode) and returns its channel groups in execution order.

    Args:
      model: any model of the zoo; may be abstract (`nnx.eval_shape`), nothing is computed.
      input_shape: shape of a log-mel batch (B, n_mels, n_frames) the model accepts.
    Returns:
      One ChannelGroup per independent channel space that some layer's weights produce.
    """
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x, train=False)[0]

    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    closed = jax.make_jaxpr(forward)(state, x)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    if len(closed.jaxpr.invars) != len(leaves) + 1:
        raise RuntimeError("could not align the traced inputs with the model's state leaves")

    g = DimGraph()
    origin: dict[int, Member] = {}
    in_nodes = []
    for (path, leaf), var in zip(leaves, closed.jaxpr.invars):
        nodes = g.fresh(var.aval.shape)
        for axis, n in enumerate(nodes):
            origin[n] = (key_path(path), axis)
        in_nodes.append(nodes)
    x_nodes = g.fresh(input_shape)
    g.freeze(x_nodes, "reaches the model input")
    outs = walk(g, closed.jaxpr, in_nodes + [x_nodes], params=set(origin))
    g.freeze([n for nodes in outs for n in nodes], "reaches the model output (logits)")

    by_root: dict[int, list[int]] = {}
    for n in range(len(g.parent)):
        by_root.setdefault(g.find(n), []).append(n)
    bn_scales, kernel_out = _bn_scale_paths(model), _kernel_out_axes(model)
    unused = g.n_eqns  # sorts weights the forward pass never reads last
    groups = []
    for nodes in by_root.values():
        producers = sorted((g.first_use.get(n, unused), origin[n]) for n in nodes
                           if n in origin and (n in g.producers or origin[n] in kernel_out))
        if not producers:
            continue  # no weight creates these axes: batch, spatial, or broadcast axes
        members = tuple(sorted({origin[n] for n in nodes if n in origin}))
        frozen = sorted({g.frozen[n] for n in nodes if n in g.frozen})
        notes = sorted({t for n in nodes for t in g.notes.get(n, ())})
        first_path = producers[0][1][0]
        groups.append((producers[0][0], ChannelGroup(
            name="/".join(str(k) for k in first_path[:-1]),
            size=g.size[nodes[0]],
            members=members,
            producers=tuple(m for _, m in producers),
            bn_scales=tuple(sorted(p for p, axis in members if p in bn_scales)),
            frozen="; ".join(frozen) if frozen else None,
            cross_channel=tuple(notes))))
    return tuple(group for _, group in sorted(groups, key=lambda t: t[0]))
