"""The jitted train step compiles once: later steps (new batch contents, same shapes) reuse it.

A silent recompile per step (e.g. from a weak-typed or differently placed state leaf coming back
from the first step) would make every step cost a compile; on CPU that is seconds per step.
"""
from __future__ import annotations

import logging

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from asc_jax.audio import augment
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import logmel
from asc_jax.models import build_model
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

BATCH = 8
N_SAMPLES = 3200


class _CompileLog(logging.Handler):
    """Collects JAX's "Compiling <fun> ..." log lines (emitted with jax_log_compiles)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.messages.append(message)

    def count(self, fun_name: str) -> int:
        return sum(m.startswith(f"Compiling {fun_name} ") or m.startswith(f"Compiling jit({fun_name})")
                   for m in self.messages)


@pytest.fixture
def compile_log():
    handler = _CompileLog()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    with jax.log_compiles(True):
        yield handler
    logger.removeHandler(handler)


def test_compile_log_sees_compiles(compile_log):
    """Positive control: the log capture counts one compile per new input shape."""
    def probe(x):
        return x * 2

    fn = jax.jit(probe)
    fn(np.ones(3, np.float32))
    fn(np.zeros(3, np.float32))
    fn(np.ones(4, np.float32))
    assert compile_log.count("probe") == 2 and fn._cache_size() == 2


def _batch(rng: np.random.Generator) -> dict:
    # The fields and dtypes the grain pipeline delivers (numpy, not device arrays).
    return {"audio": rng.normal(size=(BATCH, N_SAMPLES)).astype(np.float32),
            "label": rng.integers(0, 10, BATCH).astype(np.int32),
            "index": rng.permutation(BATCH).astype(np.int32),
            "roll": rng.integers(-100, 100, BATCH).astype(np.int32)}


def test_train_step_compiles_once(compile_log):
    mel = MelConfig(n_fft=512, win_length=400, hop_length=160, n_mels=32)
    aug = augment.AugmentConfig(roll=None, freq_mask=augment.FreqMaskConfig(mask_param=8, n_mels=32))
    model = build_model("rep_mobile", rngs=nnx.Rngs(0), base_channels=8, n_blocks=(1, 1),
                        strides=(("b2", (2, 2)),))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
    tx = optax.adam(schedule)
    # The state straight from create_train_state, as train_and_evaluate passes it: its arrays are
    # uncommitted, the ones the step returns are committed; that must not change the cache key.
    graphdef, state = create_train_state(model, tx)
    step = steps.make_train_step(graphdef, tx, logmel(mel), aug, steps.classification_loss, jax.random.key(0),
                                 schedule=schedule)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(3):
        batch = _batch(rng)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert step._cache_size() == 1
    assert compile_log.count("step") == 1
    assert int(state.step) == 3
    # Different contents really went through (the losses differ), with no recompilation.
    assert len(set(losses)) == 3
