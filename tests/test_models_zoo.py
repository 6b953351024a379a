"""Comparison models: CP-ResNet, BC-ResNet, TF-SepNet, MobileNetV3 (EfficientAT), ECAPA-TDNN, ResNet34.

Pinned complexities are on 1x256x63 at the default configs, in the DCASE/torchinfo convention.
CP-ResNet and BC-ResNet are checked against the closed-form counts below. All six were also
cross-checked (params, MACs and logits to ~1e-6) against the PyTorch reference code cited in each
module's docstring, outside the test suite (which does not depend on torch).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from asc_jax import complexity
from asc_jax.audio.augment import AugmentConfig
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import logmel
# Importing the model modules registers them.
from asc_jax.models import bc_resnet, cp_resnet, ecapa_tdnn, mobilenet, resnet34, tf_sepnet  # noqa: F401
from asc_jax.models.registry import build_model
from asc_jax.reparam import bn_epsilons, fuse, fuse_tree
from asc_jax.surgery import check_tree_match
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

SHAPE = (1, 256, 63)
MEL = MelConfig()  # the 256-bin log-mel frontend the default configs (and the teachers) expect
NO_AUG = AugmentConfig(roll=None, freq_mask=None, mixstyle=None)
STUDENTS = ("cp_resnet", "bc_resnet", "tf_sepnet", "mobilenet")  # DCASE-scale defaults
TEACHERS = ("ecapa_tdnn", "resnet34")
PINNED = {  # name: (params, MACs) on 1x256x63
    "cp_resnet": (90_236, 28_914_044),
    "bc_resnet": (26_418, 29_570_394),
    "tf_sepnet": (128_586, 14_782_944),
    "mobilenet": (1_550_010, 29_174_058),
    "ecapa_tdnn": (6_249_994, 331_558_538),
    "resnet34": (9_520_490, 4_625_206_346),
}


def _conv_counts(layers):
    """(params, MACs) of (kernel_h, kernel_w, c_in, c_out, groups, output positions, bn) layers:
    a conv has kh*kw*c_in/groups*c_out weights, each used once per output position; a BN
    (bn=True) adds 2*c_out params and, per torchinfo, as many MACs."""
    params = macs = 0
    for kh, kw, cin, cout, groups, positions, bn in layers:
        w = kh * kw * cin // groups * cout
        params += w + (2 * cout if bn else 0)
        macs += w * positions + (2 * cout if bn else 0)
    return params, macs


def cp_resnet_hand_count():
    """Default CP-ResNet: widths 24/48/96, rho 8, blocks (2, 1, 1), stage 2 in 2 groups."""
    stem = ((256 + 2 - 5) // 2 + 1) * ((63 + 2 - 5) // 2 + 1)  # 5x5 s2 pad 1: 127 x 31
    s1a = (127 // 2) * (31 // 2)  # 2x2 max-pool: 63 x 15
    s1b = (63 // 2) * 15  # (2, 1) max-pool after block 1: 31 x 15
    s2 = (31 // 2) * 15  # (2, 1) max-pool after block 2: 15 x 15, kept to the end
    return _conv_counts([
        (5, 5, 1, 24, 1, stem, True),
        (3, 3, 24, 24, 1, s1a, True), (1, 1, 24, 24, 1, s1a, True),  # stage 1 block 1: (3, 1)
        (3, 3, 24, 24, 1, s1b, True), (3, 3, 24, 24, 1, s1b, True),  # block 2: rho 8 keeps (3, 3)
        (3, 3, 24, 48, 2, s2, True), (3, 3, 48, 48, 2, s2, True), (1, 1, 24, 48, 2, s2, True),  # + shortcut
        (3, 3, 48, 96, 1, s2, True), (1, 1, 96, 96, 1, s2, True), (1, 1, 48, 96, 1, s2, True),  # (3, 1) + sc
        (1, 1, 96, 10, 1, s2, True),  # head conv + BN
    ])


def bc_resnet_hand_count():
    """Default BC-ResNet-2: widths 32 (stem), 16, 24, 32, 40 (stages), 64 (head), 4 SSN sub-bands."""
    t, layers, ssn = 63, [], 0
    layers.append((5, 5, 1, 32, 1, 128 * t, True))  # stem, stride (2, 1): 128 x 63
    stages = [(32, 16, 128, 128, 2), (16, 24, 128, 64, 2), (24, 32, 64, 32, 4), (32, 40, 32, 32, 4)]
    for cin, c, f_in, f_out, n in stages:
        for j in range(n):
            if j == 0:  # transition 1x1 conv-BN-ReLU at the input resolution
                layers.append((1, 1, cin, c, 1, f_in * t, True))
            layers.append((3, 1, c, c, c, f_out * t, False))  # frequency depthwise, then SubSpectralNorm
            ssn += 2 * c * 4
            layers.append((1, 3, c, c, c, t, True))  # temporal depthwise on the (1 x T) average + BN
            layers.append((1, 1, c, c, 1, t, False))  # pointwise on (1 x T)
    layers.append((5, 5, 40, 40, 40, (32 - 4) * t, False))  # head depthwise, no frequency padding
    layers.append((1, 1, 40, 64, 1, (32 - 4) * t, True))
    params, macs = _conv_counts(layers)
    fc = 64 * 10 + 10  # linear on the pooled features: params x batch MACs
    return params + ssn + fc, macs + ssn + fc


def test_hand_counts_match_pins():
    assert cp_resnet_hand_count() == PINNED["cp_resnet"]
    assert bc_resnet_hand_count() == PINNED["bc_resnet"]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_complexity(name):
    rep = complexity.report(_zero_filled(name), SHAPE)
    assert (rep.params, rep.macs) == PINNED[name]
    if name in STUDENTS:  # DCASE-scale defaults stay within the challenge's MAC budget
        assert rep.macs < complexity.DCASE_MAX_MACS
    else:  # teachers are an order of magnitude larger
        assert rep.macs > 10 * complexity.DCASE_MAX_MACS


def test_published_reference_sizes():
    """Sizes at the reference authors' own settings."""
    # BC-ResNet-1 for keyword spotting (40 mels x 101 frames, 12 classes, 5 sub-bands): 9.2K params.
    kws = _zero_filled("bc_resnet", base_channels=8, n_classes=12, sub_bands=5)
    assert complexity.count_params(kws) == 9_232
    # EfficientAT mn10 on AudioSet (128 mels x 1000 frames, 527 classes): 4.88M params, 0.54 GMACs.
    mn10 = _zero_filled("mobilenet", width_mult=1.0, n_classes=527)
    rep = complexity.report(mn10, (1, 128, 1000))
    assert (rep.params, rep.macs) == (4_876_831, 541_109_495)
    # wespeaker ResNet34 (80 fbanks, 256-dim embedding): 6.63M params without our 10-class head.
    r34 = _zero_filled("resnet34", n_mels=80)
    assert complexity.count_params(r34) - (256 * 10 + 10) == 6_634_336
    # CP-ResNet as submitted to DCASE2022 (base 32, stage 3 cut by 36 to fit 128K params).
    cp = _zero_filled("cp_resnet", base_channels=32, cut_channels_s3=36)
    assert complexity.count_params(cp) == 127_684


def _filled(name, *, random=False, **kwargs):
    """The model built abstractly and filled with numpy values: zeros, or (random=True) He-normal
    kernels, unit BN scale/variance, AdaResNorm rho 0.5 and zero biases/means.

    Building models for real compiles every random initialiser once per parameter shape, which
    dominates construction time on CPU (~30 s for MobileNet); none of these tests depends on the
    initialisers.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(name, rngs=nnx.Rngs(0), **kwargs)))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        kind = str([k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1])
        if random and kind == "kernel":
            return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(leaf.dtype)
        if random and kind in ("scale", "var", "gamma", "rho"):
            return np.full(leaf.shape, 0.5 if kind == "rho" else 1.0, leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@functools.cache
def _zero_filled(name, **kwargs):
    """Shared read-only model for shape and complexity tests."""
    return _filled(name, **kwargs)


def _compile(fn, *args):
    """jit + compile at XLA's lowest backend optimisation level: these graphs run once, so
    compile time (halved) is all that matters."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _recorded_grads() -> optax.GradientTransformation:
    """Passes gradients through unchanged and keeps the last ones as its state, so a test can
    read the exact gradients of the production step. Host zeros as the initial state: eager
    `jnp.zeros_like` would compile once per parameter shape."""
    def init(params):
        return jax.tree.map(lambda p: np.zeros(p.shape, p.dtype), params)
    return optax.GradientTransformation(init, lambda grads, state, params=None: (grads, grads))


def _production_step(model, audio, labels):
    """One `steps.make_train_step` step (no augmentation, SGD): (logits, aux shapes, gradients,
    BatchStats before, BatchStats after). Aux comes from an abstract forward pass (shapes only:
    the step returns no intermediates)."""
    tx = optax.chain(_recorded_grads(), optax.sgd(1e-3))
    graphdef, state = create_train_state(model, tx)
    mel = jax.ShapeDtypeStruct((audio.shape[0], MEL.n_mels, MEL.n_frames(audio.shape[1])), jnp.float32)
    aux = jax.eval_shape(lambda p, r, x: nnx.merge(graphdef, p, r)(x, train=False)[1],
                         state.params, state.batch_stats, mel)

    def loss_fn(logits, batch):
        loss, metrics = steps.classification_loss(logits, batch)
        return loss, {**metrics, "logits": logits}

    step = steps.make_train_step(graphdef, tx, logmel(MEL), NO_AUG, loss_fn, jax.random.key(0))
    batch = {"audio": audio, "label": labels}
    # These graphs run once, so compile at XLA's lowest backend optimisation level (as _compile).
    compiled = step.lower(state, batch).compile(compiler_options={"xla_backend_optimization_level": 0})
    before = [(p, np.array(v[...])) for p, v in nnx.to_flat_state(state.batch_stats.filter(nnx.BatchStat))]
    new_state, metrics = compiled(state, batch)  # donates `state`
    assert int(new_state.step) == 1
    after = nnx.to_flat_state(new_state.batch_stats.filter(nnx.BatchStat))
    return metrics["logits"], aux, new_state.opt_state[0], before, after


# Compilation dominates these tests on CPU, so the deep models run shallow variants that keep every
# kind of block (the pinned counts above cover the default configs): name -> (overrides, frames).
SMOKE = {
    "cp_resnet": ({}, 63),
    "bc_resnet": ({"n_blocks": (1, 2, 1, 1)}, 63),
    "tf_sepnet": ({"layout": ("N", 1, 1, "N", "M", 1.5, "M", 2, "N")}, 63),
    # Large's blocks 1, 2, 4, 7, 11, 13: residual, plain/SE x ReLU/Hardswish, all four strides.
    "mobilenet": ({"blocks": tuple(mobilenet.LARGE[i] for i in (0, 1, 3, 6, 10, 12))}, 63),
    "ecapa_tdnn": ({}, 32),
    "resnet34": ({"n_blocks": (2, 1, 1, 1)}, 32),
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_forward_backward_smoke(name):
    overrides, frames = SMOKE[name]
    model = _filled(name, random=True, **overrides)
    audio = 0.1 * jax.random.normal(jax.random.key(1), (2, (frames - 1) * MEL.hop_length))
    logits, aux, grads, before, after = _production_step(model, audio, jnp.array([3, 7]))
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert aux["stem"].shape[0] == 2 and len(aux["stages"]) >= 3
    assert aux["pre_logits"].ndim == 2 and aux["pre_logits"].shape[0] == 2
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for _, g in leaves)
    # Every parameter is wired into the loss: no dead branch has an all-zero gradient.
    dead = [jax.tree_util.keystr(p) for p, g in leaves if not bool(jnp.any(g != 0))]
    assert not dead, dead
    # Train mode updates every BatchNorm's running statistics (the mean alone may stay put: a BN
    # fed by a zero-mean batch-normalised layer sees a zero batch mean).
    changed = {}
    for (path, old), (_, new) in zip(before, after):
        changed[path[:-1]] = changed.get(path[:-1], False) or not np.allclose(old[...], new[...])
    n_bn = sum(1 for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm))
    assert len(changed) == n_bn and all(changed.values()), [p for p, c in changed.items() if not c]


def _inference_logits(models, x):
    """Inference logits of several models, from one compiled function."""
    graphdefs, states = zip(*(nnx.split(m) for m in models))
    fn = lambda states, x: [nnx.merge(g, s)(x)[0] for g, s in zip(graphdefs, states)]
    return _compile(fn, states, x)(states, x)


# Numerical equivalence where the models have their own conv-BN code (CP-ResNet's stem and
# BC-ResNet's dilated temporal conv swap ConvBN's conv; BC-ResNet keeps SubSpectralNorm) or their
# own parameters (TF-SepNet's AdaResNorm); shallow variants keep compilation short.
@pytest.mark.parametrize("name,kwargs,shape", [
    ("cp_resnet", {}, (2, 256, 63)),
    ("bc_resnet", {"n_blocks": (1, 2, 1, 1)}, (2, 256, 40)),
    ("tf_sepnet", {"layout": ("N", 1, 1, "N", "M", 1.5, "N")}, (2, 128, 40)),
])
def test_fused_deploy_model_equals_training_model(name, kwargs, shape, randomize):
    model = _filled(name, random=True, **kwargs)
    randomize(model, seed=1, spread=2.0)
    deploy = fuse(model, lambda: build_model(name, deploy=True, rngs=nnx.Rngs(0), **kwargs))
    x = jax.random.normal(jax.random.key(0), shape) * 2.0
    ref, out = _inference_logits([model, deploy], x)
    scale = float(jnp.abs(ref).max())
    assert scale > 0.1, "test needs non-trivial logits"
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5 * max(scale, 1.0), rtol=0)


@pytest.mark.parametrize("name", ["cp_resnet", "bc_resnet", "tf_sepnet", "mobilenet", "resnet34"])
def test_deploy_form_matches_the_fused_tree(name):
    """The default deploy module has exactly the tree that BN folding produces (abstractly: no
    arrays are computed). Every BN folds into its conv (2C affine -> C bias), except BC-ResNet's
    SubSpectralNorms, which stay."""
    model = nnx.eval_shape(lambda: build_model(name, rngs=nnx.Rngs(0)))
    deploy = nnx.eval_shape(lambda: build_model(name, deploy=True, rngs=nnx.Rngs(0)))
    fused = jax.eval_shape(lambda tree: fuse_tree(tree, bn_epsilons(model)), nnx.state(model).to_pure_dict())
    check_tree_match(fused, nnx.state(deploy).to_pure_dict())
    kept = [m for _, m in nnx.iter_modules(deploy) if isinstance(m, nnx.BatchNorm)]
    n_ssn = sum(1 for _, m in nnx.iter_modules(deploy) if isinstance(m, bc_resnet.SubSpectralNorm))
    assert len(kept) == n_ssn
    folded = sum(m.num_features for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm))
    folded -= sum(m.num_features for m in kept)
    assert complexity.count_params(deploy) == complexity.count_params(model) - folded


def test_ecapa_has_no_deploy_form():
    with pytest.raises(ValueError, match="no deploy form"):
        build_model("ecapa_tdnn", deploy=True, rngs=nnx.Rngs(0))


def test_cp_resnet_kernels_follow_the_reference_tables():
    """The reference spells the kernels per (stage, block) with e = rho - 4 as below."""
    for rho in range(-2, 14):
        e = rho - 4
        ref = (((3, 1), (3 - (-e > 2) * 2, 3 - (-e > 1) * 2)),
               ((3 - (-e > 0) * 2, 1 + (e > 0) * 2), (1 + (e > 1) * 2, 1 + (e > 2) * 2)),
               ((1 + (e > 3) * 2, 1 + (e > 4) * 2), (1 + (e > 5) * 2, 1 + (e > 6) * 2)))
        assert cp_resnet.kernel_sizes(rho, (2, 2, 2)) == ref, rho


def test_subspectral_norm_matches_reference_layout():
    """PyTorch views (B, C, F, T) as (B, C*S, F/S, T): channel c's sub-band s is BN channel c*S+s."""
    c, s, f, t = 3, 4, 8, 5
    ssn = bc_resnet.SubSpectralNorm(c, s, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=c * s), rng.uniform(0.5, 2, size=c * s)
    scale, bias = rng.normal(size=c * s), rng.normal(size=c * s)
    ssn.bn.mean.value, ssn.bn.var.value = jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32)
    ssn.bn.scale.value, ssn.bn.bias.value = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    x = rng.normal(size=(2, f, t, c)).astype(np.float32)
    ref = np.empty_like(x)
    for ci in range(c):
        for si in range(s):
            k, band = ci * s + si, slice(si * f // s, (si + 1) * f // s)
            ref[:, band, :, ci] = (x[:, band, :, ci] - mean[k]) / np.sqrt(var[k] + 1e-5) * scale[k] + bias[k]
    np.testing.assert_allclose(np.asarray(ssn(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sub-bands"):
        ssn(jnp.zeros((1, 6, 5, c)))


def test_channel_shuffle_matches_reference():
    """ShuffleLayer: reshape (C//g, g) -> transpose -> flatten, on the channel axis."""
    x = np.arange(2 * 12, dtype=np.float32).reshape(1, 1, 2, 12)
    out = np.asarray(tf_sepnet.channel_shuffle(jnp.asarray(x), 6))
    assert out[0, 0, 0].tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]


def test_residual_norms():
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32) * 3 + 1
    m = x.mean(axis=(2, 3), keepdims=True)
    v = x.var(axis=(2, 3), keepdims=True, ddof=1)  # PyTorch's unbiased var, per sample and frequency
    ifn = (x - m) / np.sqrt(v + 1e-5)
    out = tf_sepnet.ResNorm()(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), 0.1 * x + ifn, rtol=1e-5, atol=1e-5)
    ada = tf_sepnet.AdaResNorm(6)
    ada.rho.value, ada.gamma.value, ada.beta.value = jnp.full(6, 0.3), jnp.full(6, 2.0), jnp.full(6, -1.0)
    out = ada(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), 2 * (0.3 * x + 0.7 * ifn) - 1, rtol=1e-5, atol=1e-5)


def test_temporal_stats_pooling_order():
    """TSTP flattens (C, F) channel-major like the reference, with the unbiased std over time."""
    h = np.random.default_rng(0).normal(size=(2, 3, 7, 4)).astype(np.float32)  # (B, F, T, C)
    torch_layout = h.transpose(0, 3, 1, 2)  # (B, C, F, T)
    ref = np.concatenate([torch_layout.mean(-1).reshape(2, -1),
                          np.sqrt(torch_layout.var(-1, ddof=1) + 1e-8).reshape(2, -1)], axis=-1)
    np.testing.assert_allclose(np.asarray(resnet34.temporal_stats(jnp.asarray(h))), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs,match", [
    ("cp_resnet", {"n_blocks": (3, 1, 1)}, "1 or 2 blocks"),
    ("bc_resnet", {"widths": (2.0, 1.0)}, "widths needs"),
    ("tf_sepnet", {"norm": "layernorm"}, "unknown norm"),
    ("tf_sepnet", {"layout": ("N", 1, "X")}, "unknown layout entries"),
    ("mobilenet", {"head": "attention"}, "unknown head"),
    ("mobilenet", {"strides": (2, 2, 3, 2)}, "strides"),
    ("mobilenet", {"blocks": mobilenet.LARGE[:1] + mobilenet.LARGE[2:]}, "input width"),
])
def test_bad_configs_are_rejected(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize("name", TEACHERS)
def test_teachers_reject_a_mismatched_mel_count(name):
    width = {"base_channels": 8} if name == "resnet34" else {"channels": 16}
    model = _zero_filled(name, n_mels=64, **width)
    with pytest.raises(ValueError, match="expects"):
        model(jnp.zeros((1, 80, 20)))


def test_overrides_from_config_files_may_be_lists():
    model = _filled("cp_resnet", n_blocks=[2, 2, 1], groups=[1, 1, 1], pools=[[0, 1], [], []])
    assert model.config.n_blocks == (2, 2, 1) and model.config.pools == ((0, 1), (), ())
    assert isinstance(hash(model.config), int)  # nnx graphdefs need hashable static fields
