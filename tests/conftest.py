"""Shared test fixtures."""
import os
import tempfile

import jax
import numpy as np
import pytest
from flax import nnx

# A persistent compilation cache shared by the session: end-to-end tests build the same jitted
# train/eval steps several times (e.g. an interrupted and a resumed run), and on 2 CPU cores
# XLA compilation dominates their run time.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("ASC_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "asc_jax_xla_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def randomize_batch_stats_and_affine(model: nnx.Module, seed: int = 0, spread: float = 1.0) -> None:
    """Gives every BN non-trivial statistics/affine and GRN non-zero gamma/beta, in place.

    Freshly initialised BNs are the identity (mean 0, var 1, scale 1, bias 0), which would let a
    wrong BN fold pass unnoticed; random values make every folding term matter.
    """
    rng = np.random.default_rng(seed)

    def draw(path, x):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        name = str(keys[-1])
        if name == "mean":
            return rng.normal(0, 0.5 * spread, x.shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.3, 2.0, x.shape).astype(np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        if name in ("bias", "gamma", "beta"):
            return rng.normal(0, 0.2 * spread, x.shape).astype(np.float32)
        return x

    nnx.update(model, jax.tree_util.tree_map_with_path(draw, nnx.state(model)))


@pytest.fixture
def randomize():
    return randomize_batch_stats_and_affine
