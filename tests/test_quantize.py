"""Int8 quantization: numerics, calibration, PTQ vs float, QAT, persistence, memory, evaluation.

The helpers at the top (tiny deploy model, small frontend, generated audio, chunked jitted
forward passes) are shared with test_export.py and test_predict.py.
"""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from asc_jax import complexity
from asc_jax import quantize as Q
from asc_jax.audio.augment import AugmentConfig
from asc_jax.audio.features import MelConfig, log_mel
from asc_jax.audio.frontends import logmel
from asc_jax.checkpoint import load_model, save_model
from asc_jax.data import tau
from asc_jax.models import build_model
from asc_jax.train import steps
from asc_jax.train.state import create_train_state

# A small frontend and model keep compile times low; the code paths are those of the defaults.
MEL = MelConfig(sample_rate=16_000, n_fft=1024, win_length=800, hop_length=320, n_mels=64)
TINY = {"base_channels": 16, "n_blocks": [1, 1, 1], "strides": {"b2": [2, 2], "b3": [2, 1]}}
# Jitted helpers run fixed-size chunks: one XLA compilation per function and model structure.
CHUNK = 16


def chunked(fn, x: np.ndarray) -> np.ndarray:
    """fn over x in zero-padded chunks of CHUNK rows."""
    x = np.asarray(x, np.float32)
    padded = np.concatenate([x, np.zeros(((-len(x)) % CHUNK, *x.shape[1:]), x.dtype)])
    return np.concatenate([np.asarray(fn(padded[i:i + CHUNK])) for i in range(0, len(padded), CHUNK)])[:len(x)]


@jax.jit
def _log_mel(audio):
    return log_mel(audio, MEL)


def mels_of(audio: np.ndarray) -> np.ndarray:
    return chunked(_log_mel, audio)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    logits, aux = nnx.merge(graphdef, state)(x, train=False)
    return logits, aux["pre_logits"]


def logits_fn(model):
    graphdef, state = nnx.split(model)
    return lambda x: chunked(lambda c: _forward(graphdef, state, c)[0], x)


def save_tiny_deploy(directory, seed: int = 2) -> nnx.Module:
    """`tiny_deploy(seed)` saved as a float deploy model in `directory`; returns the model."""
    model = tiny_deploy(seed)
    save_model(directory, model, name="rep_mobile", options=TINY, deploy=True,
               mel=dataclasses.asdict(MEL), class_names=list(tau.CLASSES))
    return model


def tiny_deploy(seed: int = 0, options: dict = TINY) -> nnx.Module:
    """A random deploy-form (fused, BN-free) Rep-Mobile standing in for a trained one.

    A fresh network's logits hardly depend on its input (one class wins everywhere), which would
    make agreement and closeness tests vacuous; so the head is shifted and scaled so that on
    generated scenes its logits are centred per class with a between-clip spread of about 2.
    Weights are drawn in NumPy: jitting the initialisers costs ~17 s of XLA compilation on 2
    cores, running them eagerly more. The first conv's kernels are zero-mean, as a trained stem's
    roughly are, so the log-mel's large constant offset does not swamp everything after it.
    """
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: build_model("rep_mobile", deploy=True, rngs=nnx.Rngs(0), **options)))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        if keys[-1] != "kernel":  # biases, GRN gamma/beta
            return rng.normal(0, 0.1, x.shape).astype(np.float32)
        kernel = rng.normal(0, np.sqrt(2 / np.prod(x.shape[:-1])), x.shape)  # He over the fan-in
        if keys[:2] == ["stem", "0"]:
            kernel -= kernel.mean(axis=(0, 1, 2), keepdims=True)
        return kernel.astype(np.float32)

    model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))
    state = nnx.state(model)
    pre = chunked(lambda c: _forward(graphdef, state, c)[1], mels_of(scene_audio(32, 1000 + seed)))
    head = model.head.conv
    logits = pre @ np.asarray(head.kernel[...])[0, 0]
    gain = 2.0 / logits.std(0).mean()
    head.kernel.value = head.kernel[...] * gain
    head.bias.value = jnp.asarray(-logits.mean(0) * gain)
    return model


def scene_audio(n: int, seed: int, sr: int = MEL.sample_rate, seconds: float = 1.0) -> np.ndarray:
    """(n, samples) float32 'scenes': coloured noise plus tones at levels spanning 30 dB."""
    rng = np.random.default_rng(seed)
    length = round(sr * seconds)
    t = np.arange(length) / sr
    out = np.empty((n, length), np.float32)
    for i in range(n):
        k = int(rng.integers(1, 40))
        noise = np.convolve(rng.normal(size=length), np.ones(k) / k, mode="same")
        tones = sum(rng.uniform(0, 1) * np.sin(2 * np.pi * rng.uniform(50, sr / 3) * t) for _ in range(3))
        out[i] = 10 ** rng.uniform(-1.5, 0) * 0.3 * (noise + tones)
    return out


@pytest.fixture(scope="module")
def setup():
    model = tiny_deploy(0)
    mels = mels_of(scene_audio(96, 1))
    calib, test = mels[:48], mels[48:]
    ranges = Q.calibrate(model, calib, batch_size=CHUNK)
    qmodel = Q.quantize(model, ranges)
    return {"model": model, "calib": calib, "test": test, "ranges": ranges, "qmodel": qmodel,
            "float_logits": logits_fn(model)(test), "int8_logits": logits_fn(qmodel)(test)}


# --- numerics ------------------------------------------------------------------------------------

def test_weight_codes_are_per_channel_symmetric_int8():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 8, 6)) * np.array([1e-3, 0.1, 1.0, 10.0, 3.0, 0.0])  # channel 5 pruned
    codes, scale = Q.quantize_weight(jnp.asarray(kernel, jnp.float32))
    codes, scale = np.asarray(codes), np.asarray(scale)
    assert codes.dtype == np.int8 and scale.shape == (6,)
    # absmax scaling: every non-zero channel uses the full code range, never -128.
    np.testing.assert_array_equal(np.abs(codes).reshape(-1, 6).max(0), [127, 127, 127, 127, 127, 0])
    assert codes.min() >= -127
    np.testing.assert_allclose(scale[:5], np.abs(kernel).reshape(-1, 6).max(0)[:5] / 127, rtol=1e-6)
    assert scale[5] == 1.0
    # Rounding error is at most half a step of the channel's own scale.
    err = np.abs(np.asarray(Q.dequantize_weight(codes, scale)) - kernel)
    assert np.all(err <= scale / 2 * (1 + 1e-5) + 1e-12)


def test_fake_quant_activation_grid_and_straight_through_gradient():
    act_range = jnp.array([-1.0, 3.0])
    x = jnp.linspace(-2.0, 4.0, 6001)
    y = Q.fake_quant_act(x, act_range)
    scale, zero_point = Q.act_qparams(act_range)
    assert float(scale) == pytest.approx(4.0 / 255)
    assert float(Q.fake_quant_act(jnp.zeros(()), act_range)) == 0.0  # zero padding stays exact
    inside = (x >= -1.0) & (x <= 3.0)
    assert float(jnp.max(jnp.abs(y - x)[inside])) <= float(scale) / 2 + 1e-6
    assert len(np.unique(np.asarray(y))) == 256  # the whole int8 code range is used
    lo, hi = (-128 - zero_point) * scale, (127 - zero_point) * scale
    np.testing.assert_allclose(np.asarray(y)[np.asarray(x) < -1.1], lo, rtol=1e-6)  # clipped
    np.testing.assert_allclose(np.asarray(y)[np.asarray(x) > 3.1], hi, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(Q.fake_quant_act(x, act_range))))(x)
    expected = ((x >= lo) & (x <= hi)).astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(expected))
    # A non-negative range (conv inputs after ReLU) gets all 256 levels on [0, hi].
    relu_scale, relu_zero = Q.act_qparams(jnp.array([0.0, 2.55]))
    assert float(relu_scale) == pytest.approx(0.01) and float(relu_zero) == -128


def test_fake_quant_weight_is_straight_through():
    rng = np.random.default_rng(0)
    w, c = (jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32) for _ in range(2))
    value, grad = jax.jit(jax.value_and_grad(lambda w: jnp.sum(Q.fake_quant_weight(w, 8) * c)))(w)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(c))
    expected = jnp.sum(Q.dequantize_weight(*Q.quantize_weight(w, 8)) * c)
    assert float(value) == pytest.approx(float(expected), rel=1e-6)


def test_conv_spec_lowerings_agree():
    """A quantized conv computes as the layer it replaces lowers ("taps": shifted slices, "matmul":
    1x1 as a matmul, "conv": XLA); all must compute the same conv, stride included."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 6)), jnp.float32)
    taps = Q.ConvSpec("taps", (2, 1), ((1, 1), (1, 1)), 6)
    grouped = dataclasses.replace(taps, kind="conv")
    np.testing.assert_allclose(jax.jit(taps.apply)(x, kernel), jax.jit(grouped.apply)(x, kernel), atol=1e-5)
    kernel = jnp.asarray(rng.normal(size=(1, 1, 6, 4)), jnp.float32)
    matmul = Q.ConvSpec("matmul", (1, 1), ((0, 0), (0, 0)), 1)
    dense = dataclasses.replace(matmul, kind="conv")
    np.testing.assert_allclose(jax.jit(matmul.apply)(x, kernel), jax.jit(dense.apply)(x, kernel), atol=1e-5)


def test_quantized_model_follows_the_conv_lowering_option(setup, monkeypatch):
    """The same int8 model under both conv_lowering values: specs follow the option (not the
    backend), and the logits agree up to float summation order (measured: identical here, the
    float models differ by 3e-6; the tolerance leaves room for a rare rounding flip of a
    fake-quantized conv input, one quantization step, on logits of spread ~2)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    model = setup["model"]
    xla = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: build_model(
        "rep_mobile", deploy=True, rngs=nnx.Rngs(0), conv_lowering="xla", **TINY))), nnx.state(model))
    q_xla = Q.quantize(xla, setup["ranges"])
    kinds = lambda m: {c.spec.kind for c in Q.conv_layers(m).values()}
    assert kinds(setup["qmodel"]) == {"taps", "matmul", "conv"} and kinds(q_xla) == {"conv"}
    np.testing.assert_allclose(logits_fn(q_xla)(setup["test"]), setup["int8_logits"], atol=1e-3)


def test_config_validation():
    with pytest.raises(ValueError, match="weight_bits"):
        Q.QuantConfig(weight_bits=16)
    with pytest.raises(ValueError, match="calibration"):
        Q.QuantConfig(calibration="kl")


# --- memory --------------------------------------------------------------------------------------

def test_memory_report_pinned_for_rep_mobile():
    """124,862 fused parameters (2,090 conv biases, 12 GRN scalars) fit 128,000 B at int8."""
    deploy = nnx.eval_shape(lambda: build_model("rep_mobile", deploy=True, rngs=nnx.Rngs(0)))
    int8 = nnx.eval_shape(lambda: Q.quantize(
        build_model("rep_mobile", deploy=True, rngs=nnx.Rngs(0)),
        {name: jnp.zeros(2) for name in Q.conv_layers(deploy)}))
    for model in (deploy, int8):
        report = complexity.memory_report(model)
        assert (report.params, report.weight_params, report.bias_params, report.other_params) == (
            124_862, 122_760, 2_090, 12)
        assert (report.weight_scales, report.act_ranges) == (2_090, 21)
        assert report.int8_bytes == 124_862 and report.fits_dcase
        assert report.overhead_bytes == 2_090 * 4 + 21 * 8 == 8_528
        assert report.stored_bytes == 122_760 + 4 * (2_090 + 12) + 8_528 == 139_696
    weight_only = complexity.memory_report(deploy, Q.QuantConfig(act_bits=None))
    assert weight_only.overhead_bytes == 8_360

    assert "fits" in complexity.memory_report(int8).table()


# --- post-training quantization ------------------------------------------------------------------

def test_calibration_ranges_are_conv_input_extremes(setup):
    model, calib, ranges = setup["model"], setup["calib"], setup["ranges"]
    assert set(ranges) == set(Q.conv_layers(model))
    # The first conv sees the log-mel itself.
    np.testing.assert_allclose(ranges["stem/0/conv"], [min(calib.min(), 0), max(calib.max(), 0)], rtol=1e-6)
    assert all(r[0] == 0.0 for name, r in ranges.items() if name != "stem/0/conv")  # inputs after ReLU
    # Ranges over several batches are the extremes of the per-batch ranges.
    first, rest = Q.calibrate(model, calib[:CHUNK]), Q.calibrate(model, calib[CHUNK:], batch_size=CHUNK)
    for name in ranges:
        np.testing.assert_array_equal(ranges[name], [min(first[name][0], rest[name][0]),
                                                     max(first[name][1], rest[name][1])])
    # (a few clips: sorting every conv input is slow on CPU)
    percentile = Q.calibrate(model, calib[:4], Q.QuantConfig(calibration="percentile", percentile=99.0),
                             batch_size=4)
    assert all(ranges[n][0] <= percentile[n][0] <= percentile[n][1] < ranges[n][1] for n in ranges)


def test_int8_tree_really_holds_int8(setup):
    qmodel = setup["qmodel"]
    codes = jax.tree.leaves(nnx.state(qmodel, Q.QuantWeight))
    assert len(codes) == len(Q.conv_layers(qmodel)) == 12
    assert all(c.dtype == jnp.int8 for c in codes)
    # No float conv kernel is left: the Params are the biases and GRN's scalars only.
    report = complexity.memory_report(qmodel)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(qmodel, nnx.Param)))
    assert n_params == report.bias_params + report.other_params
    assert report.params == complexity.memory_report(setup["model"]).params
    # The DCASE counts of the int8 form are the float form's: its int8 codes are its weights,
    # and each quantized conv costs what the conv did (it once counted as a 1-output layer).
    shape = (1, *setup["calib"].shape[1:])
    float_report, int8_report = complexity.report(setup["model"], shape), complexity.report(qmodel, shape)
    assert (int8_report.params, int8_report.macs) == (float_report.params, float_report.macs)
    assert int8_report.params == report.params and int8_report.macs > 50 * int8_report.params


def _rms_error_over_spread(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.sqrt(np.mean((other - reference) ** 2)) / reference.std(0).mean())


def test_int8_logits_close_to_float(setup):
    """Tolerance, relative to the between-clip spread of the float logits (what decides the
    prediction): rms error <= 25%, top-1 agreement >= 85%. A random network is a hard case: the
    input-dependent part of its activations is a small fraction of them, so 8-bit rounding of
    weights and inputs shows up as 6-13% rms of the spread (seeds 0-3; weight rounding alone is
    4-12%), against >100% for a wrong scale, axis or zero point."""
    f, q = setup["float_logits"], setup["int8_logits"]
    assert len(set(f.argmax(-1))) >= 4  # predictions depend on the input
    assert 0 < _rms_error_over_spread(f, q) <= 0.25
    assert np.mean(f.argmax(-1) == q.argmax(-1)) >= 0.85


def test_weight_only_quantization_leaves_inputs_float(setup):
    wq = Q.quantize(setup["model"], None, Q.QuantConfig(act_bits=None))
    assert all(conv.act_range is None for conv in Q.conv_layers(wq).values())
    assert 0 < _rms_error_over_spread(setup["float_logits"], logits_fn(wq)(setup["test"])) <= 0.25


def test_quantize_rejects_bn_models_and_missing_ranges(setup):
    with pytest.raises(ValueError, match="BatchNorm"):
        Q.quantize(nnx.eval_shape(lambda: build_model("rep_mobile", rngs=nnx.Rngs(0), **TINY)), {})
    with pytest.raises(ValueError, match="no calibrated activation range"):
        Q.quantize(setup["model"], {})
    with pytest.raises(ValueError, match="already quantized"):
        Q.quantize(setup["qmodel"], setup["ranges"])
    with pytest.raises(FloatingPointError):
        Q.calibrate(setup["model"], np.full((2, 64, 51), np.nan, np.float32))


# --- quantization-aware finetuning ---------------------------------------------------------------

def test_qat_forward_equals_int8_and_finetuning_moves_kernels_only(setup):
    model, ranges, test = setup["model"], setup["ranges"], setup["test"]
    qat = Q.prepare_qat(model, ranges)
    # Same weights and ranges: the fake-quantized forward is the int8 model's forward.
    np.testing.assert_allclose(logits_fn(qat)(test), setup["int8_logits"], rtol=0, atol=1e-5)

    before = {name: np.asarray(conv.kernel[...]) for name, conv in Q.conv_layers(qat).items()}
    ranges_before = {name: np.asarray(conv.act_range[...]) for name, conv in Q.conv_layers(qat).items()}
    tx = optax.sgd(1e-4)
    graphdef, state = create_train_state(qat, tx)
    no_aug = AugmentConfig(roll=None, freq_mask=None, mixstyle=None)
    step = steps.make_train_step(graphdef, tx, logmel(MEL), no_aug, steps.classification_loss, jax.random.key(0))
    batch = {"audio": scene_audio(8, 7), "label": np.arange(8, dtype=np.int32) % 10}
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert float(metrics["grad_norm"]) > 0
    tuned = nnx.merge(graphdef, state.params, state.batch_stats)
    after = Q.conv_layers(tuned)
    assert any(not np.allclose(before[n], after[n].kernel[...]) for n in before)
    for name in before:  # ranges are not Params: the step leaves them alone
        np.testing.assert_array_equal(ranges_before[name], after[name].act_range[...])

    int8 = Q.convert_qat(tuned)
    np.testing.assert_allclose(logits_fn(int8)(test), logits_fn(tuned)(test), rtol=0, atol=1e-5)
    widened = Q.set_ranges(int8, {name: 2 * r for name, r in ranges.items()})
    np.testing.assert_array_equal(Q.conv_layers(widened)["head/conv"].act_range[...], 2 * ranges["head/conv"])
    with pytest.raises(ValueError, match="not a FakeQuantConv"):
        Q.convert_qat(model)


def test_finetune_qat_trains_through_the_models_own_frontend(tmp_path, monkeypatch):
    """QAT takes the saved model's Frontend, whatever it is: here PaSST's (32 kHz, its own
    normalisation), with the frequency mask value (log-mel units) moved into its feature units."""
    from asc_jax.audio.frontends import FRONTENDS
    from asc_jax.data import sources
    from asc_jax.data.synthetic import ensure_dataset

    frontend = FRONTENDS.get("passt")({"n_mels": 64})
    root = ensure_dataset(tmp_path / "data", n_train_per_class_device=1, n_test_per_class_device=1,
                          clips_per_recording=1)
    train = sources.load_split_source(root, "100", sr=frontend.sample_rate).source
    model = tiny_deploy(0)
    ranges = Q.calibrate(model, jax.jit(frontend.features)(scene_audio(16, 3, sr=frontend.sample_rate)))
    seen = []

    def recording(graphdef, tx, step_frontend, aug_cfg, *args, **kwargs):
        seen.append((step_frontend, aug_cfg))
        return make_train_step(graphdef, tx, step_frontend, aug_cfg, *args, **kwargs)

    make_train_step = steps.make_train_step
    monkeypatch.setattr(steps, "make_train_step", recording)
    qat = Q.QATConfig(epochs=1, batch_size=16, augment=AugmentConfig(mixstyle=None))
    tuned, history = Q.finetune_qat(model, ranges, train, frontend, qat=qat)
    [(step_frontend, aug_cfg)] = seen
    assert step_frontend is frontend and aug_cfg.roll is None  # the roll ran on the host
    assert aug_cfg.freq_mask.mask_value == pytest.approx(frontend.from_log_mel(qat.augment.freq_mask.mask_value))
    assert aug_cfg.freq_mask.mask_value != qat.augment.freq_mask.mask_value
    assert history["steps"] == len(train) // 16 and np.isfinite(history["loss"]).all()
    assert all(isinstance(conv, Q.FakeQuantConv) for conv in Q.conv_layers(tuned).values())
    with pytest.raises(ValueError, match="'passt' frontend expects 32000 Hz"):
        Q.finetune_qat(model, ranges, sources.load_split_source(root, "100", sr=16_000).source, frontend, qat=qat)


# --- persistence and evaluation ------------------------------------------------------------------

def test_save_and_load_int8_model(setup, tmp_path):
    spec = {"model": {"name": "rep_mobile", "options": TINY, "deploy": True},
            "mel": dataclasses.asdict(MEL), "class_names": list(tau.CLASSES)}
    out = Q.save_quantized(tmp_path / "int8", setup["qmodel"], spec, Q.QuantConfig())
    loaded, loaded_spec = load_model(out)
    assert loaded_spec["quantization"]["memory"]["params"] == complexity.memory_report(setup["qmodel"]).params
    assert all(c.dtype == jnp.int8 for c in jax.tree.leaves(nnx.state(loaded, Q.QuantWeight)))
    np.testing.assert_array_equal(logits_fn(loaded)(setup["test"]), setup["int8_logits"])
    with pytest.raises(ValueError, match="int8 model"):
        Q.save_quantized(tmp_path / "bad", setup["model"], spec, Q.QuantConfig())
    save_model(tmp_path / "float", setup["model"], name="rep_mobile", options=TINY, deploy=True)
    with pytest.raises(ValueError, match="float model"):
        load_model(tmp_path / "float", form="int8")


def test_evaluate_quantized_cli_on_generated_dataset(setup, tmp_path, capsys):
    from asc_jax.data.synthetic import ensure_dataset

    # One clip per (class, device) is enough here: 60 training, 90 test clips (~3 s to render).
    root = ensure_dataset(tmp_path / "data", n_train_per_class_device=1, n_test_per_class_device=1,
                          clips_per_recording=1)
    save_model(tmp_path / "deploy", setup["model"], name="rep_mobile", options=TINY, deploy=True,
               mel=dataclasses.asdict(MEL), class_names=list(tau.CLASSES))
    assert Q.main(["--checkpoint", str(tmp_path / "deploy"), "--data-root", str(root), "--n-calib", "16",
                   "--batch-size", str(CHUNK), "--out", str(tmp_path / "int8")]) == 0
    printed = capsys.readouterr().out
    assert "DCASE memory at int8" in printed and "top-1 agreement" in printed
    result = json.loads((tmp_path / "int8" / "quantization.json").read_text())
    assert result["float"]["n"] == result["int8"]["n"] == 90 and result["n_calib"] == 16
    # Agreement and accuracies are consistent with each other, and the saved model says so too.
    assert abs(result["float"]["accuracy"] - result["int8"]["accuracy"]) <= 1 - result["top1_agreement"] + 1e-9
    assert result["top1_agreement"] >= 0.75  # a random model on 90 clips (see test_int8_logits_close_to_float)
    assert result["memory"] == complexity.memory_report(setup["qmodel"]).as_dict()
    spec = json.loads((tmp_path / "int8" / "model.json").read_text())
    assert spec["quant_eval"]["int8_accuracy"] == result["int8"]["accuracy"]
    assert spec["quantization"]["config"] == dataclasses.asdict(Q.QuantConfig())


def test_calibration_clips_seeded_draw_and_device_filter(tmp_path):
    """One draw for the plain CLI and the device-specific members: seeded, in meta.csv order,
    only the asked device's clips, and a device the split lacks is named."""
    from asc_jax.data import synthetic
    from asc_jax.quantize.cli import calibration_clips
    root = synthetic.ensure_dataset(tmp_path / "d", workers=1, n_train_per_class_device=1, n_test_per_class_device=1,
                                    clips_per_recording=1, train_locations_per_class=1, test_locations_per_class=1,
                                    sample_rate=16000)
    every = tau.load_split(root, "100")
    picked = calibration_clips(root, "100", n=12, seed=3)
    assert picked == calibration_clips(root, "100", n=12, seed=3) != calibration_clips(root, "100", n=12, seed=4)
    assert len(picked) == 12 and [every.index(c) for c in picked] == sorted(every.index(c) for c in picked)
    only_b = calibration_clips(root, "100", n=100, seed=0, device="b")
    assert {c.device for c in only_b} == {"b"} and len(only_b) == len([c for c in every if c.device == "b"])
    with pytest.raises(ValueError, match="no clip of device 's5' in split '100'"):
        calibration_clips(root, "100", device="s5")
