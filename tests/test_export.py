"""Export: StableHLO (waveform in, serialized and reloaded) and ONNX (run by onnxruntime), each
compared with the JAX model on generated audio, for the float and the int8 deploy model."""
import dataclasses
import importlib.metadata
import json
import re
import sys

import jax
import numpy as np
import pytest

from flax import nnx

from asc_jax import complexity
from asc_jax import export as E
from asc_jax import inference
from asc_jax import quantize as Q
from asc_jax.audio.frontends import logmel
from asc_jax.audio.passt_frontend import PaSSTFrontendConfig
from asc_jax.checkpoint import save_model
from asc_jax.data.tau import CLASSES
from asc_jax.models import build_model
from tests.test_quantize import MEL, TINY, mels_of, scene_audio, tiny_deploy

FRONTEND = logmel(MEL)


# The ONNX tests need the `deploy` extra (jax2onnx, onnx, onnxruntime). scripts/test.sh installs it
# (with the orbax-checkpoint that jax2onnx accepts, scripts/constraints.txt), so they never skip:
# a missing install fails here instead of hiding.


@pytest.fixture(scope="module")
def models():
    model = tiny_deploy(1)
    qmodel = Q.post_training_quantize(model, mels_of(scene_audio(16, 12)))
    audio = scene_audio(3, 11)
    return {"float": model, "int8": qmodel, "audio": audio, "mels": mels_of(audio)}


def _jax_logits(model, x, include_frontend: bool) -> np.ndarray:
    features = FRONTEND.features if include_frontend else None
    return np.asarray(jax.jit(inference.model_fn(model, features, jit=False))(x))


def test_stablehlo_round_trip_with_frontend(models, tmp_path):
    """serialize -> bytes on disk -> deserialize -> call equals the JAX model. Tolerance 1e-5 of
    the logit scale: the same XLA computation, recompiled (observed difference: 0)."""
    audio = models["audio"]
    for form in ("float", "int8"):
        path = E.export_stablehlo(models[form], tmp_path / f"{form}.stablehlo", frontend=FRONTEND)
        exported, meta = E.load_stablehlo(path)
        ref = _jax_logits(models[form], audio, include_frontend=True)
        assert np.abs(ref).max() > 1.0
        np.testing.assert_allclose(np.asarray(exported.call(audio)), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
        assert (meta["input"]["name"], meta["input"]["shape"]) == ("waveform", ["batch", MEL.sample_rate])
        assert meta["frontend"] == {"name": "logmel", "options": dataclasses.asdict(MEL)}
        assert meta["mel"] == dataclasses.asdict(MEL) and meta["class_names"] == list(CLASSES)
    # The batch is symbolic: one clip works as well as three (int8 module).
    np.testing.assert_allclose(np.asarray(exported.call(audio[:1])), ref[:1], rtol=0,
                               atol=1e-5 * np.abs(ref).max())
    # The int8 weights are int8 constants of the serialized module, not float copies.
    assert "xi8>" in exported.mlir_module()
    with pytest.raises(ValueError, match="not a serialized"):
        (tmp_path / "junk.stablehlo").write_bytes(b"not a module")
        E.load_stablehlo(tmp_path / "junk.stablehlo")


def test_onnx_log_mel_input_dynamic_batch(models, tmp_path):
    """onnxruntime vs XLA, float model, log-mel input. Tolerance 1e-4 of the logit scale: both
    compute in float32 but sum convolutions in different orders (observed ~1e-7 relative)."""
    import onnx
    import onnxruntime as ort

    discovery = _plugin_discovery()
    path = E.export_onnx(models["float"], tmp_path / "float.onnx", frontend=FRONTEND)
    # The plugin workaround is undone after the export, and it kept the Flax plugins unloaded.
    assert _plugin_discovery() == discovery and discovery[0] is discovery[1]
    assert "jax2onnx.plugins.flax.nnx.avg_pool" not in sys.modules
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["mel_config"]) == dataclasses.asdict(MEL)
    assert json.loads(props["frontend"]) == FRONTEND.describe()
    assert json.loads(props["class_names"]) == list(CLASSES)
    assert E.onnx_metadata(path)["frontend_included"] is False
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    session = ort.InferenceSession(str(path))
    ref = _jax_logits(models["float"], models["mels"], include_frontend=False)
    for n in (3, 1):
        out = session.run(None, {"log_mel": models["mels"][:n]})[0]
        np.testing.assert_allclose(out, ref[:n], rtol=0, atol=1e-4 * np.abs(ref).max())


def _plugin_discovery():
    """jax2onnx's plugin discovery function, where the conversion looks it up."""
    from jax2onnx.converter import conversion_api
    from jax2onnx.plugins import plugin_system

    return conversion_api.import_all_plugins, plugin_system.import_all_plugins


def _fake_jax2onnx_version(monkeypatch, version: str) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == "jax2onnx" else real(name))


def test_onnx_plugin_workaround_runs_only_on_tested_jax2onnx(models, tmp_path, monkeypatch):
    """The workaround patches jax2onnx internals, so any jax2onnx outside JAX2ONNX_TESTED (the
    deploy extra's range) is refused before anything is patched or written."""
    discovery = _plugin_discovery()
    for version in ("0.17.0", "0.18.0", "1.0.0", "0.16.9"):
        _fake_jax2onnx_version(monkeypatch, version)
        with pytest.raises(RuntimeError, match=rf"jax2onnx>=0\.17\.1,<0\.18; jax2onnx {re.escape(version)} is"):
            E.export_onnx(models["float"], tmp_path / "x.onnx", frontend=FRONTEND)
        assert _plugin_discovery() == discovery
    assert not (tmp_path / "x.onnx").exists()
    # Inside the tested range the discovery is replaced while the context lasts, in both places,
    # and restored when the conversion fails too.
    for version in ("0.17.1", "0.17.4rc1"):
        _fake_jax2onnx_version(monkeypatch, version)
        with pytest.raises(ValueError, match="conversion failed"):
            with E._jax2onnx_plugins_for_lax():
                patched = _plugin_discovery()
                assert patched[0] is patched[1] and patched[0] is not discovery[0]
                raise ValueError("conversion failed")
        assert _plugin_discovery() == discovery


def test_onnx_int8_with_frontend(models, tmp_path):
    """onnxruntime vs XLA, int8 model, waveform input (STFT in the graph, fixed batch).
    Tolerance 1e-3 of the logit scale: besides summation order, a conv input that lands within
    float rounding of a code boundary can round to the neighbouring int8 code in one runtime
    and not the other, moving the logits by about one quantization step of that layer."""
    import onnx
    import onnxruntime as ort

    audio = models["audio"]
    path = E.export_onnx(models["int8"], tmp_path / "int8.onnx", frontend=FRONTEND, include_frontend=True,
                         batch_size=len(audio))
    proto = onnx.load(str(path))
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) == complexity.memory_report(models["int8"]).weight_params
    meta = E.onnx_metadata(path)
    assert meta["input"]["shape"] == [len(audio), MEL.sample_rate] and meta["frontend_included"]
    out = ort.InferenceSession(str(path)).run(None, {"waveform": audio})[0]
    ref = _jax_logits(models["int8"], audio, include_frontend=True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    with pytest.raises(ValueError, match="batch_size"):
        E.export_onnx(models["int8"], tmp_path / "x.onnx", frontend=FRONTEND, include_frontend=True, batch_size=0)


def test_export_cli_on_saved_int8_model(models, tmp_path):
    spec = {"model": {"name": "rep_mobile", "options": TINY, "deploy": True},
            "mel": dataclasses.asdict(MEL), "class_names": list(CLASSES)}
    Q.save_quantized(tmp_path / "int8", models["int8"], spec, Q.QuantConfig())
    assert E.main(["--checkpoint", str(tmp_path / "int8"), "--out", str(tmp_path / "out"),
                   "--format", "stablehlo"]) == 0
    meta = json.loads((tmp_path / "out" / "model.stablehlo.json").read_text())
    assert meta["quantization"] == dataclasses.asdict(Q.QuantConfig()) and meta["model"]["options"] == TINY
    save_model(tmp_path / "float", models["float"], name="rep_mobile", options=TINY, deploy=True,
               mel=dataclasses.asdict(MEL), class_names=list(CLASSES))
    written = E.export_saved(tmp_path / "float", tmp_path / "out2", formats=["stablehlo"])
    exported, meta = E.load_stablehlo(written[0])
    assert meta["quantization"] is None and "xi8>" not in exported.mlir_module()


def test_export_cli_default_needs_no_onnx_extra(models, tmp_path, monkeypatch, capsys):
    """The README command (no --format) works in the default install, without jax2onnx; asking
    for ONNX there fails at once with one line that names the extra, before any work."""
    for name in ("jax2onnx", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # importlib.util.find_spec -> None
    save_model(tmp_path / "float", models["float"], name="rep_mobile", options=TINY, deploy=True,
               mel=dataclasses.asdict(MEL), class_names=list(CLASSES))
    assert E.main(["--checkpoint", str(tmp_path / "float"), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.stablehlo", "model.stablehlo.json"]
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--checkpoint", str(tmp_path / "float"), "--out", str(tmp_path / "o2"), "--format", "onnx"])
    assert exit_info.value.code == 2
    assert "deploy extra" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_stablehlo_export_of_a_passt_model_uses_its_frontend(tmp_path):
    """A PaSST saved with the "passt" frontend (128 Kaldi mel bins, its own normalisation) exports
    with that frontend, read from its model.json: waveform in, the exported program equals
    `inference.load(...).fn`; without the frontend, PaSST features in. Tolerance 1e-5: the same
    float32 computation, compiled separately (observed difference ~1e-8, logits up to ~0.24)."""
    options = {"n_classes": 10, "depth": 1, "embed_dim": 32, "num_heads": 2, "n_mels": 128, "n_frames": 100}
    save_model(tmp_path / "passt", build_model("passt", rngs=nnx.Rngs(3), **options), name="passt",
               options=options, frontend={"name": "passt", "options": {}}, class_names=list(CLASSES))
    saved = inference.load(tmp_path / "passt")
    audio = scene_audio(3, 5, sr=saved.frontend.sample_rate)  # 1 s at 32 kHz: the model's 100 frames
    ref = np.asarray(saved.fn(audio))
    assert np.abs(ref).max() > 0.1

    [path] = E.export_saved(tmp_path / "passt", tmp_path / "out", formats=["stablehlo"])
    exported, meta = E.load_stablehlo(path)
    np.testing.assert_allclose(np.asarray(exported.call(audio)), ref, rtol=0, atol=1e-5)
    assert meta["frontend"] == {"name": "passt", "options": dataclasses.asdict(PaSSTFrontendConfig())}
    assert "mel" not in meta  # the MelConfig entry belongs to "logmel" models only
    assert meta["input"]["shape"] == ["batch", 32_000] and meta["frontend_included"]

    path = E.export_stablehlo(saved.model, tmp_path / "features.stablehlo", frontend=saved.frontend,
                              include_frontend=False, spec=saved.spec)
    exported, meta = E.load_stablehlo(path)
    assert meta["input"]["shape"] == ["batch", 128, 100] and not meta["frontend_included"]
    features = np.asarray(jax.jit(saved.frontend.features)(audio))
    np.testing.assert_allclose(np.asarray(exported.call(features)), ref, rtol=0, atol=1e-5)
