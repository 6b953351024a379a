"""The production train step (asc_jax.train.steps) and the loop's evaluation function, checked directly.

One `make_train_step` step on a tiny Rep-Mobile must move every BatchNorm's running statistics by
exactly the momentum update of that batch's statistics: checked against a NumPy computation of
the first conv + BN, and against the same model run in train mode through NNX for every BN.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from asc_jax import inference
from asc_jax.audio.augment import AugmentConfig
from asc_jax.audio.features import MelConfig, log_mel
from asc_jax.audio.frontends import logmel
from asc_jax.models import build_model
from asc_jax.models.layers import BN_MOMENTUM
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

# A small frontend (32 mels x 16 frames) keeps the FFT and the model cheap; the step runs
# whatever MelConfig it is given.
MEL = MelConfig(n_fft=1024, win_length=1024, hop_length=256, n_mels=32)
NO_AUG = AugmentConfig(roll=None, freq_mask=None, mixstyle=None)  # the reference sees the same input
# Every kind of BN of the family (stem, expand, the four depthwise branches, project, head) at
# width 8; XLA convs compile about twice as fast as the "taps" lowering and compute the same.
OPTIONS = {"base_channels": 8, "n_blocks": (1, 1), "strides": {"b2": (2, 2)}, "conv_lowering": "xla"}
mel_of = jax.jit(functools.partial(log_mel, cfg=MEL))  # one compilation, not one per eager op


def _tiny_model(seed=1):
    """A small Rep-Mobile built abstractly and filled with NumPy draws (eager init would compile
    every initialiser): He-normal kernels and random BN statistics/affines and GRN gamma/beta, so
    that the momentum term of the running statistics is visible (fresh BNs hold mean 0, var 1)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model("rep_mobile", rngs=nnx.Rngs(0), **OPTIONS)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str([k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1])
        if name == "kernel":
            return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        if name in ("var", "scale"):
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        return rng.normal(0, 0.3, leaf.shape).astype(np.float32)  # mean, bias, GRN gamma/beta

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def _batch(seed=0, n=4):
    rng = np.random.default_rng(seed)
    # Noise with a per-example level, so the log-mel batch has non-trivial statistics.
    audio = rng.normal(size=(n, 15 * MEL.hop_length)) * rng.uniform(0.05, 1.0, size=(n, 1))
    return {"audio": audio.astype(np.float32), "label": np.arange(n) % 10}


def _host(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _cross_entropy(logits, labels):
    logits = np.asarray(logits, np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


def _first_conv_bn_stats(mel, kernel):
    """Batch mean and (biased) variance per channel of stem[0]'s conv output, in float64:
    a 3x3 conv, stride 2, padding 1 (PyTorch style), one input channel, no bias."""
    x = np.pad(np.asarray(mel, np.float64), ((0, 0), (1, 1), (1, 1)))
    kernel = np.asarray(kernel, np.float64)  # (3, 3, 1, C)
    h_out = (mel.shape[1] + 2 - 3) // 2 + 1
    w_out = (mel.shape[2] + 2 - 3) // 2 + 1
    out = np.zeros((mel.shape[0], h_out, w_out, kernel.shape[-1]))
    for di in range(3):
        for dj in range(3):
            patch = x[:, di:di + 2 * h_out:2, dj:dj + 2 * w_out:2]
            out += patch[..., None] * kernel[di, dj, 0]
    return out.mean(axis=(0, 1, 2)), out.var(axis=(0, 1, 2))


def test_one_step_updates_running_statistics_by_the_momentum_formula():
    """One production step (augmentation off, so the references see the step's input): the step
    counter, every parameter and every BN's running mean/var move, the statistics exactly by
    flax's update `momentum * running + (1 - momentum) * batch statistic` (biased variance)."""
    model = _tiny_model()
    tx = optax.sgd(0.1)
    graphdef, state = create_train_state(model, tx)
    batch = _batch()
    step = steps.make_train_step(graphdef, tx, logmel(MEL), NO_AUG, steps.classification_loss, jax.random.key(0))
    before = _host(state)  # the step donates its input state

    new_state, metrics = step(state, batch)
    after = _host(new_state)

    assert int(before.step) == 0 and int(after.step) == 1
    assert all(np.isfinite(float(metrics[k])) for k in ("loss", "grad_norm", "update_norm"))
    # Every parameter moved (no dead branch), and by exactly one SGD update.
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before.params, after.params)
    assert all(jax.tree.leaves(moved)), moved
    delta = np.sqrt(sum(np.sum((a - b) ** 2.0) for a, b in zip(jax.tree.leaves(before.params),
                                                               jax.tree.leaves(after.params))))
    np.testing.assert_allclose(delta, 0.1 * float(metrics["grad_norm"]), rtol=1e-4)

    # The first BN, from scratch: momentum * running + (1 - momentum) * batch statistic.
    mel = np.asarray(mel_of(batch["audio"]))
    assert mel.shape == (4, 32, 16)
    bn_old = before.batch_stats["stem"][0]["bn"]
    bn_new = after.batch_stats["stem"][0]["bn"]
    mean, var = _first_conv_bn_stats(mel, before.params["stem"][0]["conv"]["kernel"][...])
    assert np.abs(mean).max() > 0.1 and np.abs(bn_old["mean"][...] - mean).min() > 1e-3  # a real move
    np.testing.assert_allclose(bn_new["mean"][...], BN_MOMENTUM * bn_old["mean"][...] + (1 - BN_MOMENTUM) * mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn_new["var"][...], BN_MOMENTUM * bn_old["var"][...] + (1 - BN_MOMENTUM) * var,
                               rtol=1e-5, atol=1e-5)

    # Every BN: the same model run in train mode through NNX on the same log-mel batch.
    reference = nnx.merge(graphdef, before.params, before.batch_stats, copy=True)
    ref_logits, _ = nnx.jit(lambda m, x: m(x, train=True))(reference, mel)
    np.testing.assert_allclose(float(metrics["loss"]), _cross_entropy(ref_logits, batch["label"]), rtol=1e-5)
    expected = nnx.to_flat_state(nnx.state(reference, nnx.BatchStat))
    got = dict(nnx.to_flat_state(after.batch_stats.filter(nnx.BatchStat)))
    old = dict(nnx.to_flat_state(before.batch_stats.filter(nnx.BatchStat)))
    n_bn = sum(1 for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm))
    assert len(expected) == len(got) == 2 * n_bn
    for path, value in expected:
        np.testing.assert_allclose(got[path][...], value[...], rtol=1e-5, atol=1e-5, err_msg=str(path))
    assert all(not np.allclose(old[p][...], got[p][...]) for p, _ in expected if p[-1] == "var")


def test_eval_fn_uses_and_keeps_the_running_statistics():
    """The loop's evaluation function (`inference.forward` of the model with its log-mel
    frontend, jitted, the TrainState's (params, batch_stats) passed in) runs in inference mode:
    it normalises with the running statistics and writes nothing back."""
    model = _tiny_model()
    graphdef, state = create_train_state(model, optax.sgd(0.1))
    before = _host(state.batch_stats)
    eval_fn = jax.jit(inference.forward(graphdef, logmel(MEL).features))  # as train_and_evaluate
    audio = _batch()["audio"]
    weights = (state.params, state.batch_stats)
    logits = np.asarray(eval_fn(weights, audio))
    eval_fn(weights, _batch(seed=1)["audio"])  # another batch in between changes nothing
    np.testing.assert_array_equal(np.asarray(eval_fn(weights, audio)), logits)
    jax.tree.map(np.testing.assert_array_equal, _host(state.batch_stats), before)
    reference = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
    mel = mel_of(audio)
    np.testing.assert_allclose(logits, np.asarray(nnx.jit(lambda m, x: m(x, train=False)[0])(reference, mel)),
                               rtol=1e-5, atol=1e-6)
    train_mode = nnx.jit(lambda m, x: m(x, train=True)[0])(reference, mel)
    assert not np.allclose(np.asarray(train_mode), logits, atol=1e-3)  # the statistics matter


def test_a_frontend_with_its_own_training_draw_gets_the_step_key():
    """A frontend with `train_features` (the Kaldi-mel fmin/fmax jitter) computes the step's
    features from fold_in(fold_in(key, step), FRONTEND_STREAM): the loss is the one the model
    gives on exactly those features, and differs from the eval features' loss."""
    from asc_jax.audio.frontends import kaldi_logmel
    from asc_jax.audio.passt_frontend import PaSSTFrontendConfig

    cfg = PaSSTFrontendConfig(n_mels=32, win_length=1024, n_fft=1024, hop_length=256, mel_jitter=True,
                              fmin_aug_range=200, fmax_aug_range=4000)
    frontend = kaldi_logmel(cfg)
    model = _tiny_model()
    graphdef, state = create_train_state(model, optax.sgd(0.0))
    # Two copies (train-mode BN updates a model's statistics; the step donates `state`).
    ref_a, ref_b = (nnx.merge(graphdef, state.params, state.batch_stats, copy=True) for _ in range(2))
    batch, key = _batch(), jax.random.key(3)
    step = steps.make_train_step(graphdef, optax.sgd(0.0), frontend, NO_AUG, steps.classification_loss, key)
    _, metrics = step(state, batch)
    step_key = jax.random.fold_in(jax.random.fold_in(key, 0), steps.FRONTEND_STREAM)
    forward = nnx.jit(lambda m, x: m(x, train=True)[0])
    jittered = frontend.training_features(batch["audio"], step_key)
    ce = _cross_entropy(forward(ref_a, jittered), batch["label"])
    np.testing.assert_allclose(float(metrics["loss"]), ce, rtol=1e-5)
    plain = _cross_entropy(forward(ref_b, frontend.features(batch["audio"])), batch["label"])
    assert abs(plain - ce) > 1e-4


def test_bfloat16_compute_follows_the_float32_step_and_keeps_float32_state():
    """optim.compute_dtype="bfloat16": one SGD step from the same state gives the float32 step's
    loss to bfloat16 precision and moves the weights the same way, while parameters, BatchNorm
    statistics and the optimiser state stay float32 (master weights). Measured on this small
    random model: loss rel. diff ~1e-3, cosine of the two whole updates 0.90 (per tensor 0.43-1.0,
    lowest in the first stage, the end of the longest bfloat16 backward chain). Whether that
    noise costs accuracy is tests/test_train.py's bfloat16 run."""

    model = _tiny_model()
    results = {}
    for dtype in ("float32", "bfloat16"):
        graphdef, state = create_train_state(nnx.clone(model), optax.sgd(0.1))
        p0 = _host(state.params)
        step = steps.make_train_step(graphdef, optax.sgd(0.1), logmel(MEL), NO_AUG, steps.classification_loss,
                                     jax.random.key(0), compute_dtype=dtype)
        state, metrics = step(state, _batch(n=8))
        leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
        assert all(x.dtype == np.float32 for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)), dtype
        delta = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(_host(state.params)),
                                                                jax.tree.leaves(p0))])
        stats = np.concatenate([np.ravel(x) for x in jax.tree.leaves(_host(state.batch_stats))])
        results[dtype] = (float(metrics["loss"]), delta, stats)
    (loss32, d32, s32), (loss16, d16, s16) = results["float32"], results["bfloat16"]
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    cosine = float(d32 @ d16 / (np.linalg.norm(d32) * np.linalg.norm(d16)))
    assert cosine > 0.85, cosine
    assert not np.array_equal(d32, d16)  # bfloat16 really ran
    # The running statistics come from bfloat16 activations but are kept and updated in float32.
    np.testing.assert_allclose(s16, s32, rtol=0.05, atol=0.05)
