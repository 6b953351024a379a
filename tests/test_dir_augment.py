"""Device impulse-response (DIR) augmentation: IR folders, the convolution, the per-device draw,
the host pipeline (fresh and replayed), and teacher stores that record and check it."""
import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from asc_jax import distill
from asc_jax.audio import augment as aug
from asc_jax.audio import impulse
from asc_jax.audio.frontends import Frontend
from asc_jax.config import Config, DataConfig, config_diff, to_dict
from asc_jax.data import pipeline, sources, tau

SR = 32000
DEVICES = ("a", "b", "a", "s1", "a", "c", "a", "b")  # clip i is recorded by DEVICES[i]


def _write_irs(folder: Path, lengths=(1, 200, 64), seed=0) -> list[np.ndarray]:
    """IRs ir_0.wav, ir_1.wav, ... at SR Hz: a unit delta for length 1, else decaying noise.
    Float32 wavs, so they read back bit for bit."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    irs = []
    for i, n in enumerate(lengths):
        decay = np.exp(-np.arange(n) / (n / 4))
        ir = np.ones(1, np.float32) if n == 1 else (rng.normal(size=n) * decay).astype(np.float32)
        sf.write(folder / f"ir_{i}.wav", ir, SR, subtype="FLOAT")
        irs.append(ir)
    return irs


@pytest.fixture(scope="module")
def ir_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("irs") / "mics"
    return folder, _write_irs(folder)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """len(DEVICES) one-second 44.1 kHz noise clips in TAU layout (split "100"), mixed devices."""
    root = tmp_path_factory.mktemp("dir_tau")
    (root / "audio").mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i, device in enumerate(DEVICES):
        scene = tau.CLASSES[i]
        name = f"audio/{scene}-lyon-{i}-{i}-0-{device}.wav"
        sf.write(root / name, rng.normal(0, 0.1, tau.TAU_SAMPLE_RATE).astype(np.float32), tau.TAU_SAMPLE_RATE,
                 subtype="FLOAT")
        rows.append(f"{name}\t{scene}\tlyon-{i}\t{device}")
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n" + "\n".join(rows) + "\n")
    (root / "split100.csv").write_text("filename\n" + "\n".join(r.split("\t")[0] for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def source(dataset):
    return sources.ClipSource(tau.load_split(dataset, "100"), dataset, sr=SR)


# ------------------------------------------------------------------------- IR folder and the op
def test_delta_ir_leaves_audio_unchanged_and_a_known_ir_is_numpys_convolution(ir_folder):
    folder, irs = ir_folder
    bank = aug.DIRConfig(folder=str(folder)).load(SR)
    assert bank.names == ("ir_0.wav", "ir_1.wav", "ir_2.wav") and len(bank) == 3
    cfg = aug.DIRConfig(folder=str(folder))
    wave = np.random.default_rng(2).normal(0, 0.1, (3, SR)).astype(np.float32)
    delta = cfg.apply(wave[0], {"ir": 0}, bank)
    assert delta.dtype == np.float32 and delta.shape == (SR,)
    np.testing.assert_allclose(delta, wave[0], rtol=0, atol=1e-7)
    assert np.mean(delta == wave[0]) > 0.99  # FFT rounding only, nearly always below half an ulp
    for index in (1, 2):
        want = np.convolve(wave[1].astype(np.float64), irs[index].astype(np.float64))[:SR]
        np.testing.assert_allclose(cfg.apply(wave[1], {"ir": index}, bank), want, rtol=0, atol=1e-5)
    # -1 is "not applied": the very same array; a batch convolves row by row.
    row = wave[2]
    assert cfg.apply(row, {"ir": -1}, bank) is row
    batch = cfg.apply(wave, {"ir": np.array([2, -1, 1])}, bank)
    np.testing.assert_array_equal(batch[0], cfg.apply(wave[0], {"ir": 2}, bank))
    np.testing.assert_array_equal(batch[1], wave[1])
    np.testing.assert_array_equal(batch[2], cfg.apply(wave[2], {"ir": 1}, bank))
    # An IR longer than the clip: still the full convolution cut to the clip.
    x, h = wave[0, :50], irs[1]
    np.testing.assert_allclose(impulse.convolve_ir(x, h), np.convolve(x, h)[:50], rtol=0, atol=1e-6)
    with pytest.raises(impulse.IRError, match=r"IR index 3 is outside the 3 IRs of .*mics"):
        cfg.apply(wave[0], {"ir": 3}, bank)


def test_ir_set_identity_is_by_content_not_path(ir_folder, tmp_path):
    folder, _ = ir_folder
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    (copy / "notes.txt").write_text("not an IR")  # non-wav files are not IRs
    assert impulse.load_irs(copy, SR).identity() == impulse.load_irs(folder, SR).identity()
    _write_irs(tmp_path / "other", seed=5)
    other = impulse.load_irs(tmp_path / "other", SR).identity()
    assert other["files"] == ["ir_0.wav", "ir_1.wav", "ir_2.wav"]
    assert other["sha256"] != impulse.load_irs(folder, SR).identity()["sha256"]


def test_bad_ir_folders_are_named(tmp_path):
    with pytest.raises(impulse.IRError, match="augment.dir.folder is empty"):
        aug.DIRConfig().load(SR)
    with pytest.raises(impulse.IRError, match=r"folder .*missing does not exist"):
        impulse.load_irs(tmp_path / "missing", SR)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(impulse.IRError, match=r"folder .*empty holds no .wav files"):
        impulse.load_irs(tmp_path / "empty", SR)

    def folder_with(name, write):
        folder = tmp_path / name
        _write_irs(folder, lengths=(8, 8))
        write(folder / "ir_bad.wav")
        return folder

    cases = {
        "unreadable": (lambda p: p.write_bytes(b"RIFF not really a wav"), "unreadable or corrupt"),
        "rate": (lambda p: sf.write(p, np.ones(8, np.float32), 44100, subtype="FLOAT"),
                 "sample rate 44100 Hz, the pipeline's is 32000 Hz"),
        "zeros": (lambda p: sf.write(p, np.zeros(8, np.float32), SR, subtype="FLOAT"), "all zeros"),
        "nan": (lambda p: sf.write(p, np.array([1.0, np.nan], np.float32), SR, subtype="FLOAT"),
                "contains NaN or Inf"),
    }
    for name, (write, reason) in cases.items():
        folder = folder_with(name, write)
        with pytest.raises(impulse.IRError, match=rf"impulse response {folder / 'ir_bad.wav'}: {reason}"):
            impulse.load_irs(folder, SR)


def test_config_checks_and_round_trip(ir_folder):
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        aug.DIRConfig(folder="x", p=1.5)
    with pytest.raises(TypeError, match="tuple of device names"):
        aug.DIRConfig(folder="x", devices="a")
    cfg = aug.AugmentConfig(dir=aug.DIRConfig(folder=str(ir_folder[0]), p=0.3, devices=("a", "b")))
    # Through JSON (a store header): devices come back as a tuple.
    assert aug.config_from_dict(json.loads(json.dumps(aug.config_to_dict(cfg)))) == cfg
    # A run recorded before DIR existed (no "dir" in its config.json) resumes under the default.
    stored = to_dict(Config())
    del stored["augment"]["dir"]
    assert config_diff(stored, Config()) == []


def test_device_side_augmentation_refuses_dir():
    cfg = aug.AugmentConfig(dir=aug.DIRConfig(folder="x"))
    wave = jnp.zeros((2, 800))
    with pytest.raises(ValueError, match=r"augment_batch runs on device, but augmentations \['dir'\] run on "
                                         r"the host"):
        aug.augment_batch(jax.random.key(0), wave, cfg, sr=8000)
    with pytest.raises(ValueError, match=r"dataclasses.replace\(cfg, dir=None\)"):
        aug.apply_augment(wave, {}, cfg)


# ------------------------------------------------------------------------------------- draws
def test_only_listed_devices_are_convolved_at_rate_p():
    cfg = aug.DIRConfig(folder="x", p=0.6)
    rng = np.random.default_rng(0)
    n = 20_000
    host_a = np.array([cfg.sample_host(rng, "a", 4) for _ in range(n)])
    assert all(cfg.sample_host(rng, device, 4) == -1 for device in ("b", "c", "s1", "A") for _ in range(500))
    # Store draws (per-clip JAX keys): the same distribution.
    keys = distill.view_keys(7, np.arange(n), 0)
    sample = aug.example_sampler(aug.AugmentConfig(roll=None, freq_mask=None, mixstyle=None, dir=cfg), SR, n_irs=4)
    stored = np.asarray(sample(keys, ["a", "b"] * (n // 2))["dir"]["ir"])
    assert stored.dtype == np.int32 and np.all(stored[1::2] == -1)
    for draws in (host_a, stored[::2]):
        applied = draws >= 0
        assert abs(applied.mean() - 0.6) < 0.02  # 0.6 within ~4 standard deviations
        counts = np.bincount(draws[applied], minlength=4)
        assert len(counts) == 4 and counts.min() > 0.22 * applied.sum()  # every IR, about uniformly
    with pytest.raises(ValueError, match="needs each clip's device"):
        sample(keys)
    with pytest.raises(ValueError, match="needs n_irs"):
        aug.example_sampler(aug.AugmentConfig(mixstyle=None, dir=cfg), SR)


def test_adding_dir_keeps_the_other_augmentations_draws(source, ir_folder):
    keys = distill.view_keys(3, np.arange(64), 1)
    base = aug.AugmentConfig(freq_mask=aug.FreqMaskConfig(24, 64), mixstyle=None)
    with_dir = dataclasses.replace(base, dir=aug.DIRConfig(folder=str(ir_folder[0]), p=1.0))
    a = aug.example_sampler(base, SR)(keys)
    b = aug.example_sampler(with_dir, SR, n_irs=3)(keys, ["a"] * 64)
    assert set(b) == {"roll", "freq_mask", "dir"}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves({k: b[k] for k in a})):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The host stream: the same seed gives the same order and shifts with DIR on.
    plain = next(iter(pipeline.train_dataset(source, batch_size=8, seed=4, sr=SR)))
    dirred = next(iter(pipeline.train_dataset(source, batch_size=8, seed=4, sr=SR, dir=with_dir.dir)))
    for key in ("index", "label", "roll"):
        np.testing.assert_array_equal(plain[key], dirred[key])


# ----------------------------------------------------------------------------------- pipeline
def _expected(source, bank, cfg, index, ir, shift):
    """What the pipeline must produce for one clip: DIR first, then the roll."""
    return np.roll(cfg.apply(source.audio(index), {"ir": ir}, bank), shift)


def test_pipeline_convolves_device_a_clips_then_rolls(source, ir_folder):
    cfg = aug.DIRConfig(folder=str(ir_folder[0]), p=1.0)
    bank = cfg.load(SR)
    it = iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR, dir=cfg))
    seen = set()
    for _ in range(3):
        batch = next(it)
        assert set(batch) == {"audio", "label", "index", "roll", "dir"} and batch["dir"].dtype == np.int32
        for audio, index, ir, shift in zip(batch["audio"], batch["index"], batch["dir"], batch["roll"]):
            assert (ir >= 0) == (DEVICES[index] == "a")  # p = 1: every device-a clip, no other
            np.testing.assert_array_equal(audio, _expected(source, bank, cfg, index, ir, shift))
            seen.add(int(ir))
    assert seen == {-1, 0, 1, 2}


def test_pipeline_replays_a_stored_ir_index(source, ir_folder):
    cfg = aug.DIRConfig(folder=str(ir_folder[0]), p=0.0)  # fresh draws would never convolve
    bank = cfg.load(SR)

    def stored(index, rng):  # a store's view: IR 1 on even clips, none on odd ones, whatever device
        return {"aug": {"dir": {"ir": np.int32(1 if index % 2 == 0 else -1)}, "roll": {"shift": np.int32(index)}}}

    batch = next(iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR, dir=cfg, extra=stored)))
    np.testing.assert_array_equal(batch["dir"], np.where(batch["index"] % 2 == 0, 1, -1))
    np.testing.assert_array_equal(batch["roll"], batch["index"])
    for audio, index in zip(batch["audio"], batch["index"]):
        ir = 1 if index % 2 == 0 else -1
        np.testing.assert_array_equal(audio, _expected(source, bank, cfg, index, ir, index))
    # A stored index without DIR in the pipeline cannot be honoured.
    with pytest.raises(ValueError, match=r"stored device-IR index .*\(augment.dir is None\)"):
        next(iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR, extra=stored)))


def test_pipeline_names_a_bad_ir_folder_up_front(source, tmp_path):
    (tmp_path / "irs").mkdir()
    with pytest.raises(impulse.IRError, match="holds no .wav files"):
        pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR,
                               dir=aug.DIRConfig(folder=str(tmp_path / "irs")))


# ----------------------------------------------------------------------------- teacher stores
N_MELS = 16


def _toy_teacher(name, seen):
    """Mean over time of a toy log-mel times random weights; appends every wave it hears."""

    def features(wave):
        jax.debug.callback(lambda w: seen.append(np.asarray(w)), wave)
        return jnp.log(jnp.abs(wave.reshape(wave.shape[0], N_MELS, -1)) + 1e-3)

    class Toy(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.asarray(np.random.default_rng(0).normal(size=(N_MELS, len(tau.CLASSES)))))

        def __call__(self, x, train=False):
            return x.mean(-1) @ self.w.value, {}

    frontend = Frontend("toy", {"n_mels": N_MELS}, SR, N_MELS, features, lambda v: v)
    return distill.Teacher(name, Path(name), {"model": {"name": name.split("-")[0]}}, frontend, Toy())


def test_store_records_dir_and_refuses_another_ir_folder(tmp_path, dataset, source, ir_folder):
    dir_cfg = aug.DIRConfig(folder=str(ir_folder[0]), p=0.6)
    store_cfg = aug.AugmentConfig(roll=aug.RollConfig(max_shift_s=0.01), freq_mask=None, mixstyle=None,
                                  dir=dir_cfg)
    config = Config(data=DataConfig(root=str(dataset), generate=False, train_split="100"), augment=store_cfg)
    seen = []
    store = distill.precompute(tmp_path / "s", config=config, teachers=[_toy_teacher("cp_resnet-a", seen)],
                               n_views=3, seed=11, batch_size=8, progress=False)
    jax.effects_barrier()
    bank = dir_cfg.load(SR)
    assert store.meta["dir_irs"] == bank.identity()
    irs = np.asarray(store.aug["dir"]["ir"])
    assert irs.shape == (len(DEVICES), 3) and irs.dtype == np.int32
    device_a = np.array([d == "a" for d in DEVICES])
    assert np.all(irs[~device_a] == -1) and (irs[device_a] >= 0).any() and (irs[device_a] == -1).any()
    # The indices are the per-clip draws, and the teachers heard DIR, then the roll, per view.
    direct = aug.example_sampler(store_cfg, SR, n_irs=3)(distill.view_keys(11, np.arange(len(DEVICES)), 2),
                                                          list(DEVICES))
    np.testing.assert_array_equal(irs[:, 2], np.asarray(direct["dir"]["ir"]))
    for view in range(3):
        for i in range(len(DEVICES)):
            want = _expected(source, bank, dir_cfg, i, irs[i, view], store.aug["roll"]["shift"][i, view])
            np.testing.assert_array_equal(seen[view][i], want)

    files = [c.filename for c in source.clips]
    copy = tmp_path / "same_irs_elsewhere"
    shutil.copytree(ir_folder[0], copy)
    student = dataclasses.replace(store_cfg, dir=dataclasses.replace(dir_cfg, folder=str(copy)),
                                  mixstyle=aug.MixStyleConfig())
    hook = distill.StoreExtras(store.path, files, tau.CLASSES, augment=student, sample_rate=SR)
    # The student's pipeline replays what the teacher heard.
    batch = next(iter(pipeline.train_dataset(source, batch_size=8, seed=0, sr=SR, roll=student.roll,
                                             dir=student.dir, extra=hook)))
    np.testing.assert_array_equal(batch["dir"], batch["aug"]["dir"]["ir"])
    np.testing.assert_array_equal(batch["roll"], batch["aug"]["roll"]["shift"])
    for audio, index, ir, shift in zip(batch["audio"], batch["index"], batch["dir"], batch["roll"]):
        assert any(irs[index, v] == ir and store.aug["roll"]["shift"][index, v] == shift for v in range(3))
        np.testing.assert_array_equal(audio, _expected(source, bank, dir_cfg, index, ir, shift))

    _write_irs(tmp_path / "other_irs", seed=9)
    other = dataclasses.replace(student, dir=dataclasses.replace(dir_cfg, folder=str(tmp_path / "other_irs")))
    with pytest.raises(distill.StoreError, match=r"dir: the store's IRs \(\[ir_0.wav, ir_1.wav, ir_2.wav\], "
                                                 r"sha256 \w+\) are not those of the student's "
                                                 r"augment.dir.folder .*other_irs"):
        distill.StoreExtras(store.path, files, tau.CLASSES, augment=other, sample_rate=SR)
    for change, message in ((None, r"dir: store DIRConfig\(folder=.*, student None \(disabled\)"),
                            (dataclasses.replace(dir_cfg, p=0.5), r"dir.p: store 0.6, student 0.5"),
                            (dataclasses.replace(dir_cfg, devices=("a", "b")),
                             r"dir.devices: store \('a',\), student")):
        with pytest.raises(distill.StoreError, match=message):
            distill.StoreExtras(store.path, files, tau.CLASSES, augment=dataclasses.replace(student, dir=change),
                                sample_rate=SR)
    # A store whose header does not say which IRs its indices point into cannot vouch for them.
    header = json.loads((store.path / "header.json").read_text())
    del header["meta"]["dir_irs"]
    (store.path / "header.json").write_text(json.dumps(header))
    with pytest.raises(distill.StoreError, match=r"records no IR set \(meta\['dir_irs'\]\)"):
        distill.StoreExtras(store.path, files, tau.CLASSES, augment=student, sample_rate=SR)
