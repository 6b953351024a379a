"""Structured pruning: traced channel groups, importance, masks, schedules, slicing.

Models are built abstractly (nnx.eval_shape) and filled with numpy draws through the strict
`load_into`: eager flax init compiles one kernel per parameter shape, which would dominate the
runtime of this file. Every forward pass that is compared runs jitted.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from asc_jax import complexity, prune
from asc_jax.audio.augment import AugmentConfig
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import logmel
from asc_jax.models import build_model
from asc_jax.models.bc_resnet import BCResNetConfig
from asc_jax.models.rep_mobile import RepMobile, RepMobileConfig
from asc_jax.reparam import fuse
from asc_jax.surgery import flatten, load_into, module_tree
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

X_SHAPE = (2, 64, 32)  # small log-mel batch: every stride of the family still applies
MEL = MelConfig(n_mels=X_SHAPE[1])  # the frontend of the training steps below
NO_AUG = AugmentConfig(roll=None, freq_mask=None, mixstyle=None)


def random_model(build, seed=0, grn=0.0):
    """`build()` with random kernels (Kaiming fan-out), BN statistics/affines and GRN gamma/beta
    ~ N(0, grn) (0: a fresh, identity GRN)."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = path[-1]
        if name == "kernel":
            return rng.normal(0, np.sqrt(2.0 / (np.prod(x.shape[:2]) * x.shape[-1])), x.shape)
        if name == "mean":
            return rng.normal(0, 0.5, x.shape)
        if name in ("var", "scale"):
            return rng.uniform(0.5, 1.5, x.shape)
        if name == "bias":
            return rng.normal(0, 0.3, x.shape)
        return rng.normal(0, grn, x.shape)  # GRN gamma / beta

    shapes = flatten(nnx.state(nnx.eval_shape(build)).to_pure_dict())
    tree = {}
    for path, x in shapes.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = draw(path, x).astype(np.float32)
    return load_into(build, tree)


def logits(model, x):
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, x))


@functools.partial(jax.jit, static_argnums=0)  # one compile per model structure
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x, train=False)[0]


def zeroed_copy(model, masks):
    """The reference slicing is compared with: a copy of `model` whose params are 0 where `masks`
    is False. A channel with zero BN scale and bias outputs exactly 0 whatever the statistics, so
    without ops that mix channels (GRN) this wide model computes what the sliced one does."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    zeroed = jax.tree.map(lambda p, m: jnp.asarray(np.where(np.asarray(m), np.asarray(p), 0.0), p.dtype),
                          params, masks)
    return nnx.merge(graphdef, zeroed, rest)


def rep_mobile_builder(**kw):
    return lambda cfg: RepMobile(cfg, **kw, rngs=nnx.Rngs(0))


X = np.asarray(jax.random.normal(jax.random.key(0), X_SHAPE)) * 2.0


@pytest.fixture(scope="module")
def cp96():
    return random_model(lambda: build_model("cp_mobile", base_channels=96, rngs=nnx.Rngs(0)), seed=3)


# --- channel groups --------------------------------------------------------------------------

def _block_expansion_members(prefix, branches):
    """The members an expansion group must have (written out by hand as the reference)."""
    def bn(path):
        return {(path + ("bn", k), 0) for k in ("scale", "bias", "mean", "var")}
    members = {(prefix + ("expand", "conv", "kernel"), 3), (prefix + ("project", "conv", "kernel"), 2)}
    members |= bn(prefix + ("expand",))
    for b in branches:
        members |= {(prefix + ("depthwise", "branches", b, "conv", "kernel"), 3)} | bn(prefix + ("depthwise", "branches", b))
    return members


def test_rep_mobile_groups_follow_the_architecture():
    model = nnx.eval_shape(lambda: build_model("rep_mobile", rngs=nnx.Rngs(0)))
    groups = prune.channel_groups(model)
    assert [(g.name, g.size) for g in groups] == [
        ("stem/0/conv", 8), ("stem/1/conv", 32),
        ("stages/0/0/expand/conv", 96), ("stages/0/1/expand/conv", 96), ("stages/0/2/expand/conv", 96),
        ("stages/1/0/expand/conv", 96), ("stages/1/0/project/conv", 72), ("stages/1/1/expand/conv", 216),
        ("stages/2/0/expand/conv", 216), ("stages/2/0/project/conv", 168), ("head/conv", 10)]
    by_name = {g.name: g for g in groups}
    block = by_name["stages/0/1/expand/conv"]
    assert set(block.members) == _block_expansion_members(("stages", 0, 1), ("3x3", "1x1", "3x1", "1x3"))
    assert [p for p, _ in block.producers] == [("stages", 0, 1, "expand", "conv", "kernel")] + [
        ("stages", 0, 1, "depthwise", "branches", b, "conv", "kernel") for b in ("1x1", "1x3", "3x1", "3x3")]
    # Stem output = stage-1 residual stream (block 1 has an identity shortcut): one group that
    # also holds the in-rows of every block reading the stream, up to the next stage's first.
    stream = by_name["stem/1/conv"]
    writers = [("stem", 1)] + [("stages", 0, b, "project") for b in range(3)]
    readers = [("stages", 0, b, "expand") for b in range(3)] + [("stages", 1, 0, "expand")]
    expected = {(w + ("conv", "kernel"), 3) for w in writers} | {(r + ("conv", "kernel"), 2) for r in readers}
    expected |= {(w + ("bn", k), 0) for w in writers for k in ("scale", "bias", "mean", "var")}
    assert set(stream.members) == expected
    assert by_name["stages/2/0/project/conv"].members[0] == (("head", "conv", "kernel"), 2)
    assert "model output" in by_name["head/conv"].frozen
    assert [g.name for g in groups if not g.prunable] == ["head/conv"]
    # GRN's gamma/beta are scalars: in no group. Its mean over channels couples the streams.
    assert not any("grn" in p for g in groups for p, _ in g.members)
    coupled = {g.name for g in groups if g.cross_channel}
    assert coupled == {"stem/1/conv", "stages/1/0/project/conv", "stages/2/0/project/conv"}
    assert "GRN" in by_name["stem/1/conv"].cross_channel[0]


@pytest.mark.parametrize("name,deploy", [("rep_mobile", False), ("rep_mobile", True), ("bc_resnet", False)])
def test_groups_do_not_depend_on_how_convs_lower(name, deploy):
    """With conv_lowering "taps" DepthwiseConv computes shifted slices and PointwiseConv a
    matmul, with "xla" both are XLA convs: the groups (and their producers, which L1 importance
    reads) must be the same either way."""
    def groups(lowering):
        return prune.channel_groups(nnx.eval_shape(lambda: build_model(
            name, deploy=deploy, rngs=nnx.Rngs(0), conv_lowering=lowering)))

    assert groups("xla") == groups("taps")


@pytest.mark.parametrize("name,deploy,kw", [("dcase2024_baseline", False, {}), ("rep_mobile", True, {}),
                                            ("rep_mobile", False, {"use_grn": False})])
def test_group_names_are_shared_across_the_family_and_forms(name, deploy, kw):
    model = nnx.eval_shape(lambda: build_model(name, deploy=deploy, rngs=nnx.Rngs(0), **kw))
    groups = prune.channel_groups(model)
    assert [g.name for g in groups][:3] == ["stem/0/conv", "stem/1/conv", "stages/0/0/expand/conv"]
    assert len(groups) == 11 and sum(g.prunable for g in groups) == 10
    assert any(g.cross_channel for g in groups) == (name == "rep_mobile" and kw.get("use_grn", True))
    if deploy:  # no BN: conv bias instead, and BN-scale importance has nothing to read
        g = groups[2]
        assert (("stages", 0, 0, "expand", "conv", "bias"), 0) in g.members and not g.bn_scales


class _Toy(nnx.Module):
    """conv -> {flatten | concat | split | grouped conv | depthwise conv | nothing} -> Linear -> Linear."""

    def __init__(self, kind, rngs):
        self.kind = kind
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.grouped = nnx.Conv(4, 4, (1, 1), feature_group_count=2, rngs=rngs)
        self.depthwise = nnx.Conv(4, 4, (3, 3), feature_group_count=4, rngs=rngs)
        width = {"flatten": 4 * 6 * 5, "concat": 8, "split": 2}.get(kind, 4)
        self.fc1 = nnx.Linear(width, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x, *, train=False):
        h = jax.nn.relu(self.conv(x[..., None]))
        if self.kind == "flatten":
            h = h.reshape(h.shape[0], -1)
        else:
            if self.kind == "concat":
                h = jnp.concatenate([h, h], axis=-1)
            if self.kind == "split":
                h = jnp.split(h, 2, axis=-1)[0]
            if self.kind == "grouped":
                h = self.grouped(h)
            if self.kind == "depthwise":
                h = self.depthwise(h)
            h = h.mean(axis=(1, 2))
        return self.fc2(jax.nn.relu(self.fc1(h))), {}


@pytest.mark.parametrize("kind,why", [("flatten", "merges or splits"), ("concat", "concatenates"),
                                      ("split", "splits along"), ("grouped", "grouped conv"),
                                      ("depthwise", None), ("plain", None)])
def test_unsliceable_axes_are_frozen(kind, why):
    groups = {g.name: g for g in prune.channel_groups(nnx.eval_shape(lambda: _Toy(kind, nnx.Rngs(0))), (2, 6, 5))}
    conv = groups["conv"]
    assert (conv.frozen is None) if why is None else (why in conv.frozen)
    if kind == "depthwise":  # channel c in -> channel c out: one group through the depthwise conv
        assert {(("depthwise", "kernel"), 3), (("depthwise", "bias"), 0)} <= set(conv.members)
        assert [p for p, _ in conv.producers] == [("conv", "kernel"), ("depthwise", "kernel")]
    # Linear layers (dot_general) are handled like 1x1 convs.
    fc1 = groups["fc1"]
    assert fc1.prunable and set(fc1.members) == {(("fc1", "kernel"), 1), (("fc1", "bias"), 0), (("fc2", "kernel"), 0)}


# --- importance and masks ---------------------------------------------------------------------

def test_importance_scores_and_selection(cp96):
    groups = {g.name: g for g in prune.channel_groups(cp96)}
    params = nnx.state(cp96, nnx.Param)
    flat = prune.masks.flat_leaves(params)
    g = groups["stages/1/0/project/conv"]  # two producers (project convs of blocks 4 and 5)
    k4 = np.asarray(flat[("stages", 1, 0, "project", "conv", "kernel")])
    k5 = np.asarray(flat[("stages", 1, 1, "project", "conv", "kernel")])
    l1 = np.abs(k4).sum(axis=(0, 1, 2)) + np.abs(k5).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(prune.IMPORTANCE.get("l1")(flat, g), l1, rtol=1e-6)
    bn = sum(np.abs(np.asarray(flat[("stages", 1, b, "project", "bn", "scale")])) for b in (0, 1))
    np.testing.assert_allclose(prune.IMPORTANCE.get("bn_scale")(flat, g), bn, rtol=1e-6)
    keep = prune.compute_keep(params, list(groups.values()), {g.name: 100}, "l1")
    assert keep[g.name].sum() == 100 and l1[keep[g.name]].min() >= l1[~keep[g.name]].max()
    assert all(v.all() for n, v in keep.items() if n != g.name)  # unnamed groups untouched
    # A second, narrower round only removes more channels: masks nest.
    keep2 = prune.compute_keep(params, list(groups.values()), {g.name: 40}, "bn_scale", previous=keep)
    assert keep2[g.name].sum() == 40 and not (keep2[g.name] & ~keep[g.name]).any()
    with pytest.raises(ValueError, match="cannot grow"):
        prune.compute_keep(params, list(groups.values()), {g.name: 120}, "l1", previous=keep2)
    with pytest.raises(ValueError, match="cannot be pruned"):
        prune.compute_keep(params, list(groups.values()), {"head/conv": 5})
    with pytest.raises(ValueError, match="unknown channel groups"):
        prune.compute_keep(params, list(groups.values()), {"nope": 5})


def test_masks_cover_every_member_and_round_trip(cp96):
    groups = prune.channel_groups(cp96)
    params = nnx.state(cp96, nnx.Param)
    masks = prune.compute_masks(cp96, groups, {"stages/0/0/expand/conv": 50, "stem/1/conv": 20})
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    flat = prune.masks.flat_leaves(masks)
    kernel = np.asarray(flat[("stages", 0, 0, "expand", "conv", "kernel")])  # (1, 1, in=stream, out=exp)
    assert kernel.any(axis=(0, 1, 2)).sum() == 50 and kernel.any(axis=(0, 1, 3)).sum() == 20
    assert np.asarray(flat[("stages", 0, 0, "expand", "bn", "bias")]).sum() == 50
    assert np.asarray(flat[("head", "conv", "kernel")]).all()
    keep = prune.keep_from_masks(masks, groups)
    assert keep["stages/0/0/expand/conv"].sum() == 50 and keep["stem/1/conv"].sum() == 20
    broken = masks.to_pure_dict()
    broken["stages"][0][0]["expand"]["bn"]["bias"] = np.ones(288, bool)
    with pytest.raises(ValueError, match="disagree"):
        prune.keep_from_masks(broken, groups)


# --- slicing -------------------------------------------------------------------------------

def _train_steps(model, n_steps, seed=0):
    """A few production train steps (`steps.make_train_step`, Adam, no augmentation) on random
    audio whose log-mel has X_SHAPE's (64 mels, 32 frames): train mode, so BN statistics move."""
    tx = optax.adam(1e-2)
    graphdef, state = create_train_state(model, tx)
    step = steps.make_train_step(graphdef, tx, logmel(MEL), NO_AUG, steps.classification_loss, jax.random.key(seed))
    key = jax.random.key(seed)
    losses = []
    for i in range(n_steps):
        kx, ky = jax.random.split(jax.random.fold_in(key, i))
        audio = 0.1 * jax.random.normal(kx, (4, (X_SHAPE[2] - 1) * MEL.hop_length))
        state, metrics = step(state, {"audio": audio, "label": jax.random.randint(ky, (4,), 0, 10)})
        losses.append(float(metrics["loss"]))
    assert int(state.step) == n_steps
    return nnx.merge(graphdef, state.params, state.batch_stats), losses


def test_slicing_a_trained_model_is_exact():
    """The DCASE baseline block (no GRN), shortened to three blocks to compile faster (still an
    identity and a pooled shortcut, and a stage change): train a few steps (BN statistics move),
    prune half of every group, slice: the narrow model computes what the wide one does with the
    pruned channels zeroed."""
    model = random_model(lambda: build_model("dcase2024_baseline", n_blocks=(2, 1), strides={"b2": (2, 2)},
                                             rngs=nnx.Rngs(0)), seed=1)
    schedule = prune.plan(prune.PruneConfig(sparsity=0.5, round_to=4), model)
    assert schedule.widths[0]["stem/1/conv"] == 16 and schedule.widths[0]["stages/1/0/expand/conv"] == 32
    stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    trained, losses = _train_steps(model, 3)
    assert np.isfinite(losses).all()
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), stats_before, nnx.state(trained, nnx.BatchStat))
    assert all(jax.tree.leaves(moved))

    masks = schedule.masks(0, nnx.state(trained, nnx.Param))
    sliced = prune.slice_model(trained, schedule.groups, masks, rep_mobile_builder())
    assert sliced.config.stage_channels == (16, 16, 28) and sliced.config.stem_channels == 4
    assert [g.size for g in sliced.groups] == list(schedule.widths[0].values())
    ref, out = logits(zeroed_copy(trained, masks), X), logits(sliced.model, X)
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    assert complexity.count_params(sliced.model) < 0.4 * complexity.count_params(trained)


def test_prune_slice_fuse_chain():
    """Multi-branch Rep-Mobile (width 64 -> the base-32 widths): zeroed wide training form ==
    sliced training form == fused deploy form; the result has the base-32 deploy size."""
    build = lambda **o: build_model("rep_mobile", use_grn=False, rngs=nnx.Rngs(0), **o)  # noqa: E731
    wide = random_model(lambda: build(base_channels=64), seed=2)
    schedule = prune.plan(prune.PruneConfig(target=(("base_channels", 32),), schedule="one_shot", method="bn_scale"),
                          wide, build_reference=lambda o: build(**o))
    masks = schedule.masks(0, nnx.state(wide, nnx.Param))
    sliced = prune.slice_model(wide, schedule.groups, masks, rep_mobile_builder())
    deploy = fuse(sliced.model, lambda: RepMobile(sliced.config, deploy=True, rngs=nnx.Rngs(0)))
    ref = logits(zeroed_copy(wide, masks), X)
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(logits(sliced.model, X), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    np.testing.assert_allclose(logits(deploy, X), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert sliced.config.widths() == RepMobileConfig().widths()
    base32_deploy = nnx.eval_shape(lambda: build_model("rep_mobile", use_grn=False, deploy=True, rngs=nnx.Rngs(0)))
    assert complexity.count_params(deploy) == complexity.count_params(base32_deploy) == 124_850


def test_width_96_pruned_to_32_has_the_base_32_complexity(cp96):
    """The paper's setting: CP-Mobile width 96 pruned (progressively, two rounds) to the widths
    of the base-32 model has exactly its 126,952 params / 28,893,268 MACs."""
    cfg = prune.PruneConfig(target=(("base_channels", 32),), rounds=2, finetune_epochs=3, round_to=8)
    schedule = prune.plan(cfg, cp96, build_reference=lambda o: build_model("cp_mobile", rngs=nnx.Rngs(0), **o))
    assert RepMobileConfig(base_channels=96).widths() == (24, (96, 96, 224, 504), (288, 288, 288, 288, 672, 672))
    assert schedule.widths[0]["stem/1/conv"] == 64 and schedule.widths[0]["stages/2/0/project/conv"] == 336
    assert schedule.widths[0]["stages/1/0/project/conv"] == 152  # (224 + 72) / 2 = 148 -> 152
    model, groups, masks = cp96, schedule.groups, None
    for r in range(schedule.rounds):  # slice after each round, re-score the narrow model
        masks = schedule.masks(r, nnx.state(model, nnx.Param), groups=groups)
        config, model, groups = prune.slice_model(model, groups, masks, rep_mobile_builder())
    assert config.widths() == RepMobileConfig().widths() == (8, (32, 32, 72, 168), (96, 96, 96, 96, 216, 216))
    assert complexity.count_params(model) == 126_952
    assert complexity.count_macs(model, (1, 256, 63)) == 28_893_268


def test_slicing_grn_models():
    """GRN divides by the mean L2 norm over *all* channels and adds a scalar beta to every
    channel, so zeroed channels still change the others (the tracer flags those groups): a
    zeroed wide model is not the sliced one, which is why pruning slices and then finetunes. A
    fresh GRN is the identity: there the zeroed model is a reference for slicing GRN models."""
    build = lambda: build_model("rep_mobile", n_blocks=(2, 1), strides={"b2": (2, 2)}, rngs=nnx.Rngs(0))  # noqa: E731
    schedule = prune.plan(prune.PruneConfig(sparsity=0.5), nnx.eval_shape(build))
    assert any(g.cross_channel and schedule.widths[0][g.name] < g.size for g in schedule.groups)
    diffs = []
    for grn in (0.0, 0.5):
        model = random_model(build, seed=4, grn=grn)
        masks = schedule.masks(0, nnx.state(model, nnx.Param))
        sliced = prune.slice_model(model, schedule.groups, masks, rep_mobile_builder()).model
        ref = logits(zeroed_copy(model, masks), X)
        diffs.append(np.abs(logits(sliced, X) - ref).max() / np.abs(ref).max())
    assert diffs[0] < 1e-5 and diffs[1] > 1e-2


def test_slicing_refuses_structure_changes_and_frozen_groups():
    model = random_model(lambda: build_model("cp_mobile", rngs=nnx.Rngs(0)), seed=5)
    groups = prune.channel_groups(model)
    # Stage 2 (72 channels) cut to 32 = stage 1's width: block 4 would gain a shortcut.
    masks = prune.compute_masks(model, groups, {"stages/1/0/project/conv": 32})
    with pytest.raises(ValueError, match="structure"):
        prune.slice_model(model, groups, masks, rep_mobile_builder())
    head = next(g for g in groups if g.name == "head/conv")
    with pytest.raises(ValueError, match="cannot be pruned"):
        prune.slice_tree(module_tree(model), groups, {"head/conv": np.arange(10) < 5})
    assert head.frozen
    with pytest.raises(TypeError, match="BCResNetConfig cannot be narrowed"):
        prune.narrow_config(BCResNetConfig(), {})


# --- config and schedule ---------------------------------------------------------------------

def test_linear_and_one_shot_widths():
    model = nnx.eval_shape(lambda: build_model("cp_mobile", base_channels=96, rngs=nnx.Rngs(0)))
    cfg = prune.PruneConfig(sparsity=2 / 3, rounds=3, finetune_epochs=4, round_to=8)
    schedule = prune.plan(cfg, model)
    stream = [w["stem/1/conv"] for w in schedule.widths]
    assert stream == [72, 56, 32]  # 96 - 64 r / 3 = 74.7, 53.3 -> nearest multiples of 8; 96 / 3
    assert [w["stages/2/0/project/conv"] for w in schedule.widths] == [392, 280, 168]
    assert all(w["head/conv"] == 10 for w in schedule.widths)
    assert prune.sparsity_of(schedule.widths[-1], schedule.groups) == pytest.approx(2 / 3, abs=0.01)
    one = prune.plan(prune.PruneConfig(sparsity=0.5, schedule="one_shot"), model)
    assert one.rounds == 1 and one.widths[0]["stem/1/conv"] == 48


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one"),
    (dict(sparsity=0.5, target=(("base_channels", 32),)), "exactly one"),
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=0.5, schedule="one_shot", rounds=2), "rounds"),
    (dict(sparsity=0.5, rounds=2), "finetune_epochs"),
    (dict(sparsity=0.5, round_to=0), "round_to"),
    (dict(sparsity=0.5, method="l3"), "unknown importance"),
    (dict(sparsity=0.5, schedule="cosine"), "unknown prune schedule"),
])
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match):
        prune.PruneConfig(**kwargs)


def test_reference_must_share_the_structure():
    model = nnx.eval_shape(lambda: build_model("cp_mobile", base_channels=96, rngs=nnx.Rngs(0)))
    cfg = prune.PruneConfig(target={"n_blocks": (3, 2, 2)})
    assert cfg.target == (("n_blocks", (3, 2, 2)),)
    with pytest.raises(ValueError, match="reference model's channel groups differ"):
        prune.plan(cfg, model, build_reference=lambda o: build_model("cp_mobile", rngs=nnx.Rngs(0), **o))
    with pytest.raises(ValueError, match="needs build_reference"):
        prune.plan(prune.PruneConfig(target={"base_channels": 32}), model)
