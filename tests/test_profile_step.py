"""benchmarks.profile_step's attribution: the ops of a traced jitted gradient step are matched to
their HLO instructions, split into forward / backward by the JAX op path and attributed to the
Python function that emitted them, and every traced execution is counted."""
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import profile_step


def _loss(w, x):
    hidden = jnp.sin(x @ w)  # a dot and an elementwise op of this function, forward and backward
    return jnp.sum(hidden ** 2)


def test_parse_hlo_attributes_directions_and_sources():
    w, x = jnp.ones((64, 64)), jnp.ones((128, 64))
    ops = profile_step.parse_hlo(jax.jit(jax.grad(_loss)).lower(w, x).compile().as_text())
    ours = {name: op for name, op in ops.items() if op.source == "test_profile_step.py:_loss"}
    assert {op.direction for op in ours.values()} == {"forward", "backward"}
    assert any(op.kind == "dot" for op in ours.values())  # x @ w, and x^T dy for the gradient
    parameters = [op for op in ops.values() if op.kind == "parameter"]
    assert parameters and all(op.source == "(no source)" for op in parameters)  # no Python frame


def test_traced_op_times_cover_every_execution(tmp_path):
    step = jax.jit(jax.grad(_loss)).lower(jnp.ones((64, 64)), jnp.ones((128, 64))).compile()
    ops = profile_step.parse_hlo(step.as_text())
    w, x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32), jnp.ones((128, 64))
    step(w, x).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(3):
            step(w, x).block_until_ready()
    module = step.as_text().split(",", 1)[0].removeprefix("HloModule ")
    times, n_runs = profile_step.op_times(str(tmp_path), module)
    assert n_runs == 3
    assert times and set(times) <= set(ops)  # every timed op is an instruction of the module
    by_source, by_kind, top_ops, total = profile_step.summarize(times, ops, 3, top=50)
    assert total > 0
    assert abs(sum(r["ms_per_step"] for r in by_kind) - total) < 1e-6 * total  # nothing lost
    assert any(r["source"] == "test_profile_step.py:_loss" and r["direction"] == "backward" for r in by_source)
