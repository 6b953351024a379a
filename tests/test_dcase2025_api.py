"""The DCASE2025 inference API (`asc_jax.dcase2025`), driven as the organisers' scripts drive it.

`evaluate_submission.py`: test split = meta.csv merged with test.csv, device ids from meta.csv's
source_label, `predict(..., model_file_path=None)` with the packaged default, `pred.argmax()`,
then the evaluation set from evaluation_setup/fold1_test.csv and a softmax of the logits per
class in `class_order`. `test_complexity.py`: `load_model()`, `load_inputs` of one dummy clip for
13 device ids, `get_model_for_device` and the MACs / parameter bytes of each submodel at the
input's shape. Every clip's logits must be bitwise those of the member its device routes to.
"""
import csv
import dataclasses
import os

import jax
import numpy as np
import pytest
import soundfile as sf

from asc_jax import complexity, dcase2025 as api
from asc_jax import predict as P
from asc_jax import quantize as Q
from asc_jax.checkpoint import load_model
from asc_jax.data import tau
from asc_jax.data.tau import CLASSES
from tests.test_predict import SET_DEVICES, load_member, build_device_set, member_logits
from tests.test_quantize import MEL, TINY, mels_of, scene_audio

DEV_DEVICES = ["a", "b", "s1", "s4", "a", "s6"]  # source_label of the development test clips
EVAL_DEVICES = ["a", "s1", "c", "s9", "unknown", ""]  # device_id of the evaluation clips
API_BATCH = api.DEFAULT_BATCH_SIZE  # bitwise comparisons run the members at the API's batch size


def _write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _read_tsv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_dev_and_eval_sets(root) -> dict:
    """A development set (meta.csv, split_setup/test.csv, TAU names) and an evaluation set
    (audio/<n>.wav, evaluation_setup/fold1_test.csv) of 1-s 16 kHz clips."""
    dev, ev = root / "dev", root / "eval"
    (dev / "audio").mkdir(parents=True)
    (ev / "audio").mkdir(parents=True)
    audio = scene_audio(len(DEV_DEVICES) + len(EVAL_DEVICES) + 1, 31)
    meta, test = [], []
    for i, device in enumerate(DEV_DEVICES):
        scene = CLASSES[i]
        name = f"audio/{scene}-lyon-{i}-{i}-0-{device}.wav"
        sf.write(dev / name, audio[i], MEL.sample_rate, subtype="FLOAT")
        meta.append([name, scene, f"lyon-{i}", device])
        test.append([name, scene])
    _write_tsv(dev / "meta.csv", ["filename", "scene_label", "identifier", "source_label"], meta)
    _write_tsv(dev / "split_setup" / "test.csv", ["filename", "scene_label"], test[::-1])  # another order
    rows = []
    for i, device in enumerate(EVAL_DEVICES):
        sf.write(ev / "audio" / f"{i}.wav", audio[len(DEV_DEVICES) + i], MEL.sample_rate, subtype="FLOAT")
        rows.append([f"audio/{i}.wav", device])
    _write_tsv(ev / "evaluation_setup" / "fold1_test.csv", ["filename", "device_id"], rows)
    dummy = root / "dummy.wav"
    sf.write(dummy, audio[-1], MEL.sample_rate, subtype="FLOAT")
    return {"dev": dev, "eval": ev, "dummy": dummy}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcase2025")
    return {**build_device_set(tmp_path_factory), **write_dev_and_eval_sets(root)}


@pytest.fixture
def packaged(env, monkeypatch):
    """The set as the packaged default model, through the environment variable."""
    monkeypatch.setattr(api, "DEFAULT_MODEL", None)
    monkeypatch.setenv(api.MODEL_ENV, str(env["set"]))
    return env


def windows_of(path) -> np.ndarray:
    """The 1-s windows of a file, as the API cuts them (asc_jax.predict's rules)."""
    return P.split_windows(tau.load_audio(path, MEL.sample_rate, expected_sr=None), MEL.sample_rate)


def _member_of(device):
    return device if device in SET_DEVICES else "base"


def test_evaluate_submission_flow(packaged):
    env = packaged
    # load_test_split: test.csv (without scene_label) merged with meta.csv on filename.
    meta = {r["filename"]: r for r in _read_tsv(env["dev"] / "meta.csv")}
    df_test = [meta[r["filename"]] for r in _read_tsv(env["dev"] / "split_setup" / "test.csv")]
    file_paths = [os.path.join(env["dev"], r["filename"]) for r in df_test]
    device_ids = [r["source_label"] for r in df_test]
    scene_labels = [r["scene_label"] for r in df_test]

    predictions, class_order = api.predict(file_paths=file_paths, device_ids=device_ids,
                                           model_file_path=None, use_cuda=False)
    assert class_order == list(CLASSES)
    label_to_idx = {label: idx for idx, label in enumerate(class_order)}
    true_labels = [label_to_idx[label] for label in scene_labels]
    pred_labels = [pred.argmax().item() for pred in predictions]
    assert len(pred_labels) == len(true_labels) == len(DEV_DEVICES)
    for path, device, logits in zip(file_paths, device_ids, predictions):
        assert isinstance(logits, np.ndarray) and logits.shape == (len(CLASSES),)
        own = member_logits(env["members"][_member_of(device)], windows_of(path), API_BATCH)
        np.testing.assert_array_equal(logits, own[0])  # bitwise the routed member's logits

    # The evaluation set and its output rows.
    df_eval = _read_tsv(env["eval"] / "evaluation_setup" / "fold1_test.csv")
    eval_paths = [os.path.join(env["eval"], r["filename"]) for r in df_eval]
    eval_devices = [r["device_id"] for r in df_eval]
    eval_predictions, eval_class_order = api.predict(file_paths=eval_paths, device_ids=eval_devices,
                                                     model_file_path=None, use_cuda=False)
    assert eval_class_order == class_order
    all_probs = np.asarray(jax.nn.softmax(np.stack(eval_predictions), axis=1))
    for path, device, logits in zip(eval_paths, eval_devices, eval_predictions):
        np.testing.assert_array_equal(
            logits, member_logits(env["members"][_member_of(device)], windows_of(path), API_BATCH)[0])
    assert np.allclose(all_probs.sum(1), 1.0, atol=1e-6)


def test_complexity_flow(packaged):
    env = packaged
    device_ids = ["a", "b", "c"] + [f"s{i}" for i in range(1, 11)]
    model = api.load_model()
    file_paths = [str(env["dummy"]) for _ in device_ids]
    inputs = api.load_inputs(file_paths, device_ids, model)
    expected_shape = (1, MEL.n_mels, 51)  # one 1-s window of the tiny frontend (hop 320 at 16 kHz)
    logits = api.predict_loaded(model, file_paths, device_ids)
    per_device = {}
    for input_tensor, device_id, row in zip(inputs, device_ids, logits):
        submodel = api.get_model_for_device(model, device_id)
        assert input_tensor.shape == expected_shape and input_tensor.dtype == np.float32
        assert submodel.member == _member_of(device_id)
        measured = api.measure_complexity(submodel, input_tensor.shape)
        report = complexity.report(load_member(env["members"][submodel.member]).model, expected_shape)
        assert (measured.macs, measured.params) == (report.macs, report.params)
        assert measured.param_bytes == report.param_bytes("fp32") and measured.precision == "fp32"
        assert measured.within_limits
        # The submodel on the model-ready input is the member predict routes to (frontend and
        # model as two XLA programs here, one there: float rounding apart).
        np.testing.assert_allclose(submodel(input_tensor)[0], row, atol=1e-5)
        per_device[device_id] = {"MACs": measured.macs, "Params": measured.param_bytes}
    summary = api.check_complexity(model, device_ids, inputs)
    assert {d: {k: e[k] for k in ("MACs", "Params")} for d, e in summary["per_device"].items()} == per_device
    assert summary["max_MACs"] == max(e["MACs"] for e in per_device.values())
    assert summary["max_Params"] == max(e["Params"] for e in per_device.values())
    assert summary["within_limits"] and summary["limits"] == {"MACs": 30_000_000, "Params": 128_000}
    assert api.check_complexity(model) == summary  # the default input: one 1-s window per device


def test_default_model_setting_and_errors(env, monkeypatch):
    monkeypatch.delenv(api.MODEL_ENV, raising=False)
    monkeypatch.setattr(api, "DEFAULT_MODEL", None)
    with pytest.raises(FileNotFoundError, match=r"DEFAULT_MODEL or the environment variable ASC_JAX_DCASE2025_MODEL"):
        api.load_model()
    monkeypatch.setattr(api, "DEFAULT_MODEL", str(env["set"]))  # the module-level setting
    model = api.load_model()
    assert model.is_set and sorted(model.device_set.devices) == sorted(SET_DEVICES)
    with pytest.raises(ValueError, match="2 files but 1 device ids"):
        api.load_inputs([env["dummy"]] * 2, ["a"], model)
    # Ids from a table's empty cells (None, NaN) are missing ids: the general model.
    assert [api.get_model_for_device(model, d).member for d in (None, float("nan"), "", "unknown", "s1")] == \
        ["base", "base", "base", "base", "s1"]


def test_single_saved_model_and_long_files(env, tmp_path):
    """A saved model is a set with only a general model; a file of several windows gets the log
    of its mean window probability, whose softmax is what asc_jax.predict writes."""
    long_file = tmp_path / "long.wav"
    sf.write(long_file, scene_audio(1, 41, seconds=2.6)[0], MEL.sample_rate, subtype="FLOAT")
    single = env["members"]["base"]
    logits, order = api.predict([long_file, env["dummy"]], ["s1", "s1"], single, use_cuda=False)
    model = api.load_model(single)
    assert not model.is_set and api.get_model_for_device(model, "s1").member == "base"
    windows = model.load_windows(long_file)
    assert len(windows) == 3
    probs = np.asarray(jax.nn.softmax(member_logits(single, windows, API_BATCH), -1)).mean(0)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits[0])), probs, rtol=1e-6)
    np.testing.assert_array_equal(logits[1], member_logits(single, model.load_windows(env["dummy"]), API_BATCH)[0])
    np.testing.assert_allclose(P.predict_files(single, [long_file], batch_size=API_BATCH).probs[0], probs,
                               rtol=1e-6)


def test_int8_member_complexity(env, tmp_path):
    """An int8 member: MACs of its float architecture, one byte per parameter."""
    model, spec = load_model(env["members"]["base"])
    qmodel = Q.post_training_quantize(model, mels_of(scene_audio(8, 5)))
    spec = {"model": {"name": "rep_mobile", "options": TINY, "deploy": True}, "mel": dataclasses.asdict(MEL),
            "class_names": list(CLASSES)}
    Q.save_quantized(tmp_path / "int8", qmodel, spec, Q.QuantConfig())
    loaded = api.load_model(tmp_path / "int8")
    submodel = api.get_model_for_device(loaded, "a")
    shape = api.input_shape_of(loaded, "a")
    measured = api.measure_complexity(submodel, shape)
    float_report = complexity.report(model, shape)
    assert measured.macs == float_report.macs
    assert measured.params == float_report.params == measured.param_bytes
    assert measured.precision == "int8"
