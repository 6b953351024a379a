"""Rep-Mobile / CP-Mobile / DCASE2024 baseline: structure, pinned complexity, fusion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asc_jax import complexity
from asc_jax.models import build_model
from asc_jax.models.rep_mobile import RepMobile, RepMobileConfig
from asc_jax.reparam import bn_epsilons, fuse, fuse_tree
from asc_jax.surgery import flatten, module_tree


def _count_bn_channels(model):
    return sum(m.num_features for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm))


@pytest.mark.parametrize("name,shape,params,macs", [
    # The numbers of the paper / DCASE2024 (torchinfo convention), pinned.
    ("cp_mobile", (1, 256, 63), 126_952, 28_893_268),
    ("dcase2024_baseline", (1, 256, 65), 61_148, 29_419_156),
    # Rep-Mobile in training form: + 1x1, 3x1, 1x3 depthwise branches with their BNs.
    ("rep_mobile", (1, 256, 63), 137_560, 30_403_444),
])
def test_pinned_complexity(name, shape, params, macs):
    model = build_model(name, rngs=nnx.Rngs(0))
    rep = complexity.report(model, shape)
    assert (rep.params, rep.macs) == (params, macs)


def test_forward_shapes_and_aux():
    model = build_model("rep_mobile", rngs=nnx.Rngs(0))
    logits, aux = model(jnp.zeros((2, 256, 63)))
    assert logits.shape == (2, 10)
    assert aux["stem"].shape == (2, 64, 16, 32)
    assert [s.shape for s in aux["stages"]] == [(2, 32, 8, 32), (2, 16, 8, 72), (2, 16, 8, 168)]
    assert aux["pre_logits"].shape == (2, 168)


@pytest.mark.parametrize("branches,extra", [
    (("3x3", "1x1", "3x1", "1x3"), 0),
    (("1x1", "3x1", "1x3"), None),  # Table II: w/o 3x3
    (("3x3", "3x1", "1x3"), None),  # w/o 1x1
    (("3x3", "1x1"), None),  # w/o 3x1 + 1x3
])
def test_branch_ablations_are_configs(branches, extra):
    model = build_model("rep_mobile", branches=branches, rngs=nnx.Rngs(0))
    block = model.stages[0][0]
    assert tuple(block.depthwise.branches.keys()) == branches
    assert model(jnp.zeros((1, 256, 63)))[0].shape == (1, 10)


def test_unknown_branch_and_stride_are_rejected():
    with pytest.raises(ValueError, match="unknown depthwise branches"):
        build_model("rep_mobile", branches=("5x5",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown blocks"):
        build_model("rep_mobile", strides={"b9": (2, 2)}, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("branches", [("3x3", "1x1", "3x1", "1x3"), ("1x1", "3x1", "1x3"), ("3x3",)])
def test_fused_deploy_model_equals_training_model(branches, randomize):
    cfg = RepMobileConfig(branches=branches)
    model = RepMobile(cfg, rngs=nnx.Rngs(0))
    randomize(model, seed=1, spread=3.0)
    deploy = fuse(model, lambda: RepMobile(cfg, deploy=True, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(0), (4, 256, 63)) * 3.0
    ref, _ = model(x, train=False)
    out, _ = deploy(x)
    assert float(jnp.abs(ref).max()) > 0.1, "test needs non-trivial logits"
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4, rtol=0)


def test_deploy_tree_has_no_bn_or_branches_and_counts_match(randomize):
    model = build_model("rep_mobile", rngs=nnx.Rngs(0))
    randomize(model)
    deploy = fuse(model, lambda: build_model("rep_mobile", deploy=True, rngs=nnx.Rngs(0)))
    paths = ["/".join(map(str, p)) for p in flatten(module_tree(deploy))]
    assert not [p for p in paths if "bn" in p.split("/") or "branches" in p.split("/")]
    assert not nnx.state(deploy, nnx.BatchStat)
    plain = build_model("cp_mobile", rngs=nnx.Rngs(0))
    # Each BN (2C affine) disappears into the conv it follows, which gains a C-wide bias.
    assert complexity.count_params(deploy) == complexity.count_params(plain) - _count_bn_channels(plain)
    assert complexity.count_params(deploy) == 124_862


def test_fuse_reads_eps_from_modules(randomize):
    cfg = RepMobileConfig()
    model = RepMobile(cfg, rngs=nnx.Rngs(0))
    randomize(model)
    eps = bn_epsilons(model)
    assert set(eps.values()) == {1e-5}
    # A different eps must change the fused weights: the value is read, not hard-coded.
    tree = module_tree(model)
    a = flatten(fuse_tree(tree, eps))
    b = flatten(fuse_tree(tree, {k: 1e-1 for k in eps}))
    assert any(not np.allclose(a[k], b[k]) for k in a)


def test_fuse_rejects_a_mismatched_deploy_module(randomize):
    model = build_model("rep_mobile", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="with the wrong shape"):
        fuse(model, lambda: build_model("rep_mobile", base_channels=40, deploy=True, rngs=nnx.Rngs(0)))


def test_train_mode_updates_batch_stats():
    model = build_model("rep_mobile", rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    model(jax.random.normal(jax.random.key(0), (4, 256, 63)), train=True)
    after = nnx.state(model, nnx.BatchStat)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after))
    assert all(changed)


def test_grn_matches_numpy_reference():
    from asc_jax.models.layers import GRN
    grn = GRN()
    grn.gamma.value = jnp.array([0.7])
    grn.beta.value = jnp.array([-0.3])
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
    gx = np.sqrt((x**2).sum(axis=(1, 2), keepdims=True))
    ref = 0.7 * x * (gx / (gx.mean(-1, keepdims=True) + 1e-6)) - 0.3 + x
    np.testing.assert_allclose(np.asarray(grn(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)
