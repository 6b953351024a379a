"""conv_lowering: an explicit model option, never the backend (DESIGN.md rule 16).

Depthwise and 1x1 convs can be computed as shifted slices / a matmul ("taps") or as XLA
convolutions ("xla"). Both must give the same function, parameters and complexity, and which one
a model uses must follow its options alone, whatever `jax.default_backend()` says while tracing.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asc_jax import complexity
from asc_jax.checkpoint import load_model, restore_weights, save_model
from asc_jax.models import MODELS, build_model, layers, with_default_lowering
from asc_jax.models.registry import CONV_LOWERING_MODELS
from asc_jax.models.rep_mobile import BRANCH_KERNELS

SHAPE = (1, 256, 63)
# Pinned in test_models_rep_mobile.py / test_models_zoo.py: (params, MACs) on 256x63.
PINS = {("rep_mobile", False): (137_560, 30_403_444), ("rep_mobile", True): (124_862, 29_561_088),
        ("cp_mobile", False): (126_952, 28_893_268)}
# Float32 logits of the two lowerings differ only by summation order: measured max |diff|
# 1e-6 (rep_mobile training form, logits up to 14), 2.4e-7 (deploy), 1.2e-7 (cp_mobile).
RTOL, ATOL = 1e-4, 1e-5


def _pretend_backend(monkeypatch, backend: str) -> None:
    monkeypatch.setattr(jax, "default_backend", lambda: backend)


@nnx.jit
def _logits(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x, train=False)[0]


def _lowered_modules(model: nnx.Module) -> dict[str, str]:
    return {"/".join(map(str, path)): m.lowering for path, m in nnx.iter_modules(model)
            if isinstance(m, (layers.DepthwiseConv, layers.PointwiseConv, layers.DenseConv))}


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("deploy", [False, True])
def test_complexity_does_not_depend_on_the_backend(monkeypatch, backend, deploy):
    """Off the CPU each DepthwiseConv used to be counted twice (33,844,084 / 31,711,488 MACs,
    the deploy form over the 30 M limit)."""
    _pretend_backend(monkeypatch, backend)
    rep = complexity.report(build_model("rep_mobile", deploy=deploy, rngs=nnx.Rngs(0)), SHAPE)
    assert (rep.params, rep.macs) == PINS["rep_mobile", deploy]
    assert rep.within_dcase_limits() == deploy  # the training form has BN parameters on top


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_the_model_default_is_fixed_and_the_run_default_follows_the_backend(monkeypatch, backend):
    _pretend_backend(monkeypatch, backend)
    model = nnx.eval_shape(lambda: build_model("rep_mobile", rngs=nnx.Rngs(0)))
    assert model.config.conv_lowering == "taps"
    assert set(_lowered_modules(model).values()) == {"taps"}
    expected = {"cpu": "taps", "gpu": "xla"}[backend]
    assert layers.default_lowering() == expected
    assert with_default_lowering("rep_mobile", {"use_grn": False}) == {"use_grn": False, "conv_lowering": expected}
    # An explicit choice wins; models without the option get none.
    assert with_default_lowering("cp_mobile", {"conv_lowering": "taps"}) == {"conv_lowering": "taps"}
    assert with_default_lowering("passt", {"n_classes": 10}) == {"n_classes": 10}


def test_exactly_the_cnns_take_the_option_and_pass_it_to_every_lowered_conv():
    for name in MODELS.names():
        kwargs = {"conv_lowering": "xla"} if name in CONV_LOWERING_MODELS else {}
        model = nnx.eval_shape(lambda: build_model(name, rngs=nnx.Rngs(0), **kwargs))
        assert hasattr(model.config, "conv_lowering") == bool(kwargs), name
        assert set(_lowered_modules(model).values()) <= {"xla"}, name
    # Rep-Mobile's deploy form builds its fused depthwise convs on a path of its own.
    deploy = nnx.eval_shape(lambda: build_model("rep_mobile", deploy=True, rngs=nnx.Rngs(0),
                                                conv_lowering="xla"))
    assert set(_lowered_modules(deploy).values()) == {"xla"}
    with pytest.raises(ValueError, match="conv_lowering"):
        build_model("resnet34", rngs=nnx.Rngs(0), conv_lowering="cudnn")


def _pair(name: str, deploy: bool, randomize, **options) -> tuple[nnx.Module, nnx.Module]:
    """The same weights under both lowerings."""
    taps = build_model(name, deploy=deploy, rngs=nnx.Rngs(0), conv_lowering="taps", **options)
    randomize(taps)
    nnx.update(taps, jax.tree.map(jnp.asarray, nnx.state(taps)))  # NumPy leaves cannot take BN updates
    xla = nnx.eval_shape(lambda: build_model(name, deploy=deploy, rngs=nnx.Rngs(0), conv_lowering="xla",
                                             **options))
    return taps, nnx.merge(nnx.graphdef(xla), nnx.state(taps))


@pytest.mark.parametrize("name,deploy", list(PINS))
def test_both_lowerings_compute_the_same_model(name, deploy, randomize):
    taps, xla = _pair(name, deploy, randomize)
    for model in (taps, xla):
        assert (complexity.count_params(model), complexity.count_macs(model, SHAPE)) == PINS[name, deploy]
    x = np.random.default_rng(0).normal(size=(2, 256, 63)).astype(np.float32)
    np.testing.assert_allclose(_logits(xla, x), _logits(taps, x), rtol=RTOL, atol=ATOL)


def test_both_lowerings_give_the_same_gradients(randomize):
    """What "taps" exists for (fast CPU gradients) must not change what is learnt. A small
    Rep-Mobile, whose four training branches run as one op under "taps"
    (`layers.depthwise_branch_taps`): compiling these gradients is slow on CPU. Tolerance:
    1e-4 of the largest gradient entry of a leaf (float summation order)."""
    taps, xla = _pair("rep_mobile", False, randomize, base_channels=16, n_blocks=(1, 1, 1),
                      strides={"b2": (2, 2), "b3": (2, 1)})
    x = np.random.default_rng(1).normal(size=(2, 64, 32)).astype(np.float32)

    def grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss = lambda p, rest: jnp.mean(nnx.merge(graphdef, p, rest, copy=True)(x, train=True)[0] ** 2)
        return jax.jit(jax.grad(loss))(params, rest)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max())),
                 grads(xla), grads(taps))


def test_saved_options_choose_the_lowering_and_old_model_json_loads(tmp_path, randomize):
    taps, _ = _pair("cp_mobile", True, randomize)
    x = np.random.default_rng(2).normal(size=(1, 256, 63)).astype(np.float32)
    # A model.json from before the option (no conv_lowering) loads with the fixed default.
    save_model(tmp_path / "old", taps, name="cp_mobile", options={}, deploy=True)
    old, _ = load_model(tmp_path / "old")
    assert set(_lowered_modules(old).values()) == {"taps"}
    # The same weights restore into the other lowering (identical trees) and compute the same.
    xla = build_model("cp_mobile", deploy=True, rngs=nnx.Rngs(1), conv_lowering="xla")
    restore_weights(tmp_path / "old", xla)
    np.testing.assert_allclose(_logits(xla, x), _logits(old, x), rtol=RTOL, atol=ATOL)
    save_model(tmp_path / "new", xla, name="cp_mobile", options={"conv_lowering": "xla"}, deploy=True)
    assert set(_lowered_modules(load_model(tmp_path / "new")[0]).values()) == {"xla"}


@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1)])
def test_branch_taps_equal_separate_depthwise_convs(strides):
    """`depthwise_branch_taps` (Rep-Mobile's four training branches in one op) against XLA's
    grouped convolution per branch: outputs and the gradients w.r.t. the input and every kernel,
    to 1e-5 of their scale (float summation order)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 9, 7, 5)), jnp.float32)
    kernels = tuple(jnp.asarray(rng.normal(size=(*hw, 1, 5)), jnp.float32) for hw in BRANCH_KERNELS.values())
    weights = [jnp.asarray(rng.normal(size=(4, (9 - 1) // strides[0] + 1, (7 - 1) // strides[1] + 1, 5)), jnp.float32)
               for _ in kernels]

    def reference(x, kernels):
        return [jax.lax.conv_general_dilated(x, k, strides, layers.same_padding(k.shape[:2]),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=5)
                for k in kernels]

    def loss(convs):
        return lambda x, kernels: sum(jnp.sum(z * w) for z, w in zip(convs(x, kernels), weights))

    got, want = layers.depthwise_branch_taps(x, kernels, strides), reference(x, kernels)
    grads = [jax.grad(loss(f), argnums=(0, 1))(x, kernels)
             for f in (lambda x, k: layers.depthwise_branch_taps(x, k, strides), reference)]
    for a, b in zip(jax.tree.leaves((got, grads[0])), jax.tree.leaves((want, grads[1]))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))
