"""layers.BatchNorm is nnx.BatchNorm with a cheaper-to-trace training-mode update: the same
outputs, running statistics and gradients, bit for bit, and no tracer is asked for its sharding
(flax's `[...] =` does, and the AttributeError's message walks the whole trace)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asc_jax.models import layers


def _pair(dtype=None):
    kwargs = dict(momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPS, dtype=dtype)
    ours, flax_bn = layers.BatchNorm(6, rngs=nnx.Rngs(0), **kwargs), nnx.BatchNorm(6, rngs=nnx.Rngs(0), **kwargs)
    rng = np.random.default_rng(1)
    for bn in (ours, flax_bn):  # the same non-trivial parameters and statistics in both
        bn.scale[...] = jnp.asarray(rng.normal(1, 0.3, 6), jnp.float32) if bn is ours else ours.scale[...]
        bn.bias[...] = jnp.asarray(rng.normal(0, 0.3, 6), jnp.float32) if bn is ours else ours.bias[...]
        bn.mean[...] = jnp.asarray(rng.normal(0, 1, 6), jnp.float32) if bn is ours else ours.mean[...]
        bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, 6), jnp.float32) if bn is ours else ours.var[...]
    return ours, flax_bn


def _apply(bn, x, train):
    """(output, state after the call, gradient of a weighted sum w.r.t. x and the parameters)."""
    graphdef, params, rest = nnx.split(bn, nnx.Param, ...)

    def loss(params, x):
        model = nnx.merge(graphdef, params, rest, copy=True)
        y = model(x, use_running_average=not train)
        weights = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size
        return jnp.sum(y.astype(jnp.float32) * weights), (y, nnx.state(model, nnx.Not(nnx.Param)))

    (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return y, stats, grads


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_same_results_as_flax_batchnorm(dtype, train):
    x = jnp.asarray(np.random.default_rng(2).normal(0.5, 2.0, (4, 5, 3, 6)), jnp.float32)
    ours, theirs = (_apply(bn, x, train) for bn in _pair(dtype))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    if train:  # the running statistics moved (a real update was compared)
        _, flax_bn = _pair(dtype)
        assert not np.allclose(ours[1]["mean"][...], flax_bn.mean[...])


def test_training_mode_never_asks_a_tracer_for_its_sharding(monkeypatch):
    assert layers.FLAX_NORM_INTERNALS  # the pinned flax: the fast path is the one tested
    def refuse(self):
        raise AssertionError("a tracer's sharding was read while tracing")

    ours, flax_bn = _pair()
    monkeypatch.setattr(jax.core.Tracer, "sharding", property(refuse))
    x = jnp.ones((4, 5, 3, 6))
    jax.make_jaxpr(lambda x: _apply(ours, x, train=True)[0])(x)
    with pytest.raises(AssertionError, match="sharding was read"):  # the check sees flax's path
        jax.make_jaxpr(lambda x: _apply(flax_bn, x, train=True)[0])(x)
