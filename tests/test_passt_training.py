"""A PaSST trained by train.py on its own frontend: it learns, saves its frontend, resumes exactly,
and its patchout is a training-only randomness.

The frontend is a config choice (`Config.frontend="passt"`, settings in `passt_frontend`): the
train step, evaluation and the saved model.json all use PaSST's log-mel, so the saved model
predicts (`inference.load`) with no frontend passed by hand.
"""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from asc_jax import inference
from asc_jax.audio import frontends
from asc_jax.audio.augment import AugmentConfig, FreqMaskConfig
from asc_jax.checkpoint import named_leaves, read_spec
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig
from asc_jax.data import sources, synthetic
from asc_jax.train import train_and_evaluate

# A tiny PaSST (one block, 32-wide tokens) sized for 1-s clips: 100 frames of 128 PaSST mels give
# a 12 x 9 patch grid; two of the 12 frequency rows are patched out in training.
TINY_PASST = {"n_classes": 10, "embed_dim": 32, "depth": 1, "num_heads": 2, "n_frames": 100,
              "s_patchout_f": 2}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tau"
    synthetic.ensure_dataset(root, n_train_per_class_device=10, n_test_per_class_device=5)  # 600 / 450
    return root


def _config(root, **kw) -> Config:
    return Config(
        seed=0, frontend="passt",
        data=DataConfig(root=str(root), generate=False),
        # The band is drawn on PaSST's 128 bins; its value is moved into PaSST's units.
        augment=AugmentConfig(freq_mask=FreqMaskConfig(mask_param=24, n_mels=128)),
        model=ModelConfig(name="passt", options=TINY_PASST),
        optim=OptimConfig(lr=3e-3, epochs=3, warmup_epochs=1, batch_size=32, weight_decay=1e-4),
        eval_every_epochs=3, log_every_steps=9, **kw)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("passt_run")
    return workdir, train_and_evaluate(_config(data_root), workdir)


@pytest.mark.slow
def test_passt_learns_and_saves_its_frontend(straight, data_root):
    workdir, summary = straight
    assert summary["finished"] and summary["step"] == 3 * (600 // 32)
    # Chance is 0.10 on 10 balanced classes.
    assert summary["eval"]["macro_accuracy"] > 0.18, summary["eval"]["macro_accuracy"]
    # No fused form: the model deploys as trained, saved once (a workdir resolves to model/).
    assert not (workdir / "deploy").exists() and summary["deploy_eval"] == summary["eval"]
    spec = read_spec(workdir / "model")
    expected = frontends.of_config(_config(data_root))
    assert spec["frontend"] == expected.describe() and "mel" not in spec
    rebuilt = frontends.frontend_of(spec, workdir / "model")
    assert (rebuilt.name, rebuilt.options, rebuilt.sample_rate, rebuilt.n_mels) == (
        expected.name, expected.options, expected.sample_rate, expected.n_mels)

    # The saved model predicts with its own frontend; inference is deterministic (no patchout)
    # and reproduces the run's own evaluation.
    saved = inference.load(workdir / "model")
    assert inference.load(workdir).spec == saved.spec  # a workdir resolves to its model/
    with pytest.raises(FileNotFoundError, match=r"no model.json there nor under deploy/ or model/"):
        inference.load(workdir / "eval")
    test = sources.load_split_source(data_root, "test", sr=saved.frontend.sample_rate).source
    logits = inference.predict(saved.fn, test, 64)
    np.testing.assert_array_equal(logits, inference.predict(saved.fn, test, 64))
    labels = np.array([c.label for c in test.clips])
    assert np.mean(np.argmax(logits, -1) == labels) == pytest.approx(summary["eval"]["accuracy"], abs=1e-9)


def test_patchout_is_random_in_training_only():
    from asc_jax.models import build_model

    model = build_model("passt", rngs=nnx.Rngs(params=0, default=1), **TINY_PASST)
    x = jax.random.normal(jax.random.key(0), (2, 128, 100))
    np.testing.assert_array_equal(np.asarray(model(x)[0]), np.asarray(model(x)[0]))
    a, b = (np.asarray(model(x, train=True)[0]) for _ in range(2))
    assert not np.allclose(a, b)  # each call drops other frequency rows
    assert model(x, train=True)[1]["tokens"].shape[1] == 2 + (12 - 2) * 9  # 2 of 12 rows dropped


@pytest.mark.slow
def test_passt_run_resumes_exactly(straight, data_root, tmp_path):
    """Stopped half way and resumed, the run ends with the uninterrupted run's weights: the
    patchout RNG counters are part of the checkpointed state."""
    workdir, _ = straight
    partial = train_and_evaluate(_config(data_root, max_steps=27), tmp_path)
    assert not partial["finished"] and partial["step"] == 27
    resumed = train_and_evaluate(_config(data_root), tmp_path)
    assert resumed["finished"]
    a, b = (dict(named_leaves(nnx.state(inference.load(d / "model").model, nnx.Param)))
            for d in (workdir, tmp_path))
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_unknown_frontend_is_refused():
    with pytest.raises(ValueError, match=r"unknown frontend 'pst'; known: \['cpjku', 'dcase2024', 'logmel', 'passt'\]"):
        dataclasses.replace(Config(), frontend="pst")


@pytest.mark.slow
def test_init_from_a_model_of_another_frontend_is_refused(straight, data_root, tmp_path):
    workdir, _ = straight
    on_student_features = dataclasses.replace(
        _config(data_root), frontend="logmel",
        model=dataclasses.replace(_config(data_root).model, init_from=str(workdir / "model")))
    with pytest.raises(ValueError, match=r"was trained on frontend \{'name': 'passt'.* this run uses \{'name': 'logmel'"):
        train_and_evaluate(on_student_features, tmp_path)


@pytest.mark.slow
def test_a_trained_passt_precomputes_the_logits_it_predicts(straight, data_root, tmp_path):
    """The workdir is a teacher (it resolves to model/, the only saved form): its stored logits,
    computed through its own recorded frontend, are the saved model's predictions."""
    from asc_jax import distill

    workdir, _ = straight
    student = dataclasses.replace(_config(data_root), frontend="logmel", model=ModelConfig(),
                                  augment=AugmentConfig(roll=None, freq_mask=None, mixstyle=None))
    store = distill.precompute(tmp_path / "store", config=student, teachers=[workdir], n_views=1,
                               batch_size=48, progress=False)
    saved = inference.load(workdir / "model")
    train = sources.load_split_source(data_root, "100", sr=saved.frontend.sample_rate).source
    expected = inference.predict(saved.fn, train, 64)
    rows = store.rows([c.filename for c in train.clips])
    np.testing.assert_allclose(store.logits[rows, 0, 0], expected, rtol=1e-5, atol=1e-6)
    assert store.meta["frontend"][store.teacher_names[0]]["name"] == "passt"


def _loss_and_grads(options, x, labels):
    import optax

    from asc_jax.models import build_model

    model = build_model("passt", rngs=nnx.Rngs(params=0, default=1), **{**TINY_PASST, "s_patchout_f": 0,
                                                                          "depth": 2, **options})
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        logits, _ = nnx.merge(graphdef, p, rest)(x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(np.float32), labels).mean(), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


def test_remat_and_bfloat16_compute_options():
    """remat recomputes instead of storing: the same loss, logits and gradients in float32.
    bfloat16 compute stays close to float32 (params and checkpoints are unchanged)."""
    x = jax.random.normal(jax.random.key(0), (4, 128, 100))
    labels = np.array([0, 3, 5, 9])
    ref_loss, ref_logits, ref_grads = _loss_and_grads({}, x, labels)
    loss, logits, grads = _loss_and_grads({"remat": True}, x, labels)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    for (path, a), (_, b) in zip(named_leaves(ref_grads), named_leaves(grads)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7, err_msg=path)
    loss16, logits16, grads16 = _loss_and_grads({"compute_dtype": "bfloat16"}, x, labels)
    assert logits16.dtype == np.float32  # the head runs in float32
    np.testing.assert_allclose(logits16, ref_logits, atol=0.05 * float(np.abs(ref_logits).max()))
    assert abs(float(loss16) - float(ref_loss)) < 0.02 * float(ref_loss)
    assert all(np.isfinite(np.asarray(g)).all() for _, g in named_leaves(grads16))
    with pytest.raises(ValueError, match="compute_dtype"):
        _loss_and_grads({"compute_dtype": "float16"}, x, labels)


def test_out_of_memory_names_the_options_that_reduce_it():
    from asc_jax.train.loop import _explain_out_of_memory

    def step(state, batch):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1G")

    config = _config("D")
    with pytest.raises(MemoryError, match=r"optim.batch_size \(now 32.*remat=True.*bfloat16.*9\.1G"):
        _explain_out_of_memory(step, config)(None, None)

    def other(state, batch):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
        _explain_out_of_memory(other, config)(None, None)
