"""layers.BatchNorm is nnx.BatchNorm with a cheaper-to-trace training-mode update and a
hand-written backward pass (`layers.batch_norm_train`): the same outputs and running statistics
bit for bit, gradients equal to autodiff's to float32 round-off, also through the statistics and
over a named device axis, and no tracer is asked for its sharding (flax's `[...] =` does, and the
AttributeError's message walks the whole trace)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx.nn import normalization as flax_norm

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
    for a, b in zip(jax.tree.leaves(ours[:2]), jax.tree.leaves(theirs[:2])):  # outputs, statistics
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    # Gradients: the closed form sums in another order than autodiff's chain of steps; in
    # bfloat16 (x is cast to it) both round the gradient w.r.t. x to bfloat16: one ulp (2^-7).
    for a, b in zip(jax.tree.leaves(ours[2]), jax.tree.leaves(theirs[2])):
        _assert_close(a, b, rtol=1e-5 if dtype is None else 2 ** -7)
    if train:  # the running statistics moved (a real update was compared)
        _, flax_bn = _pair(dtype)
        assert not np.allclose(ours[1]["mean"][...], flax_bn.mean[...])


def _assert_close(actual, desired, rtol=1e-5):
    actual, desired = np.asarray(actual, np.float32), np.asarray(desired, np.float32)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max())


def _reference(x, scale, bias, axes, axis_name=None):
    """flax's training-mode statistics and normalisation, differentiated by autodiff."""
    mean, var = flax_norm._compute_stats(x, axes, None, axis_name=axis_name)
    feature_axes = tuple(i for i in range(x.ndim) if i not in axes)
    y = flax_norm._normalize(x, mean, var, scale.reshape(-1), bias.reshape(-1), axes, feature_axes,
                             None, layers.BN_EPS)
    return y, mean, var


def _ours(x, scale, bias, axes, axis_name=None):
    y, mean, var = layers.batch_norm_train(x, scale, bias, axes, layers.BN_EPS, axis_name, x.dtype)
    return y, mean.reshape(-1), var.reshape(-1)


def _weighted(outputs, seed=3):
    """A loss that uses the output and both statistics (BatchNorm itself only stores the latter)."""
    rng = np.random.default_rng(seed)
    return sum(jnp.sum(o * jnp.asarray(rng.normal(size=o.shape[-o.ndim:]), o.dtype)) for o in outputs)


def test_backward_pass_equals_autodiff_also_through_the_statistics():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(0.7, 1.5, (8, 5, 3, 6)), jnp.float32)
    scale, bias = (jnp.asarray(rng.normal(1, 0.5, (1, 1, 1, 6)), jnp.float32) for _ in range(2))
    grads = [jax.jit(jax.grad(lambda *a, f=f: _weighted(f(*a, (0, 1, 2))), argnums=(0, 1, 2)))(x, scale, bias)
             for f in (_ours, _reference)]
    for a, b in zip(*grads):
        _assert_close(a, b)
    # A channel whose batch variance is 0 (var clipped at 0, no gradient through that clip).
    x0 = x.at[..., 2].set(1.25)
    grads = [jax.jit(jax.grad(lambda *a, f=f: _weighted(f(*a, (0, 1, 2))), argnums=(0, 1, 2)))(x0, scale, bias)
             for f in (_ours, _reference)]
    for a, b in zip(*grads):
        assert np.all(np.isfinite(a))
        _assert_close(a, b, rtol=1e-4)


def test_training_mode_never_asks_a_tracer_for_its_sharding(monkeypatch):
    def refuse(self):
        raise AssertionError("a tracer's sharding was read while tracing")

    ours, flax_bn = _pair()
    monkeypatch.setattr(jax.core.Tracer, "sharding", property(refuse))
    x = jnp.ones((4, 5, 3, 6))
    jax.make_jaxpr(lambda x: _apply(ours, x, train=True)[0])(x)
    with pytest.raises(AssertionError, match="sharding was read"):  # the check sees flax's path
        jax.make_jaxpr(lambda x: _apply(flax_bn, x, train=True)[0])(x)
