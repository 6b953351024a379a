"""The one inference path: the frontend + model function of a live, a saved float and a saved int8
model equals the model applied to log_mel, and batched prediction returns every clip once, in
order, for a count that is not a multiple of the batch."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asc_jax import inference, microbatch, parallel
from asc_jax import quantize as Q
from asc_jax.audio.frontends import logmel
from asc_jax.checkpoint import read_spec
from asc_jax.data import sources, tau
from tests.conftest import write_tau_dataset
from tests.test_quantize import MEL, logits_fn, mels_of, save_tiny_deploy, scene_audio

N_CLIPS, BATCH = 7, 3  # 7 = 2 full batches + 1 padded


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    model = save_tiny_deploy(root / "float", seed=4)
    qmodel = Q.post_training_quantize(model, mels_of(scene_audio(8, 22)))
    Q.save_quantized(root / "int8", qmodel, read_spec(root / "float"), Q.QuantConfig())
    # The clips as a TAU-layout dataset, float32 wavs so they read back bit for bit.
    audio = scene_audio(N_CLIPS, 21)
    write_tau_dataset(root / "data", audio, MEL.sample_rate)
    clips = tau.load_split(root / "data", "100")
    source = sources.ClipSource(clips, root / "data", sr=MEL.sample_rate, expected_sr=MEL.sample_rate)
    return {"root": root, "model": model, "qmodel": qmodel, "audio": audio, "source": source}


def _close(got, ref, rel):
    assert np.abs(ref).max() > 1.0  # logits that differ between clips, not a constant output
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=rel * np.abs(ref).max())


def test_one_function_equals_the_model_on_log_mel(saved):
    """Live, saved float and saved int8 model: frontend + model in one jitted program equals the
    model applied to log_mel (two programs). 1e-5 of the logit scale for float (summation order);
    1e-3 for int8, where a conv input within float rounding of a code boundary may round to the
    neighbouring code in the other program."""
    audio = saved["audio"]
    ref = logits_fn(saved["model"])(mels_of(audio))
    _close(inference.model_fn(saved["model"], logmel(MEL).features)(audio), ref, 1e-5)

    float_model = inference.load(saved["root"] / "float")
    assert float_model.frontend.describe() == {"name": "logmel", "options": dataclasses.asdict(MEL)}
    _close(float_model.fn(audio), ref, 1e-5)

    int8 = inference.load(saved["root"] / "int8")
    assert all(c.dtype == jnp.int8 for c in jax.tree.leaves(nnx.state(int8.model, Q.QuantWeight)))
    assert int8.spec["quantization"]["form"] == "int8"
    _close(int8.fn(audio), logits_fn(saved["qmodel"])(mels_of(audio)), 1e-3)
    with pytest.raises(ValueError, match="holds a saved int8 model, not float"):
        inference.load(saved["root"] / "int8", form="float")


def test_predict_pads_and_masks_every_clip_once_in_order(saved):
    audio, source = saved["audio"], saved["source"]

    def fn(a):  # two outputs, to check that any pytree of rows comes back
        return {"head": a[:, :5], "energy": jnp.sum(a ** 2, axis=-1)}

    for src in (source, audio):
        out = inference.predict(fn, src, BATCH)
        np.testing.assert_array_equal(out["head"], audio[:, :5])
        np.testing.assert_allclose(out["energy"], np.sum(audio ** 2, axis=-1), rtol=1e-5)
    # Placed on a (one-device) mesh and gathered: the same rows.
    sharded = inference.predict(fn, source, BATCH, mesh=parallel.make_mesh(1))
    np.testing.assert_array_equal(sharded["head"], audio[:, :5])

    float_model = inference.load(saved["root"] / "float")
    logits = inference.predict(float_model.fn, source, BATCH)
    assert logits.shape == (N_CLIPS, len(tau.CLASSES))
    _close(logits, logits_fn(saved["model"])(mels_of(audio)), 1e-5)
    empty = inference.predict(float_model.fn, np.zeros((0, audio.shape[1]), np.float32), BATCH)
    assert empty.shape == (0, len(tau.CLASSES)) and empty.dtype == np.float32


def test_predict_batches_per_clip_rows_with_their_clips(saved):
    """Per-clip inputs travel with the audio: the same batches, zero-padded, masked out again."""
    audio, source = saved["audio"], saved["source"]
    rows = {"gain": np.arange(1, N_CLIPS + 1, dtype=np.float32),
            "pair": np.arange(2 * N_CLIPS, dtype=np.int32).reshape(N_CLIPS, 2)}

    def fn(a, r):
        return {"scaled": a[:, :5] * r["gain"][:, None], "pair": r["pair"]}

    for src in (source, audio):
        out = inference.predict(fn, src, BATCH, rows=rows)
        np.testing.assert_array_equal(out["scaled"], audio[:, :5] * rows["gain"][:, None])
        np.testing.assert_array_equal(out["pair"], rows["pair"])
    sharded = inference.predict(fn, source, BATCH, rows=rows, mesh=parallel.make_mesh(1))
    np.testing.assert_array_equal(sharded["pair"], rows["pair"])
    seen = []  # every call sees BATCH rows; the last batch's padding rows are zeros
    inference.predict(lambda a, r: seen.append(np.asarray(r["gain"])) or a[:, 0], audio, BATCH, rows=rows)
    assert [len(g) for g in seen] == [BATCH] * 3
    np.testing.assert_array_equal(seen[-1], [N_CLIPS, 0, 0])
    empty = inference.predict(fn, np.zeros((0, audio.shape[1]), np.float32), BATCH,
                              rows=jax.tree.map(lambda a: a[:0], rows))
    assert empty["pair"].shape == (0, 2) and empty["pair"].dtype == np.int32
    with pytest.raises(ValueError, match="one row per clip"):
        inference.predict(fn, audio, BATCH, rows={"gain": rows["gain"][:-1]})


def _scan_lengths(jaxpr) -> list[int]:
    """Lengths of the scans (`lax.map` loops) anywhere in a jaxpr, nested calls included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found.append(eqn.params["length"])
        for sub in jax.core.jaxprs_in_params(eqn.params):
            found += _scan_lengths(sub)
    return found


@pytest.mark.parametrize("batch, slices", [(16, 2), (20, 2), (15, 0), (5, 0)])
def test_microbatched_forward_equals_the_whole_batch(saved, batch, slices):
    """Inference over 8-row slices (`asc_jax.microbatch`): a batch of 2 slices or more loops over
    them (20 rows: 2 slices and one call on the 4 left over), a smaller one is one call. Frontend
    + model with a per-clip frontend input equals the whole-batch program to 1e-5 of the logit
    scale (summation order), rows in order."""
    audio = scene_audio(batch, 30 + batch)
    gain = np.linspace(0.5, 2.0, batch).astype(np.float32)  # per clip, so a row mix-up shows

    def features(a, g):
        return logmel(MEL).features(a * g[:, None])

    graphdef, state = nnx.split(saved["model"])
    plain = jax.jit(inference.forward(graphdef, features))
    sliced = inference.forward(graphdef, features, microbatch=8)
    _close(jax.jit(sliced)(state, audio, gain), np.asarray(plain(state, audio, gain)), 1e-5)
    assert _scan_lengths(jax.make_jaxpr(sliced)(state, audio, gain).jaxpr) == ([slices] if slices else [])


def test_functions_to_run_are_sliced_on_cpu_and_exports_are_not(saved):
    """model_fn (jit=True, what prediction, evaluation and teachers run) loops over
    `default_microbatch()` slices on CPU; the pure function that export traces (jit=False) is
    the plain whole-batch program."""
    if jax.default_backend() != "cpu":
        pytest.skip("slices are a CPU setting")
    audio = scene_audio(16, 5)
    jitted = jax.make_jaxpr(inference.model_fn(saved["model"], logmel(MEL).features))(audio)
    pure = jax.make_jaxpr(inference.model_fn(saved["model"], logmel(MEL).features, jit=False))(audio)
    assert _scan_lengths(jitted.jaxpr) == [16 // microbatch.CPU_MICROBATCH]
    assert _scan_lengths(pure.jaxpr) == []
