"""Prediction CLI: windows, resampling, bad files in a batch, DCASE output.csv, and equality of
its probabilities with a direct model call; device sets: routing by the device in the file name
or a table, fallbacks to the base model counted, each file bitwise what its member computes.

`build_device_set` is shared with test_dcase2025_api.py and test_submission.py."""
import csv
import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

from asc_jax import device_set as ds
from asc_jax import inference
from asc_jax import predict as P
from asc_jax import quantize as Q
from asc_jax.checkpoint import load_model
from asc_jax.data import tau
from asc_jax.data.tau import CLASSES
from tests.test_quantize import MEL, TINY, logits_fn, mels_of, save_tiny_deploy, scene_audio

BATCH = 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    model = save_tiny_deploy(root / "deploy")
    # Inputs at several sample rates, lengths, channel counts and formats, plus bad ones.
    inputs = root / "in"
    (inputs / "sub" / "deeper").mkdir(parents=True)
    sf.write(inputs / "a.wav", scene_audio(1, 1)[0], 16_000)  # exactly one window
    sf.write(inputs / "b.flac", np.stack([scene_audio(1, 2, 44_100, 2.3)[0]] * 2, axis=1), 44_100)  # 2 + 0.3 s
    sf.write(inputs / "sub" / "c.ogg", scene_audio(1, 3, 22_050, 1.7)[0], 22_050)  # 1 + 0.7 s
    sf.write(inputs / "sub" / "deeper" / "d.wav", scene_audio(1, 4, 8_000, 0.4)[0], 8_000)  # shorter than 1 s
    (inputs / "sub" / "notes.txt").write_text("not audio")
    (inputs / "corrupt.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVEfmt garbage" * 8)
    sf.write(inputs / "empty.wav", np.zeros(0, np.float32), 16_000)
    return {"dir": root / "deploy", "model": model, "inputs": inputs}


def test_split_windows_pads_or_drops_the_tail():
    wave = np.arange(1, 2301, dtype=np.float32)
    w = P.split_windows(wave, 1000)  # tail of 300 < 0.5 window: dropped
    assert w.shape == (2, 1000) and w[1, -1] == 2000
    w = P.split_windows(wave[:1700], 1000)  # tail of 700: kept, zero-padded
    assert w.shape == (2, 1000) and w[1, 699] == 1700 and not w[1, 700:].any()
    w = P.split_windows(wave[:400], 1000)  # a short file is always one padded window
    assert w.shape == (1, 1000) and w[0, 399] == 400 and not w[0, 400:].any()
    assert P.split_windows(wave[:1000], 1000).shape == (1, 1000)
    assert P.split_windows(wave[:1100], 1000, min_last=0.1).shape == (2, 1000)
    with pytest.raises(ValueError, match="non-empty"):
        P.split_windows(np.zeros(0, np.float32), 1000)


def _direct_probs(model, path) -> tuple[np.ndarray, int]:
    """What predict should compute, written out: resample, cut, pad, softmax, mean."""
    wave = tau.load_audio(path, MEL.sample_rate, expected_sr=None)
    n = MEL.sample_rate
    full, rest = divmod(len(wave), n)
    windows = [wave[i * n:(i + 1) * n] for i in range(full)]
    if rest and (full == 0 or rest >= 0.5 * n):
        windows.append(np.pad(wave[full * n:], (0, n - rest)))
    logits = logits_fn(model)(mels_of(np.stack(windows)))
    return np.asarray(jax.nn.softmax(logits, -1)).mean(0), len(windows)


def test_cli_batch_with_bad_files(saved, tmp_path, capsys):
    inputs = saved["inputs"]
    out = tmp_path / "res" / "output.csv"
    args = [str(inputs / "a.wav"), str(inputs / "sub"), str(inputs / "corrupt.wav"), str(inputs / "b.flac"),
            str(inputs / "empty.wav"), str(inputs / "missing.wav"), str(inputs / "sub" / "c.ogg")]
    code = P.main([*args, "--checkpoint", str(saved["dir"]), "--output", str(out), "--batch-size", str(BATCH)])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.splitlines()
    assert f"error: {inputs / 'corrupt.wav'}: unreadable or corrupt audio" in captured.err
    assert f"error: {inputs / 'empty.wav'}: empty audio (0 samples)" in errors
    assert f"error: {inputs / 'missing.wav'}: no such file or directory" in errors
    assert "3 input(s) failed" in captured.err
    # Good files, in input order; c.ogg comes once (via the directory); notes.txt is ignored.
    names = [str(inputs / "a.wav"), "sub/c.ogg", "sub/deeper/d.wav", str(inputs / "b.flac")]
    with out.open() as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["filename", "scene_label", *CLASSES]
    assert [r[0] for r in rows[1:]] == names
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [r[1] for r in rows[1:]] == [CLASSES[i] for i in probs.argmax(1)]
    for name in names:
        assert name in captured.out  # the printed table

    # Equality with a direct model call (1e-5: the CLI runs the windows in batches of another
    # size, which may change XLA's float summation order) and with the CSV (6 decimals).
    pred = P.predict_files(saved["dir"], args, batch_size=BATCH)
    assert pred.filenames == names and pred.n_windows == [1, 2, 1, 2]
    np.testing.assert_allclose(probs, pred.probs, atol=5e-7 + 1e-7)
    paths = [inputs / "a.wav", inputs / "sub" / "c.ogg", inputs / "sub" / "deeper" / "d.wav", inputs / "b.flac"]
    model, _ = load_model(saved["dir"])
    for path, p, n in zip(paths, pred.probs, pred.n_windows):
        expected, n_expected = _direct_probs(model, path)
        assert n == n_expected
        np.testing.assert_allclose(p, expected, rtol=0, atol=1e-5)
    assert np.ptp(pred.probs, axis=0).max() > 1e-3  # the files are told apart, not a constant output


def test_cli_int8_checkpoint_all_good_exits_zero(saved, tmp_path, capsys):
    spec = {"model": {"name": "rep_mobile", "options": TINY, "deploy": True},
            "mel": dataclasses.asdict(MEL), "class_names": list(CLASSES)}
    qmodel = Q.post_training_quantize(saved["model"], mels_of(scene_audio(8, 5)))
    Q.save_quantized(tmp_path / "int8", qmodel, spec, Q.QuantConfig())
    out = tmp_path / "output.csv"
    wav = saved["inputs"] / "a.wav"
    assert P.main([str(wav), "--checkpoint", str(tmp_path / "int8"), "--output", str(out),
                   "--batch-size", str(BATCH)]) == 0
    assert capsys.readouterr().err == ""
    row = out.read_text().splitlines()[1].split("\t")
    expected, _ = _direct_probs(qmodel, wav)
    # 1e-3: the reference runs log-mel and model as two XLA programs, the CLI as one; a conv input
    # within float rounding of an int8 code boundary may then round to the neighbouring code.
    np.testing.assert_allclose([float(v) for v in row[2:]], expected, atol=1e-3)


def test_cli_without_any_readable_input_writes_nothing(saved, tmp_path, capsys):
    out = tmp_path / "output.csv"
    assert P.main([str(saved["inputs"] / "empty.wav"), "--checkpoint", str(saved["dir"]),
                   "--output", str(out)]) == 1
    assert "no output written" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        P.main([str(saved["inputs"] / "a.wav"), "--checkpoint", str(saved["dir"]), "--batch-size", "0"])
    assert exit_info.value.code == 2


# --- device model sets (DCASE2025): routing by device id ----------------------------------------

SET_DEVICES = {"a": 3, "s1": 4}  # device -> seed of its (random, distinct) model; the base has seed 2


_MEMBERS: dict = {}  # saved once per session: {member key: saved-model dir}


def tiny_members(tmp_path_factory) -> dict:
    """The members of the tiny device sets: base (seed 2) and models for a and s1 (distinct weights)."""
    if not _MEMBERS:
        root = tmp_path_factory.mktemp("members")
        for key, seed in {"base": 2, **SET_DEVICES}.items():
            save_tiny_deploy(root / key, seed=seed)
            _MEMBERS[key] = root / key
    return dict(_MEMBERS)


def build_device_set(tmp_path_factory, meta=None) -> dict:
    """A tiny device set (`tiny_members`) with manifest meta `meta`, in a new directory.

    Returns {"set": its directory, "members": {member key: saved-model dir}}.
    """
    members = tiny_members(tmp_path_factory)
    out = tmp_path_factory.mktemp("device_set") / "set"
    ds.write_device_set(out, members["base"], {d: members[d] for d in SET_DEVICES}, class_names=CLASSES,
                        meta=meta)
    return {"set": out, "members": members}


@functools.lru_cache(maxsize=None)
def load_member(member_dir):
    """A member loaded once per session (loading and jitting cost about a second each)."""
    return inference.load(member_dir)


def member_logits(member_dir, windows: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """What a member computes on its own: its jitted model over the windows, in batches of
    `batch_size` (the same size as the routed run, so the same XLA program)."""
    return inference.predict(load_member(member_dir).fn, windows, batch_size)


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    root = tmp_path_factory.mktemp("routed")
    built = build_device_set(tmp_path_factory)
    audio = root / "in"
    audio.mkdir()
    # TAU names carry the device as the last '-' field; "clip.wav" names none.
    names = ["bus-lyon-1-1-0-a.wav", "park-lyon-2-2-0-s1.wav", "tram-lyon-3-3-0-b.wav",
             "metro-lyon-4-4-0-s4.wav", "clip.wav"]
    for i, name in enumerate(names):
        sf.write(audio / name, scene_audio(1, 20 + i)[0], MEL.sample_rate, subtype="FLOAT")
    return {**built, "dir": audio, "names": names, "predictor": P.Predictor(built["set"], BATCH)}


def test_device_from_name_and_routing_reasons(routed):
    assert P.device_from_name("audio/airport-lisbon-1000-40000-0-s4.wav") == "s4"
    assert P.device_from_name("audio/17.wav") is None
    device_set = ds.read_device_set(routed["set"])
    assert [P.fallback_reason(device_set, d) for d in ("a", "s1", "s4", "unknown", None, "")] == \
        [None, None, "unseen", "unknown", "missing", "missing"]


def test_cli_routes_each_file_to_its_devices_model(routed, tmp_path, capsys):
    out = tmp_path / "output.csv"
    files = [str(routed["dir"] / n) for n in routed["names"]]
    assert P.main([*files, "--checkpoint", str(routed["set"]), "--output", str(out),
                   "--batch-size", str(BATCH)]) == 0
    printed = capsys.readouterr().out
    assert "routing: base 3, a 1, s1 1 (files per model)" in printed
    assert ("3 file(s) fell back to the base model: 1 with no device id; 2 of a device without its own "
            "model (b 1, s4 1)") in printed

    predictor = routed["predictor"]
    pred = P.predict_files(predictor, files)
    assert pred.members == ["a", "s1", "base", "base", "base"]
    assert pred.devices == ["a", "s1", "b", "s4", None]
    assert pred.routing.fallbacks == {"missing": 1, "unknown": 0, "unseen": 2}
    for path, member, probs in zip(files, pred.members, pred.probs):
        windows = predictor.load_windows(Path(path))
        own = np.asarray(jax.nn.softmax(member_logits(routed["members"][member], windows), -1)).mean(0)
        np.testing.assert_array_equal(probs, own)  # bitwise: the member's own computation
    # The members really differ, so the routing is visible in the numbers.
    windows = predictor.load_windows(Path(files[0]))
    assert np.abs(member_logits(routed["members"]["a"], windows) -
                  member_logits(routed["members"]["base"], windows)).max() > 1e-2


def test_cli_takes_devices_from_a_table(routed, tmp_path, capsys):
    # Comma-separated; the a-named file is declared s1, one file is "unknown", one is not listed.
    table = tmp_path / "devices.csv"
    table.write_text("filename,device_id\n"
                     f"in/{routed['names'][0]},s1\n"           # matched by the output name (dir/...)
                     f"{routed['names'][1]},unknown\n"         # matched by base name
                     f"{routed['names'][2]},a\n"
                     f"{routed['names'][4]},\n")               # listed, but without an id
    out = tmp_path / "output.csv"
    assert P.main([str(routed["dir"]), "--checkpoint", str(routed["set"]), "--output", str(out),
                   "--devices", str(table), "--batch-size", str(BATCH)]) == 0
    printed = capsys.readouterr().out
    pred = P.predict_files(routed["predictor"], [routed["dir"]], device_table=P.read_device_table(table))
    by_name = dict(zip(pred.filenames, zip(pred.devices, pred.members)))
    assert by_name == {"in/bus-lyon-1-1-0-a.wav": ("s1", "s1"), "in/clip.wav": (None, "base"),
                       "in/metro-lyon-4-4-0-s4.wav": (None, "base"),  # not in the table: missing
                       "in/park-lyon-2-2-0-s1.wav": ("unknown", "base"), "in/tram-lyon-3-3-0-b.wav": ("a", "a")}
    assert "routing: base 3, a 1, s1 1 (files per model)" in printed
    assert "3 file(s) fell back to the base model: 2 with no device id; 1 with device unknown" in printed


def test_device_table_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("filename\tdevice\nx.wav\ta\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['device_id'\]"):
        P.read_device_table(bad)
    bad.write_text("filename\tdevice_id\nx.wav\ta\ny.wav\tb\nx.wav\ts1\n")
    with pytest.raises(ValueError, match=r"bad.csv line 4: x.wav is listed with devices 'a' and 's1'"):
        P.read_device_table(bad)
    with pytest.raises(FileNotFoundError, match="none.csv: device table not found"):
        P.read_device_table(tmp_path / "none.csv")


def test_single_model_ignores_a_device_table(saved, tmp_path, capsys):
    table = tmp_path / "devices.tsv"
    table.write_text("filename\tdevice_id\na.wav\ts1\n")
    out = tmp_path / "output.csv"
    assert P.main([str(saved["inputs"] / "a.wav"), "--checkpoint", str(saved["dir"]), "--output", str(out),
                   "--devices", str(table), "--batch-size", str(BATCH)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"note: {saved['dir']} is a single model; the device ids")
    assert "routing:" not in captured.out
