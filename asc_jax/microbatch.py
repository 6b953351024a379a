"""Row-wise work over a batch in slices: how CPU inference keeps its activations in cache.

XLA:CPU runs each layer (or frontend stage) over the whole batch before the next, so a batch's
intermediates leave the CPU caches at a few clips; a sequential loop over small row slices keeps
each slice's intermediates cached. Only for row-wise functions (no batch statistics); an
accelerator wants the whole batch in one pass, so the slice size is chosen per backend by the
code that builds a function to run (`default_microbatch`), never by a model, a counter or an
export, which trace the plain program (DESIGN rule 16).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

# Rows per slice on CPU. Measured on the 2-core VM (best of 5, one process, batch 64): deploy
# Rep-Mobile on log-mels 152 -> 79 ms, with the frontend 213 -> 149 ms, the training form in
# eval mode 218 -> 128 ms (Rep-Mobile's first stage holds 64 x 16 x 96 floats, 384 KiB, per clip
# and tensor); slices of 4 and 16 rows were slower than 8; at batch 16 it is even (21.6 vs
# 20.4 ms). The train step's frontend is not sliced: the log-mel alone at batch 128 went
# 205 -> 136 ms, but the CP-Mobile train step did not change (1841 vs 1870 ms, interleaved).
CPU_MICROBATCH = 8


def default_microbatch() -> int | None:
    """The slice size for functions built to run on this backend: CPU_MICROBATCH on CPU, None
    (the whole batch in one pass, which an accelerator needs for its parallelism) elsewhere."""
    return CPU_MICROBATCH if jax.default_backend() == "cpu" else None


def microbatched(fn: Callable[..., Any], size: int | None) -> Callable[..., Any]:
    """`fn(x, *args)` over a batch as a sequential loop (`lax.map`) over slices of `size` rows.

    Every leaf of x and args has the batch as its leading axis, and fn is row-wise (no batch
    statistics: a model in inference mode), so the result is fn's on the whole batch up to float
    summation order, rows in order. The rows beyond the last whole slice (batch % size) take one
    more call of fn; a batch of fewer than 2 * size rows (or size None) runs in one call.

    Slice j holds rows j, j + m, j + 2m, ... (m slices): a batch sharded over a mesh in
    contiguous blocks then keeps every slice spread over the devices, and the loop runs on
    each device's own rows; contiguous slices would put the loop on the sharded axis, and XLA
    would gather the whole batch onto every device first.
    """
    if size is None:
        return fn

    def run(x: jax.Array, *args: Any) -> Any:
        rows = x.shape[0]
        m = rows // size
        if m < 2:
            return fn(x, *args)
        head = m * size
        sliced = jax.tree.map(lambda a: a[:head].reshape(size, m, *a.shape[1:]).swapaxes(0, 1), (x, args))
        out = jax.lax.map(lambda xa: fn(xa[0], *xa[1]), sliced)
        out = jax.tree.map(lambda a: a.swapaxes(0, 1).reshape(head, *a.shape[2:]), out)
        if head == rows:
            return out
        rest = jax.tree.map(lambda a: a[head:], (x, args))
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, fn(rest[0], *rest[1]))

    return run
