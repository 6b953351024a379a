"""TAU22 / DCASE2024 metadata and audio loading on a tiny hand-written fake dataset tree."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import soundfile as sf
import soxr

from asc_jax.data import tau

SR = 44100

# (filename, scene_label, identifier, source_label): the real TAU naming scheme.
META = [
    ("audio/airport-lisbon-1000-40000-0-a.wav", "airport", "lisbon-1000", "a"),
    ("audio/airport-lisbon-1000-40000-1-a.wav", "airport", "lisbon-1000", "a"),
    ("audio/bus-lyon-1045-40100-0-s2.wav", "bus", "lyon-1045", "s2"),
    ("audio/park-barcelona-3-88-0-b.wav", "park", "barcelona-3", "b"),
    ("audio/tram-helsinki-7-400-3-s5.wav", "tram", "helsinki-7", "s5"),
    ("audio/street_traffic-paris-12-512-9-c.wav", "street_traffic", "paris-12", "c"),
]


def _tone(seconds: float = 1.0, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.25 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")


@pytest.fixture
def fake_tau(tmp_path):
    """meta.csv, audio/, split files in split_setup/ (the DCASE2024 baseline location)."""
    _tsv(tmp_path / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), META)
    for name, *_ in META:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, _tone(), SR, subtype="PCM_16")
    # Deliberately not in meta.csv order: load_split must return meta.csv order anyway.
    _tsv(tmp_path / "split_setup" / "split5.csv", ("filename", "scene_label"),
         [(META[3][0], "park"), (META[0][0], "airport")])
    _tsv(tmp_path / "split_setup" / "test.csv", ("filename", "scene_label"),
         [(m[0], m[1]) for m in META[4:]])
    return tmp_path


def test_class_and_device_tables():
    assert tau.CLASSES == ("airport", "bus", "metro", "metro_station", "park", "public_square",
                           "shopping_mall", "street_pedestrian", "street_traffic", "tram")
    assert tau.DEVICES == ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
    assert set(tau.UNSEEN_DEVICES).isdisjoint(tau.SEEN_DEVICES)


@pytest.mark.parametrize(
    "filename,device",
    [("audio/airport-lisbon-1000-40000-0-a.wav", "a"), ("audio/bus-lyon-1045-40100-0-s2.wav", "s2"),
     ("street_traffic-paris-12-512-9-s6.wav", "s6")],
)
def test_device_from_filename(filename, device):
    assert tau.device_from_filename(filename) == device


def test_city_from_identifier():
    assert tau.city_from_identifier("lisbon-1000") == "lisbon"
    assert tau.city_from_identifier("barcelona-3") == "barcelona"


def test_load_split_parses_clips_in_meta_order(fake_tau):
    clips = tau.load_split(fake_tau, "5")
    assert clips == [
        tau.Clip(META[0][0], 0, "a", "lisbon", "lisbon-1000"),
        tau.Clip(META[3][0], 4, "b", "barcelona", "barcelona-3"),
    ]
    test = tau.load_split(fake_tau, "test")
    assert [(c.label, c.device, c.city) for c in test] == [(9, "s5", "helsinki"), (8, "c", "paris")]


def test_split_in_root_and_int_split_name(fake_tau):
    (fake_tau / "split_setup" / "split5.csv").rename(fake_tau / "split5.csv")
    assert [c.filename for c in tau.load_split(fake_tau, 5)] == [META[0][0], META[3][0]]


def test_split_without_scene_label_column(fake_tau):
    _tsv(fake_tau / "split_setup" / "split10.csv", ("filename",), [(META[2][0],)])
    assert [c.label for c in tau.load_split(fake_tau, "10")] == [1]


def test_ambiguous_split_copies_rejected(fake_tau):
    _tsv(fake_tau / "split5.csv", ("filename",), [(META[2][0],)])
    with pytest.raises(ValueError, match="ambiguous"):
        tau.load_split(fake_tau, "5")


def test_unknown_split_and_missing_split_file(fake_tau):
    with pytest.raises(ValueError, match="unknown split '7'"):
        tau.load_split(fake_tau, "7")
    with pytest.raises(FileNotFoundError, match="split100.csv"):
        tau.load_split(fake_tau, "100")


def test_missing_meta_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.csv"):
        tau.load_split(tmp_path, "5")


def test_comma_separated_meta_is_rejected(fake_tau):
    (fake_tau / "meta.csv").write_text("filename,scene_label,identifier,source_label\n")
    with pytest.raises(ValueError, match="tab-separated"):
        tau.load_split(fake_tau, "5")


def test_split_file_naming_unknown_clip(fake_tau):
    _tsv(fake_tau / "split_setup" / "split25.csv", ("filename",), [("audio/ghost-x-1-1-0-a.wav",)])
    with pytest.raises(ValueError, match="ghost-x-1-1-0-a.wav"):
        tau.load_split(fake_tau, "25")


def test_missing_audio_file_named(fake_tau):
    (fake_tau / META[3][0]).unlink()
    with pytest.raises(tau.MissingClipError, match="park-barcelona-3-88-0-b.wav") as err:
        tau.load_split(fake_tau, "5")
    assert isinstance(err.value, FileNotFoundError)
    assert err.value.filename.endswith(META[3][0])


def test_unknown_label_named(fake_tau):
    rows = [META[0], ("audio/park-barcelona-3-88-0-b.wav", "beach", "barcelona-3", "b")]
    _tsv(fake_tau / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), rows)
    _tsv(fake_tau / "split_setup" / "split5.csv", ("filename",), [(r[0],) for r in rows])
    with pytest.raises(tau.BadClipError, match=r"park-barcelona-3-88-0-b.wav: unknown scene label 'beach'"):
        tau.load_split(fake_tau, "5")


def test_split_label_disagreeing_with_meta_named(fake_tau):
    _tsv(fake_tau / "split_setup" / "split5.csv", ("filename", "scene_label"), [(META[0][0], "bus")])
    with pytest.raises(tau.BadClipError, match="airport-lisbon-1000-40000-0-a.wav.*disagrees"):
        tau.load_split(fake_tau, "5")


def test_source_label_disagreeing_with_filename(fake_tau):
    rows = [META[0][:3] + ("b",)]
    _tsv(fake_tau / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), rows)
    _tsv(fake_tau / "split_setup" / "split5.csv", ("filename",), [(META[0][0],)])
    with pytest.raises(tau.BadClipError, match="source_label 'b'"):
        tau.load_split(fake_tau, "5")


def test_skip_mode_reports_every_bad_clip(fake_tau, caplog):
    (fake_tau / META[0][0]).unlink()
    with caplog.at_level(logging.WARNING, logger="asc_jax.data.tau"):
        clips, skipped = tau.load_split(fake_tau, "5", on_error="skip")
    assert [c.filename for c in clips] == [META[3][0]]
    assert skipped == [tau.Skipped(META[0][0], "audio file not found")]
    assert META[0][0] in caplog.text and "skipped 1 of 2" in caplog.text


def test_verify_audio_detects_wrong_sample_rate_in_split(fake_tau):
    sf.write(fake_tau / META[3][0], _tone(sr=48000), 48000, subtype="PCM_16")
    assert len(tau.load_split(fake_tau, "5")) == 2  # 'exists' does not open files
    with pytest.raises(tau.BadClipError, match="park-barcelona-3-88-0-b.wav: sample rate 48000 Hz, expected 44100"):
        tau.load_split(fake_tau, "5", verify="audio")
    clips, skipped = tau.load_split(fake_tau, "5", verify="audio", on_error="skip")
    assert len(clips) == 1 and skipped[0].filename == META[3][0]


def test_load_audio_resamples_like_soxr(tmp_path):
    path = tmp_path / "x.wav"
    x = _tone(freq=1000.0)
    sf.write(path, x, SR, subtype="FLOAT")
    y = tau.load_audio(path, 32000)
    assert y.dtype == np.float32 and y.shape == (32000,)
    np.testing.assert_allclose(y, soxr.resample(x, SR, 32000, quality="HQ"), atol=1e-6)
    # The tone survives resampling: dominant bin at 1 kHz (1 Hz bins for 1 s).
    assert np.argmax(np.abs(np.fft.rfft(y))) == 1000


def test_load_audio_mixes_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = _tone(freq=300.0), _tone(freq=700.0)
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    y = tau.load_audio(path, SR)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


def test_load_audio_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(tau.MissingClipError, match="missing.wav: audio file not found"):
        tau.load_audio(missing)

    wrong_sr = tmp_path / "wrong_sr.wav"
    sf.write(wrong_sr, _tone(sr=16000), 16000, subtype="PCM_16")
    with pytest.raises(tau.BadClipError, match="wrong_sr.wav: sample rate 16000 Hz, expected 44100 Hz"):
        tau.load_audio(wrong_sr)
    assert tau.load_audio(wrong_sr, 16000, expected_sr=16000).shape == (16000,)  # configurable
    assert tau.load_audio(wrong_sr, 16000, expected_sr=None).shape == (16000,)

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(tau.BadClipError, match="corrupt.wav: unreadable or corrupt audio"):
        tau.load_audio(corrupt)

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"")
    with pytest.raises(tau.BadClipError, match="garbage.wav: unreadable or corrupt audio"):
        tau.load_audio(garbage)

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.int16), SR, subtype="PCM_16")
    with pytest.raises(tau.BadClipError, match="empty.wav: empty audio"):
        tau.load_audio(empty)

    short = tmp_path / "short.wav"
    sf.write(short, _tone(0.5), SR, subtype="PCM_16")
    with pytest.raises(tau.BadClipError, match="short.wav: 22050 samples, expected 44100"):
        tau.load_audio(short, expected_duration=1.0)

    nan = tmp_path / "nan.wav"
    x = _tone()
    x[10] = np.nan
    sf.write(nan, x, SR, subtype="FLOAT")
    with pytest.raises(tau.BadClipError, match="nan.wav: audio contains NaN"):
        tau.load_audio(nan)


# ---------------------------------------------------------------------------- skip mode, end to end
def _bad_split(root):
    """split10: two good clips (one stereo), and one clip for every kind of per-clip failure."""
    good = [("audio/airport-lisbon-1000-40000-5-a.wav", "airport", "lisbon-1000", "a"),
            ("audio/bus-lyon-1045-40100-5-b.wav", "bus", "lyon-1045", "b")]
    stereo = ("audio/park-lyon-2-2-5-c.wav", "park", "lyon-2", "c")
    bad = {
        "truncated": ("audio/metro-paris-3-3-5-a.wav", "metro", "paris-3", "a"),
        "corrupt": ("audio/tram-paris-4-4-5-a.wav", "tram", "paris-4", "a"),
        "wrong_rate": ("audio/park-paris-5-5-5-a.wav", "park", "paris-5", "a"),
        "nan": ("audio/bus-paris-6-6-5-a.wav", "bus", "paris-6", "a"),
        "missing": ("audio/metro-lyon-7-7-5-a.wav", "metro", "lyon-7", "a"),
        "bad_label": ("audio/beach-lyon-8-8-5-a.wav", "beach", "lyon-8", "a"),
    }
    rows = [*good, stereo, *bad.values()]
    _tsv(root / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), [*META, *rows])
    _tsv(root / "split_setup" / "split10.csv", ("filename",),
         [(r[0],) for r in rows] + [("audio/ghost-x-9-9-5-a.wav",)])  # listed, not in meta.csv
    for name, *_ in good:
        sf.write(root / name, _tone(), SR, subtype="PCM_16")
    sf.write(root / stereo[0], np.stack([_tone(freq=300.0), _tone(freq=700.0)], axis=1), SR, subtype="PCM_16")
    sf.write(root / bad["truncated"][0], _tone(), SR, subtype="PCM_16")
    data = (root / bad["truncated"][0]).read_bytes()
    (root / bad["truncated"][0]).write_bytes(data[: len(data) // 2])  # cut off mid-data
    (root / bad["corrupt"][0]).write_bytes(np.random.default_rng(0).bytes(8000))
    sf.write(root / bad["wrong_rate"][0], _tone(sr=48000), 48000, subtype="PCM_16")
    x = _tone()
    x[100] = np.nan  # a valid header: only decoding finds it
    sf.write(root / bad["nan"][0], x, SR, subtype="FLOAT")
    sf.write(root / bad["bad_label"][0], _tone(), SR, subtype="PCM_16")
    return [g[0] for g in good], stereo[0], {k: v[0] for k, v in bad.items()}


def test_skip_mode_covers_every_per_clip_failure(fake_tau, caplog):
    from asc_jax.data import pipeline, sources

    good, stereo, bad = _bad_split(fake_tau)
    with caplog.at_level(logging.WARNING):
        opened = sources.load_split_source(fake_tau, "10", on_error="skip", threads=2)
    assert [c.filename for c in opened.clips] == [*good, stereo]  # meta.csv order
    reasons = {s.filename: s.reason for s in opened.skipped}
    assert set(reasons) == {*bad.values(), "audio/ghost-x-9-9-5-a.wav"}
    assert "unknown scene label 'beach'" in reasons[bad["bad_label"]]
    assert "not in meta.csv" in reasons["audio/ghost-x-9-9-5-a.wav"]
    assert reasons[bad["missing"]] == "audio file not found"
    assert reasons[bad["truncated"]].startswith("22") and "expected 44100" in reasons[bad["truncated"]]
    assert "unreadable or corrupt audio" in reasons[bad["corrupt"]]
    assert reasons[bad["wrong_rate"]] == "sample rate 48000 Hz, expected 44100 Hz"
    assert reasons[bad["nan"]] == "audio contains NaN or Inf"
    # One warning per split for the skipped clips: the count and the first names.
    skip_logs = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skip_logs) == 1, skip_logs
    assert skip_logs[0].startswith("split 10: skipped 7 of 10 clips: ")
    assert bad["bad_label"] in skip_logs[0] and "and 2 more" in skip_logs[0]
    # Stereo is averaged to mono, said once, with the count.
    stereo_logs = [r.getMessage() for r in caplog.records if "channel" in r.getMessage()]
    assert stereo_logs == ["split 10: 1 of 3 clips have more than one channel; they are averaged to mono"]
    assert opened.n_multichannel == 1
    # The remaining clips load; the check decoded them into the cache, so no file is read again.
    for name in (*good, stereo):
        (fake_tau / name).unlink()
    batch = next(pipeline.eval_batches(opened.source, 4))
    assert batch["audio"].shape == (4, 32000) and list(batch["mask"]) == [True, True, True, False]
    np.testing.assert_allclose(
        batch["audio"][2], soxr.resample((_tone(freq=300.0) + _tone(freq=700.0)) / 2, SR, 32000, quality="HQ"),
        atol=1e-3)


def test_raise_mode_names_the_first_bad_file_before_training(fake_tau):
    from asc_jax.data import sources

    good, stereo, bad = _bad_split(fake_tau)
    with pytest.raises(tau.MissingClipError, match=r"metro-lyon-7-7-5-a.wav: audio file not found"):
        sources.load_split_source(fake_tau, "10")
    # Without the metadata problems, the up-front header check names the first bad audio file.
    _tsv(fake_tau / "split_setup" / "split10.csv", ("filename",),
         [(n,) for n in (*good, stereo, bad["truncated"], bad["corrupt"])])
    with pytest.raises(tau.BadClipError, match=r"metro-paris-3-3-5-a.wav: 22\d+ samples, expected 44100"):
        sources.load_split_source(fake_tau, "10")
    # A NaN passes the header check and is named when the clip is read.
    _tsv(fake_tau / "split_setup" / "split10.csv", ("filename",), [(n,) for n in (*good, bad["nan"])])
    opened = sources.load_split_source(fake_tau, "10", cache=False)
    with pytest.raises(tau.BadClipError, match=r"bus-paris-6-6-5-a.wav: audio contains NaN"):
        opened.source[2]


def test_training_data_skip_mode(fake_tau, caplog):
    """train.loop.prepare_data opens both splits this way under data.on_error='skip'."""
    from asc_jax.config import Config, DataConfig
    from asc_jax.train import loop

    good, stereo, bad = _bad_split(fake_tau)
    config = Config(data=DataConfig(root=str(fake_tau), generate=False, train_split="10", on_error="skip"))
    with caplog.at_level(logging.WARNING):
        data = loop.prepare_data(config)
    assert [c.filename for c in data.train_clips] == [*good, stereo]
    assert [c.filename for c in data.train_source.clips] == [*good, stereo]
    assert len(data.eval_clips) == 2
    assert sum("skipped 7 of 10" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(tau.MissingClipError, match="metro-lyon-7-7-5-a.wav"):
        loop.prepare_data(dataclasses.replace(config, data=dataclasses.replace(config.data, on_error="raise")))


def test_metadata_problems_are_per_clip(fake_tau, caplog):
    rows = [META[0], META[0], ("audio/park-barcelona-3-88-0-b.wav", "park", "", "b")]
    _tsv(fake_tau / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), rows)
    with pytest.raises(tau.BadClipError, match="airport-lisbon-1000-40000-0-a.wav: listed 2 times in meta.csv"):
        tau.load_split(fake_tau, "5")
    with caplog.at_level(logging.WARNING, logger="asc_jax.data.tau"):
        clips, skipped = tau.load_split(fake_tau, "5", on_error="skip")
    assert clips == []
    assert skipped == [tau.Skipped(META[0][0], "listed 2 times in meta.csv"),
                       tau.Skipped(META[3][0], "meta.csv row has no identifier")]
    assert len(caplog.records) == 1 and "skipped 2 of 2 clips" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asc_jax.data.tau"):
        assert len(tau.load_split(fake_tau, "5", on_error="skip", report=False)[1]) == 2
    assert not caplog.records  # the caller reports


def test_header_check_catches_truncation(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(), SR, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    assert tau.check_audio_header(path).frames < SR  # libsndfile counts the frames present
    with pytest.raises(tau.BadClipError, match=r"cut.wav: 43\d+ samples, expected 44100 \(1.0 s at 44100 Hz\)"):
        tau.check_audio_header(path, expected_duration=1.0)
