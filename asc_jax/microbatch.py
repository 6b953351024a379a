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
    """`fn(x, *args)` over a batch as a sequential loop (`lax.map`) over equal row slices.

    Every leaf of x and args has the batch as its leading axis, and fn is row-wise (no batch
    statistics: a model in inference mode), so the result is fn's on the whole batch up to float
    summation order, rows in order. The slices hold the largest divisor of the batch up to
    `size` rows, so one compiled body serves every slice; a batch of at most `size` rows (or
    size None) runs in one call.
    """
    if size is None:
        return fn

    def run(x: jax.Array, *args: Any) -> Any:
        rows = x.shape[0]
        n = next(d for d in range(min(size, rows), 0, -1) if rows % d == 0)
        if n == rows:
            return fn(x, *args)
        sliced = jax.tree.map(lambda a: a.reshape(rows // n, n, *a.shape[1:]), (x, args))
        out = jax.lax.map(lambda xa: fn(xa[0], *xa[1]), sliced)
        return jax.tree.map(lambda a: a.reshape(rows, *a.shape[2:]), out)

    return run
