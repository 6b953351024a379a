"""A converted PyTorch checkpoint is an ordinary asc_jax model: predict, quantize, export,
pruning and `model.init_from` take it as they take one trained here.

One narrow DCASE2024 baseline (random weights and BN statistics, the PyTorch reference of
tests/test_convert_cnn.py) goes through convert_weights.py with its default frontend
("dcase2024": torchaudio's MelSpectrogram behind torchaudio's resampler).
"""
import jax
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

import convert_weights
from asc_jax import export, inference, prune
from asc_jax.checkpoint import load_model, read_spec
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig
from asc_jax.data import synthetic, tau
from asc_jax.models.rep_mobile import RepMobile
from asc_jax.predict import predict_files
from asc_jax.quantize import cli as quantize_cli
from asc_jax.train import train_and_evaluate

torch = pytest.importorskip("torch")
from tests.test_convert_cnn import dcase2024_baseline, lightning_ckpt, randomized  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(the converted workdir, its PyTorch reference)."""
    tmp = tmp_path_factory.mktemp("converted")
    reference = randomized(dcase2024_baseline(base_channels=16, n_blocks=(2, 1, 1)), seed=3)
    ckpt = lightning_ckpt(reference, tmp / "baseline.ckpt")
    convert_weights.main(["--arch", "dcase2024_baseline", "--torch-ckpt", str(ckpt), "--out", str(tmp / "out"),
                          "--classes", ",".join(tau.CLASSES)])
    return tmp / "out", reference


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tau"
    synthetic.ensure_dataset(root, n_train_per_class_device=2, n_test_per_class_device=1, clips_per_recording=1)
    return root


def test_predict_uses_the_recorded_frontend_and_resampler(converted, tmp_path):
    out, reference = converted
    wave = (0.1 * np.random.default_rng(0).standard_normal(44100)).astype(np.float32)
    sf.write(tmp_path / "clip-a.wav", wave, 44100, subtype="FLOAT")
    probs = predict_files(out, [tmp_path / "clip-a.wav"]).probs
    # What the original computes: torchaudio's resampler, its MelSpectrogram, the network.
    saved = inference.load(out)
    audio = tau.load_audio(tmp_path / "clip-a.wav", 32000, expected_sr=None, resampler="torchaudio")
    features = np.array(jax.jit(saved.frontend.features)(audio[None]))
    with torch.no_grad():
        expected = torch.softmax(reference(torch.from_numpy(features)[:, None]), -1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_quantize_and_export_take_the_converted_deploy_model(converted, data, tmp_path):
    out, _ = converted
    assert quantize_cli.main(["--checkpoint", str(out / "deploy"), "--data-root", str(data), "--calib-split",
                              "100", "--n-calib", "16", "--batch-size", "16", "--out", str(tmp_path / "int8")]) == 0
    int8 = read_spec(tmp_path / "int8")
    assert int8["frontend"]["name"] == "dcase2024" and int8["class_names"] == list(tau.CLASSES)
    assert export.main(["--checkpoint", str(tmp_path / "int8"), "--out", str(tmp_path / "export")]) == 0
    assert list((tmp_path / "export").glob("*"))


def test_pruning_slices_the_converted_training_form(converted):
    out, _ = converted
    model, spec = load_model(out / "model")
    schedule = prune.plan(prune.PruneConfig(sparsity=0.5, round_to=4), model)
    masks = schedule.masks(0, nnx.state(model, nnx.Param))
    sliced = prune.slice_model(model, schedule.groups, masks,
                               lambda cfg: RepMobile(cfg, rngs=nnx.Rngs(0)), input_shape=(1, 256, 65))
    x = np.random.default_rng(1).normal(size=(2, 256, 65)).astype(np.float32)
    assert np.isfinite(np.asarray(sliced.model(x)[0])).all()
    assert sum(g.size for g in sliced.groups) < sum(g.size for g in schedule.groups)


@pytest.mark.slow
def test_init_from_trains_on_from_the_converted_weights(converted, data, tmp_path):
    """train.py with the converted options and frontend: at lr 0 the trained weights are the
    converted ones (strict init_from), and evaluation runs on the dcase2024 frontend."""
    out, _ = converted
    spec = read_spec(out / "model")
    config = Config(
        seed=0, frontend="dcase2024", eval_every_epochs=100,
        data=DataConfig(root=str(data), generate=False),
        model=ModelConfig(name="dcase2024_baseline", options=spec["model"]["options"],
                          init_from=str(out / "model")),
        optim=OptimConfig(lr=0.0, epochs=1, warmup_epochs=0, batch_size=40))
    summary = train_and_evaluate(config, tmp_path / "run")
    assert summary["finished"] and summary["step"] == 3  # 120 clips, batch 40
    trained, _ = load_model(tmp_path / "run" / "model")
    start, _ = load_model(out / "model")
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(trained, nnx.Param)),
                                 nnx.to_flat_state(nnx.state(start, nnx.Param))):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))
    assert read_spec(tmp_path / "run" / "model")["frontend"]["name"] == "dcase2024"
