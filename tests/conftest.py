"""Shared test fixtures."""
import os
import tempfile

from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from asc_jax.data import tau

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


def write_tau_dataset(root: Path, audio: np.ndarray, sr: int) -> None:
    """Clips ``audio`` (N, n_samples) as a TAU-layout dataset under ``root``: float32 wavs (they
    read back bit for bit), meta.csv, and split100.csv holding all of them. Clip i has class
    ``tau.CLASSES[i]``, so N <= 10."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for i, wave in enumerate(audio):
        name = f"audio/{tau.CLASSES[i]}-lyon-{i}-{i}-0-a.wav"
        sf.write(root / name, wave, sr, subtype="FLOAT")
        rows.append(f"{name}\t{tau.CLASSES[i]}\tlyon-{i}\ta")
    (root / "meta.csv").write_text(
        "filename\tscene_label\tidentifier\tsource_label\n" + "\n".join(rows) + "\n")
    (root / "split100.csv").write_text("filename\n" + "\n".join(r.split("\t")[0] for r in rows) + "\n")
