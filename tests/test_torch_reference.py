"""The PyTorch peer of benchmarks/compare_torch.py (benchmarks/torch_reference.py) computes what
asc_jax computes, on shared weights: parameter counts, eval-mode logits of the training and the
fused deploy form, the log-mel frontend, the frequency mask and one Adam train step.

Models are built in torch (fast) and moved into abstract asc_jax modules (`surgery.load_into`):
eager asc_jax initialisation would compile every initialiser, seconds per model on CPU.
"""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from asc_jax.audio.augment import AugmentConfig, FreqMaskConfig
from asc_jax.audio.features import MelConfig, log_mel
from asc_jax.audio.frontends import logmel
from asc_jax.models import build_model
from asc_jax.models.layers import BN_MOMENTUM
from asc_jax.reparam import fuse
from asc_jax.surgery import flatten, load_into, module_tree
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

torch = pytest.importorskip("torch")
tr = pytest.importorskip("benchmarks.torch_reference")

TOL = 1e-4
# A one-block Rep-Mobile for the train step (stem, expand, all four branches, project, shortcut,
# GRN, head): XLA:CPU's compile time of a train step grows with the number of layers, ~1 s each
# on 2 cores. XLA convs compile faster than the "taps" lowering and compute the same
# (tests/test_lowering.py); the full-size eval-mode test runs the taps.
SMALL = {"base_channels": 8, "n_blocks": (1,), "strides": {}}
# LLVM without its optimisation passes: the same IEEE arithmetic (no fast-math either way),
# compiled about twice as fast, which is most of this file's run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def randomized(model, seed=0):
    """Random BN statistics and affines and GRN gamma / beta, so that none of them can be
    dropped or misplaced unnoticed (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
            elif isinstance(m, tr.GRN):
                m.gamma.copy_(torch.randn(1, generator=gen) * 0.5)
                m.beta.copy_(torch.randn(1, generator=gen) * 0.5)
    return model


def as_asc_jax(name, torch_model, **options):
    return load_into(lambda: build_model(name, rngs=nnx.Rngs(0), **options), tr.to_asc_jax_tree(torch_model))


def n_params_asc_jax(name, **options):
    abstract = nnx.eval_shape(lambda: build_model(name, rngs=nnx.Rngs(0), **options))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def jax_logits(model, x):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])
    return np.asarray(fn.lower(state, x).compile(FAST_COMPILE)(state, x))


def waves(n=2, n_samples=32000, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, n_samples)) * rng.uniform(0.05, 0.5, (n, 1))).astype(np.float32)


def test_parameter_counts_match():
    counts = {"rep_mobile": 137_560, "cp_mobile": 126_952}
    for name, count in counts.items():
        assert tr.n_params(tr.MODELS[name]()) == n_params_asc_jax(name) == count, name
        assert tr.n_params(tr.MODELS[name](deploy=True)) == n_params_asc_jax(name, deploy=True) == 124_862


def test_logits_match_in_eval_mode_training_and_deploy_form():
    """Full-size Rep-Mobile (4 branches, BN in eval mode) and its fused deploy form: torch
    weights -> asc_jax, asc_jax fused weights -> torch deploy model."""
    reference = randomized(tr.rep_mobile()).eval()
    model = as_asc_jax("rep_mobile", reference)
    x = np.random.default_rng(1).normal(size=(2, 256, 63)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)[:, None]).numpy()
    assert np.abs(expected).max() > 0.1  # logits worth comparing
    np.testing.assert_allclose(jax_logits(model, x), expected, atol=TOL, rtol=0)

    deploy = fuse(model, lambda: build_model("rep_mobile", rngs=nnx.Rngs(0), deploy=True))
    torch_deploy = tr.load_asc_jax_tree(tr.rep_mobile(deploy=True), module_tree(deploy)).eval()
    with torch.no_grad():
        np.testing.assert_allclose(torch_deploy(torch.from_numpy(x)[:, None]).numpy(), expected,
                                   atol=TOL, rtol=0)


def test_weight_transfer_is_strict():
    tree = tr.to_asc_jax_tree(tr.cp_mobile())
    with pytest.raises(KeyError):  # a 3x3-only tree has no 1x1 / 3x1 / 1x3 branches
        tr.load_asc_jax_tree(tr.rep_mobile(), tree)
    tree["stem"][0]["conv"]["kernel"] = np.zeros((5, 5, 1, 8), np.float32)
    with pytest.raises(ValueError):
        tr.load_asc_jax_tree(tr.cp_mobile(), tree)


def test_frontend_matches_log_mel():
    wave = waves(3)
    expected = np.asarray(jax.jit(log_mel)(wave))
    with torch.no_grad():
        got = tr.LogMel()(torch.from_numpy(wave)).numpy()
    assert got.shape == expected.shape == (3, 256, 63)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_freq_mask_draws_one_band_that_asc_jax_applies_identically():
    mel = torch.randn(64, 256, 8)
    masked = tr.freq_mask(mel, 48, generator=torch.Generator().manual_seed(0))
    hit = (masked == 0).all(dim=-1).numpy()  # (B, n_mels): masked bins (randn is never 0)
    starts, widths = hit.argmax(axis=1), hit.sum(axis=1)
    for row, s, w in zip(hit, starts, widths):  # one contiguous band, 0 <= width < 48
        assert w < 48 and row[s:s + w].all()
    assert widths.max() > 30 and (widths > 0).all()  # 64 draws of floor(U[0, 48))
    params = {"start": starts, "width": widths, "n_mels": np.full(64, 256)}
    np.testing.assert_array_equal(np.asarray(FreqMaskConfig().apply(mel.numpy(), params)), masked.numpy())


def test_one_adam_step_matches():
    """The asc_jax train step (steps.make_train_step, augmentation off) and `TrainStep`: same
    loss, same BN statistics, same Adam update from the same weights and waveforms."""
    lr = 1e-3
    torch.manual_seed(0)
    reference = randomized(tr.rep_mobile(**SMALL), seed=1)
    model = as_asc_jax("rep_mobile", reference, conv_lowering="xla", **SMALL)
    before = tr.to_asc_jax_tree(reference)

    tx = optax.adam(lr)
    graphdef, state = create_train_state(model, tx)
    step = steps.make_train_step(graphdef, tx, logmel(MelConfig()),
                                 AugmentConfig(roll=None, freq_mask=None, mixstyle=None),
                                 steps.classification_loss, jax.random.key(0))
    batch = {"audio": waves(4, seed=2), "label": np.array([0, 3, 7, 9], np.int32)}
    state, metrics = step.lower(state, batch).compile(FAST_COMPILE)(state, batch)

    counts = bn_counts(reference)
    torch_step = tr.TrainStep(reference, lr, mask_param=None)
    loss = torch_step(torch.from_numpy(batch["audio"]), torch.from_numpy(batch["label"]).long())
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)

    old, after = flatten(before), flatten(tr.to_asc_jax_tree(reference))
    params = flatten(nnx.State(state.params).to_pure_dict())
    stats = flatten(nnx.State(state.batch_stats).to_pure_dict())
    assert set(params) | set(stats) == set(after)
    grads = {path: p.grad.numpy() for path, p, _ in tr.weight_leaves(reference) if path in params}
    checked = 0
    for path, value in params.items():
        got, want = np.asarray(value) - old[path], after[path] - old[path]
        # Adam's first update is lr * g / (|g| + eps), i.e. +-lr wherever the gradient is above
        # float noise. Kernels feeding a train-mode BN are scale-invariant, their gradient is
        # rounding noise in some directions: only well-determined gradients must agree.
        g = np.transpose(grads[path], (2, 3, 1, 0)) if grads[path].ndim == 4 else grads[path]
        sure = np.abs(g) > 1e-3 * np.abs(g).max()
        checked += sure.sum()
        np.testing.assert_allclose(got[sure], want[sure], atol=2e-3 * lr, rtol=0, err_msg=str(path))
    assert checked > 0.7 * sum(v.size for v in params.values())
    momentum = 1 - BN_MOMENTUM  # torch's momentum
    for path, value in stats.items():
        want = after[path]
        if path[-1] == "var":
            # torch updates running_var with the unbiased batch variance, flax with the biased
            # one: undo Bessel's correction (n values per channel entered that BN).
            n = counts[path[:-1]]
            batch_var = (want - (1 - momentum) * old[path]) / momentum * (n - 1) / n
            want = (1 - momentum) * old[path] + momentum * batch_var
        np.testing.assert_allclose(np.asarray(value), want, atol=1e-5, rtol=1e-4, err_msg=str(path))


def bn_counts(model):
    """{asc_jax path of a BN: values per channel in its latest input}, kept up to date by hooks."""
    counts = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            path = tuple(int(p) if p.isdigit() else p for p in name.split("."))
            m.register_forward_hook(lambda mod, args, out, path=path: counts.__setitem__(
                path, args[0].numel() // args[0].shape[1]))
    return counts
