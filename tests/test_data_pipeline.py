"""grain waveform pipeline: batch contents, roll, remainder, eval padding, resumable state."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import soundfile as sf
from absl import flags

from asc_jax.audio import augment
from asc_jax.data import pipeline, sources, tau

SR = 32000
N_CLIPS = 37  # not a multiple of any batch size used below


def _waveform(i: int) -> np.ndarray:
    """Clip i: an offset (identifies the clip) plus a ramp (makes every shift visible)."""
    return (0.01 * i + np.arange(SR) / (10.0 * SR)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A TAU-layout tree of 37 float32 32 kHz clips with exactly known content."""
    root = tmp_path_factory.mktemp("pipe")
    (root / "audio").mkdir()
    rows = []
    for i in range(N_CLIPS):
        scene = tau.CLASSES[i % 10]
        name = f"audio/{scene}-lyon-{i}-{i}-0-a.wav"
        sf.write(root / name, _waveform(i), SR, subtype="FLOAT")
        rows.append(f"{name}\t{scene}\tlyon-{i}\ta")
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n" + "\n".join(rows) + "\n")
    (root / "split100.csv").write_text("filename\n" + "\n".join(r.split("\t")[0] for r in rows) + "\n")
    clips = tau.load_split(root, "100", verify="audio", expected_sr=SR)
    return root, clips


@pytest.fixture
def source(dataset):
    root, clips = dataset
    return sources.ClipSource(clips, root, sr=SR, expected_sr=SR)


def _check_batch(batch, clips, batch_size, max_shift=4000):
    assert set(batch) == {"audio", "label", "index", "roll"}
    assert batch["audio"].shape == (batch_size, SR) and batch["audio"].dtype == np.float32
    for key in ("label", "index", "roll"):
        assert batch[key].shape == (batch_size,) and batch[key].dtype == np.int32, key
    assert np.all(np.abs(batch["roll"]) <= max_shift)
    for audio, label, index, roll in zip(batch["audio"], batch["label"], batch["index"], batch["roll"]):
        assert label == clips[index].label
        np.testing.assert_array_equal(audio, np.roll(_waveform(index), roll))


def test_batches_shapes_content_and_roll(source, dataset):
    _, clips = dataset
    it = iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR))
    rolls = []
    for _ in range(10):
        batch = next(it)
        _check_batch(batch, clips, 8)
        rolls.extend(batch["roll"])
    rolls = np.array(rolls)
    # 125 ms at 32 kHz = 4000 samples either way; 80 draws spread over the range.
    assert rolls.min() < -2000 and rolls.max() > 2000 and len(set(rolls)) > 70


def test_drop_remainder_and_epochs(source):
    one_epoch = list(pipeline.train_dataset(source, batch_size=8, seed=1, sr=SR, num_epochs=1))
    assert len(one_epoch) == N_CLIPS // 8
    seen = np.concatenate([b["index"] for b in one_epoch])
    assert len(set(seen)) == len(seen) == 32  # a permutation prefix: no clip twice

    two_epochs = list(pipeline.train_dataset(source, batch_size=8, seed=1, sr=SR, num_epochs=2))
    assert len(two_epochs) == 2 * N_CLIPS // 8
    counts = collections.Counter(np.concatenate([b["index"] for b in two_epochs]))
    assert max(counts.values()) == 2 and sum(counts.values()) == 72
    first, second = (np.concatenate([b["index"] for b in two_epochs])[k * N_CLIPS:(k + 1) * N_CLIPS] for k in (0, 1))
    assert sorted(first) == list(range(N_CLIPS)) and not np.array_equal(first, second)  # reshuffled


def test_seed_changes_order_and_rolls(source):
    a = next(iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR)))
    b = next(iter(pipeline.train_dataset(source, batch_size=8, seed=1, sr=SR)))
    assert not np.array_equal(a["index"], b["index"])
    c = next(iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR)))
    for key in a:
        np.testing.assert_array_equal(a[key], c[key])


def test_no_roll(source, dataset):
    batch = next(iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR, roll=None)))
    assert np.all(batch["roll"] == 0)
    _check_batch(batch, dataset[1], 8, max_shift=0)


def test_roll_bound_is_the_configs_in_samples_of_the_stream(source, dataset):
    # 10 ms at 32 kHz: 320 samples; the same RollConfig the device-side sampler reads.
    roll = augment.RollConfig(max_shift_s=0.01)
    it = iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR, roll=roll))
    rolls = np.concatenate([b["roll"] for b in (next(it) for _ in range(10))])
    assert np.abs(rolls).max() <= roll.max_shift(SR) == 320 and np.abs(rolls).max() > 160


def _extra(index: int, rng: np.random.Generator) -> dict:
    return {"teacher": np.full(3, index, np.float32), "aug": {"view": rng.integers(1000)}}


def test_iterator_state_round_trip_with_extra(source):
    """Resuming from get_state() continues the exact stream, rolls and extras included."""
    def make():
        return pipeline.train_dataset(source, batch_size=8, seed=5, sr=SR, extra=_extra)

    it = iter(make())
    for _ in range(6):  # past the first epoch boundary (37 clips / 8)
        next(it)
    state = it.get_state()
    assert json.loads(json.dumps(state)) == state  # storable in a checkpoint
    expected = [next(it) for _ in range(5)]

    resumed = iter(make())
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(5)]):
        assert set(got) == {"audio", "label", "index", "roll", "teacher", "aug"}
        np.testing.assert_array_equal(got["teacher"][:, 0], got["index"])
        assert got["aug"]["view"].shape == (8,)
        for key in ("audio", "label", "index", "roll", "teacher"):
            np.testing.assert_array_equal(want[key], got[key])
        np.testing.assert_array_equal(want["aug"]["view"], got["aug"]["view"])


def test_extra_cannot_overwrite_fields(source):
    it = iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR, extra=lambda i, rng: {"label": 3}))
    with pytest.raises(ValueError, match=r"extra fields \['label'\] collide"):
        next(it)


def test_eval_batches_pad_and_mask_every_clip_once(source, dataset):
    _, clips = dataset
    batches = list(pipeline.eval_batches(source, 8, sr=SR))
    assert len(batches) == 5
    for batch in batches:
        assert batch["audio"].shape == (8, SR) and batch["mask"].shape == (8,) and batch["mask"].dtype == bool
    index = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(index[mask], np.arange(N_CLIPS))  # in order, each once
    assert mask.sum() == N_CLIPS and np.all(index[~mask] == -1)
    last = batches[-1]
    np.testing.assert_array_equal(last["audio"][~last["mask"]], 0.0)
    for audio, label, i in zip(last["audio"][last["mask"]], last["label"][last["mask"]], last["index"][last["mask"]]):
        np.testing.assert_array_equal(audio, _waveform(i))  # no roll in evaluation
        assert label == clips[i].label


def test_too_few_clips_for_a_batch(source):
    with pytest.raises(ValueError, match="37 clips cannot fill one batch of 64"):
        pipeline.train_dataset(source, batch_size=64, seed=0, sr=SR)


def test_sample_rate_mismatch_with_source(source):
    with pytest.raises(ValueError, match="decodes at 32000 Hz but sr=16000"):
        pipeline.train_dataset(source, batch_size=8, seed=0, sr=16000)


def test_cache_avoids_rereading(tmp_path):
    sf.write(tmp_path / "x.wav", _waveform(3), SR, subtype="FLOAT")
    clip = tau.Clip("x.wav", 3, "a", "lyon", "lyon-3")
    cached = sources.ClipSource([clip], tmp_path, sr=SR, expected_sr=SR)
    uncached = sources.ClipSource([clip], tmp_path, sr=SR, expected_sr=SR, cache=False)
    first = cached[0]["audio"]
    uncached[0]
    (tmp_path / "x.wav").unlink()
    assert cached[0]["audio"] is first
    with pytest.raises(tau.MissingClipError, match="x.wav"):
        uncached[0]


def test_tau_rate_clips_are_resampled_and_length_checked(tmp_path):
    t = np.arange(44100) / 44100
    sf.write(tmp_path / "ok.wav", (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 44100, subtype="PCM_16")
    sf.write(tmp_path / "short.wav", np.zeros(22050, np.float32), 44100, subtype="PCM_16")
    ok = tau.Clip("ok.wav", 1, "a", "lyon", "lyon-1")
    batch = next(pipeline.eval_batches([ok], 2, root=tmp_path))
    assert batch["audio"].shape == (2, 32000) and list(batch["mask"]) == [True, False]
    assert np.argmax(np.abs(np.fft.rfft(batch["audio"][0]))) == 500  # 1 Hz bins over 1 s

    short = tau.Clip("short.wav", 1, "a", "lyon", "lyon-1")
    with pytest.raises(tau.BadClipError, match=r"short.wav: 16000 samples at 32000 Hz, expected 32000"):
        next(iter(pipeline.train_dataset([ok, short], root=tmp_path, batch_size=2, seed=0)))


def _absl_flags_state() -> tuple[bool, dict, set]:
    """(parsed?, every flag's value, the flags marked as given on the command line)."""
    given = {name for name in flags.FLAGS if flags.FLAGS[name].present}
    return flags.FLAGS.is_parsed(), flags.FLAGS.flag_values_dict(), given


@pytest.mark.slow
def test_worker_processes_give_the_same_stream(source, monkeypatch):
    """Also: workers start in a process that never parsed absl flags (grain 0.2.18 reads one of
    its flags there, see pipeline._make_grain_worker_flag_readable), and the global FLAGS are
    left as they were: still unparsed if they were, every value unchanged, and no flag but
    that one of grain's marked as given."""
    # As in a fresh script, whichever test ran before in this process.
    monkeypatch.setattr(flags.FLAGS[pipeline._GRAIN_WORKER_PROFILING_FLAG], "present", 0)
    parsed, values, present = _absl_flags_state()
    plain = iter(pipeline.train_dataset(source, batch_size=8, seed=2, sr=SR))
    workers = iter(pipeline.train_dataset(source, batch_size=8, seed=2, sr=SR, worker_count=1))
    for _ in range(3):
        want, got = next(plain), next(workers)
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    state = workers.get_state()
    want = next(workers)
    resumed = iter(pipeline.train_dataset(source, batch_size=8, seed=2, sr=SR, worker_count=1))
    resumed.set_state(state)
    got = next(resumed)
    for key in want:
        np.testing.assert_array_equal(want[key], got[key])
    for it in (workers, resumed):
        it.close()
    after_parsed, after_values, after_present = _absl_flags_state()
    assert after_parsed == parsed and after_values == values
    assert after_present - present <= {pipeline._GRAIN_WORKER_PROFILING_FLAG}
