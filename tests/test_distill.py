"""KD loss, teacher ensembles, the teacher-logit store, precompute and the grain hook."""
import dataclasses
import json
import pickle
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asc_jax import distill
from asc_jax.audio import augment as aug
from asc_jax.audio.frontends import Frontend
from asc_jax.config import Config, DataConfig
from asc_jax.data import sources
from asc_jax.data.tau import CLASSES as TAU_CLASSES, TAU_SAMPLE_RATE, load_split
from tests.conftest import write_tau_dataset

CLASSES = ("airport", "bus", "metro", "park")
TEACHERS = ("passt-s1", "cp_resnet-s1", "passt-s2", "tf_sepnet")


# ------------------------------------------------------------------------------------- KD loss
def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kd(s, t, y, lam, tau, sq):
    s, t = s.astype(np.float64), t.astype(np.float64)
    ce = -_np_log_softmax(s)[np.arange(len(y)), y].mean()
    log_ps = _np_log_softmax(s / tau)
    kls = []
    for k in range(t.shape[1]):
        log_pt = _np_log_softmax(t[:, k] / tau)
        kls.append((np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean())
    kl = np.mean(kls)
    return lam * ce + (1 - lam) * (tau**2 if sq else 1.0) * kl, ce, np.array(kls)


def _logits(b=16, k=3, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 2, (b, c)).astype(np.float32), rng.normal(0, 2, (b, k, c)).astype(np.float32),
            rng.integers(0, c, b))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("sq", [False, True])
def test_kd_loss_matches_numpy(k, sq):
    s, t, y = _logits(k=k)
    for lam in (0.0, 0.02, 0.5, 1.0):
        for tau in (0.1, 1.0, 2.0):
            loss, m = distill.kd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), lam=lam, tau=tau,
                                      scale_by_tau_sq=sq)
            ref, ce, kls = _np_kd(s, t, y, lam, tau, sq)
            np.testing.assert_allclose(float(loss), ref, rtol=2e-5, atol=1e-5)
            np.testing.assert_allclose(float(m["ce"]), ce, rtol=1e-5)
            np.testing.assert_allclose(np.asarray(m["kl_per_teacher"]), kls, rtol=2e-5, atol=1e-5)
            np.testing.assert_allclose(float(m["kl"]), kls.mean(), rtol=2e-5, atol=1e-5)


def test_kd_agreement_metrics():
    s, t, _ = _logits(b=64, k=3)
    _, m = distill.kd_loss(jnp.asarray(s), jnp.asarray(t), jnp.zeros(64, int), lam=0.5, tau=1.0,
                           scale_by_tau_sq=False)
    pred = s.argmax(-1)
    np.testing.assert_allclose(np.asarray(m["agree_per_teacher"]), (pred[:, None] == t.argmax(-1)).mean(0))
    np.testing.assert_allclose(float(m["agree_ensemble"]), (pred == t.mean(1).argmax(-1)).mean())
    _, m_self = distill.kd_loss(jnp.asarray(s), jnp.asarray(np.repeat(s[:, None], 2, 1)),
                                jnp.zeros(64, int), lam=0.5, tau=1.0, scale_by_tau_sq=False)
    assert float(m_self["agree_ensemble"]) == 1.0 and abs(float(m_self["kl"])) < 1e-6


def test_kd_gradient_finite_and_analytic():
    s, t, y = _logits(b=8, k=3)
    s = s * 10  # large logits at tau = 0.1: saturated softmaxes must not give NaN
    lam, tau = 0.3, 0.1
    for sq in (False, True):
        grad = jax.grad(lambda z: distill.kd_loss(z, jnp.asarray(t), jnp.asarray(y), lam=lam, tau=tau,
                                                  scale_by_tau_sq=sq)[0])(jnp.asarray(s))
        grad = np.asarray(grad)
        assert np.isfinite(grad).all()
        p = np.exp(_np_log_softmax(s.astype(np.float64)))
        ps = np.exp(_np_log_softmax(s / tau))
        pt = np.exp(_np_log_softmax(t / tau)).mean(1)
        onehot = np.eye(4)[y]
        scale = tau**2 if sq else 1.0
        ref = (lam * (p - onehot) + (1 - lam) * scale * (ps - pt) / tau) / len(y)
        np.testing.assert_allclose(grad, ref, atol=1e-5, rtol=1e-4)
    grad_t = jax.grad(lambda z: distill.kd_loss(jnp.asarray(s), z, jnp.asarray(y), lam=lam, tau=tau,
                                                scale_by_tau_sq=True)[0])(jnp.asarray(t))
    assert not np.asarray(grad_t).any()  # teachers are constants


def test_kd_loss_rejects_mismatched_shapes():
    s, t, y = _logits()
    with pytest.raises(ValueError, match=r"\(B, K, C\)"):
        distill.kd_loss(jnp.asarray(s), jnp.asarray(t[:, 0]), jnp.asarray(y), lam=0.5, tau=1.0,
                        scale_by_tau_sq=False)


# ----------------------------------------------------------------------------------- ensembles
def test_ensembles_select_teachers():
    assert distill.resolve_teachers("transformer", TEACHERS) == ("passt-s1", "passt-s2")
    assert distill.resolve_teachers("cnn", TEACHERS) == ("cp_resnet-s1", "tf_sepnet")
    assert distill.resolve_teachers("all", TEACHERS) == TEACHERS
    assert distill.resolve_teachers("tf_sepnet,passt-s1", TEACHERS) == ("passt-s1", "tf_sepnet")
    np.testing.assert_array_equal(distill.teacher_columns("transformer", TEACHERS), [0, 2])
    with pytest.raises(distill.StoreError, match="unknown teacher.*'bogus'"):
        distill.resolve_teachers(["passt-s1", "bogus"], TEACHERS)
    with pytest.raises(distill.StoreError, match="matches none"):
        distill.resolve_teachers("cnn", ("passt-s1",))


# ------------------------------------------------------------------------------------- store
def _store_inputs(n=12, v=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        filenames=[f"audio/clip-{i:03d}-a.wav" for i in range(n)],
        teacher_names=TEACHERS,
        logits=rng.normal(size=(n, v, len(TEACHERS), len(CLASSES))).astype(np.float32),
        aug_params={"roll": {"shift": rng.integers(-4000, 4001, (n, v)).astype(np.int32)},
                    "freq_mask": {"start": rng.integers(0, 80, (n, v)).astype(np.int32),
                                  "width": rng.integers(0, 48, (n, v)).astype(np.int32),
                                  "n_mels": np.full((n, v), 128, np.int32)}},
        class_names=CLASSES,
        meta={"frontend": {"n_mels": 128}, "augment": {"roll": None}, "seed": 7, "note": "test"},
    )


def test_store_round_trip_bitwise_and_shuffled_lookup(tmp_path):
    inp = _store_inputs()
    distill.write_store(tmp_path / "store", **inp)
    store = distill.read_store(tmp_path / "store")
    assert isinstance(store.logits, np.memmap)
    assert store.teacher_names == TEACHERS and store.class_names == CLASSES and store.n_views == 3
    assert store.meta["note"] == "test" and store.header["created_with"]["jax"] == jax.__version__
    np.testing.assert_array_equal(store.logits, inp["logits"])
    rng = np.random.default_rng(1)
    order = rng.permutation(12)
    views = rng.integers(0, 3, 12)
    logits, params = store.lookup([inp["filenames"][i] for i in order], views)
    np.testing.assert_array_equal(logits, inp["logits"][order, views])
    by_index, _ = store.lookup(order, views)
    np.testing.assert_array_equal(by_index, logits)
    for name, field in (("roll", "shift"), ("freq_mask", "start"), ("freq_mask", "width"),
                        ("freq_mask", "n_mels")):
        got, want = params[name][field], inp["aug_params"][name][field][order, views]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    sel, _ = store.lookup(order[:4], 1, teachers="transformer")
    np.testing.assert_array_equal(sel, inp["logits"][order[:4], 1][:, [0, 2]])


def test_store_write_is_atomic(tmp_path, monkeypatch):
    inp = _store_inputs()
    real_save = distill.store._save_array
    calls = []

    def failing_save(directory, name, array):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_save(directory, name, array)

    monkeypatch.setattr(distill.store, "_save_array", failing_save)
    with pytest.raises(OSError, match="simulated"):
        distill.write_store(tmp_path / "store", **inp)
    assert list(tmp_path.iterdir()) == []  # neither a store nor a temporary directory remains

    monkeypatch.setattr(distill.store, "_save_array", real_save)
    distill.write_store(tmp_path / "store", **inp)
    with pytest.raises(FileExistsError):
        distill.write_store(tmp_path / "store", **inp)
    # A failed overwrite keeps the old store intact.
    calls.clear()
    monkeypatch.setattr(distill.store, "_save_array", failing_save)
    changed = {**inp, "logits": inp["logits"] + 1}
    with pytest.raises(OSError):
        distill.write_store(tmp_path / "store", **changed, overwrite=True)
    monkeypatch.setattr(distill.store, "_save_array", real_save)
    np.testing.assert_array_equal(distill.read_store(tmp_path / "store").logits, inp["logits"])
    distill.write_store(tmp_path / "store", **changed, overwrite=True)
    np.testing.assert_array_equal(distill.read_store(tmp_path / "store").logits, changed["logits"])
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_store_dataset_mismatch_errors(tmp_path):
    inp = _store_inputs()
    store = distill.read_store(distill.write_store(tmp_path / "s", **inp))
    files = inp["filenames"] + [f"audio/new-{i}.wav" for i in range(7)]
    with pytest.raises(distill.StoreError, match=r"lacks 7 \(e.g. 'audio/new-0.wav'.*, \.\.\.\) clip"):
        store.check_dataset(files, CLASSES)
    with pytest.raises(distill.StoreError, match="has 4 classes, the dataset 3"):
        store.check_dataset(inp["filenames"], CLASSES[:3])
    with pytest.raises(distill.StoreError, match="class order"):
        store.check_dataset(inp["filenames"], CLASSES[::-1])
    store.check_dataset(inp["filenames"][::-1], CLASSES)  # order of clips does not matter
    with pytest.raises(distill.StoreError, match="unknown teacher"):
        store.lookup([0], 0, teachers="nope")
    with pytest.raises(distill.StoreError, match="view index"):
        store.lookup([0], 3)
    with pytest.raises(distill.StoreError, match="lacks 1"):
        store.lookup(["audio/missing.wav"], 0)


def test_store_corrupt_header_errors(tmp_path):
    path = distill.write_store(tmp_path / "s", **_store_inputs())
    header_path = path / "header.json"
    good = header_path.read_text()
    header_path.write_text(good[: len(good) // 2])
    with pytest.raises(distill.StoreError, match="corrupt teacher store header"):
        distill.read_store(path)
    header = json.loads(good)
    del header["class_names"]
    header_path.write_text(json.dumps(header))
    with pytest.raises(distill.StoreError, match=r"missing \['class_names'\]"):
        distill.read_store(path)
    header = json.loads(good)
    header["version"] = 99
    header_path.write_text(json.dumps(header))
    with pytest.raises(distill.StoreError, match="version 99"):
        distill.read_store(path)
    header = json.loads(good)
    header["teacher_names"] = header["teacher_names"][:2]
    header_path.write_text(json.dumps(header))
    with pytest.raises(distill.StoreError, match="logits are"):
        distill.read_store(path)
    header_path.write_text(good)
    (path / "aug.roll.shift.npy").write_bytes(b"garbage")
    with pytest.raises(distill.StoreError, match="aug.roll.shift.npy"):
        distill.read_store(path)
    with pytest.raises(distill.StoreError, match="not a teacher store"):
        distill.read_store(tmp_path)


def test_store_non_finite_logits_rejected_on_write_and_read(tmp_path):
    inp = _store_inputs()
    bad = inp["logits"].copy()
    bad[5, 2, 3, 1] = np.nan
    with pytest.raises(distill.StoreError, match=r"clip 'audio/clip-005-a.wav' view 2 teacher 'tf_sepnet'"):
        distill.write_store(tmp_path / "s", **{**inp, "logits": bad})
    assert not (tmp_path / "s").exists()
    path = distill.write_store(tmp_path / "s", **inp)
    on_disk = np.load(path / "logits.npy", mmap_mode="r+")
    on_disk[9, 0, 1, 0] = np.inf
    on_disk.flush()
    del on_disk
    with pytest.raises(distill.StoreError, match=r"clip 'audio/clip-009-a.wav' view 0 teacher 'cp_resnet-s1'"):
        distill.read_store(path)


def test_store_write_validation_errors(tmp_path):
    inp = _store_inputs()
    cases = [
        ({"filenames": inp["filenames"][:-1] + inp["filenames"][:1]}, "duplicate filenames"),
        ({"filenames": inp["filenames"][:-1]}, "11 filenames"),
        ({"class_names": CLASSES[:3]}, "3 class_names"),
        ({"teacher_names": ("a", "a", "b", "c")}, "duplicate teacher_names"),
        ({"logits": inp["logits"][0]}, r"\(N, V, K, C\)"),
        ({"logits": inp["logits"].astype(np.int32)}, "floating"),
        ({"aug_params": {"roll": {"shift": np.zeros((12, 2), np.int32)}}}, "'roll.shift'"),
        ({"meta": {"seed": 0}}, r"lacks \['frontend', 'augment'\]"),
    ]
    for change, message in cases:
        with pytest.raises(distill.StoreError, match=message):
            distill.write_store(tmp_path / "s", **{**inp, **change})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- precompute / hook
N_CLIPS, N_MELS_TEACHER, N_MELS_STUDENT = 7, 16, 32
STORE_CFG = aug.AugmentConfig(roll=aug.RollConfig(max_shift_s=0.01),
                              freq_mask=aug.FreqMaskConfig(mask_param=6, n_mels=N_MELS_TEACHER),
                              mixstyle=None)


def _toy_frontend(wave, n_mels):
    """Stand-in for a log-mel frontend: any deterministic (B, n_mels, T) function of the wave."""
    frames = wave.reshape(wave.shape[0], n_mels, -1)
    return jnp.log(jnp.abs(frames) + 1e-3)


@pytest.fixture(scope="module")
def tiny_tau(tmp_path_factory):
    """N_CLIPS one-second noise clips in TAU layout (split "100"), and the source reading them."""
    root = tmp_path_factory.mktemp("tiny_tau")
    rng = np.random.default_rng(0)
    write_tau_dataset(root, rng.normal(0, 0.1, (N_CLIPS, TAU_SAMPLE_RATE)).astype(np.float32),
                      TAU_SAMPLE_RATE)
    return root, sources.ClipSource(load_split(root, "100"), root, sr=32000)


def _toy_teacher(name, weights, seen, nan_on_silence=False):
    """A teacher on the toy frontend: mean over time of its (masked) input times ``weights``.
    Appends (name, "wave", rolled wave) and (name, "mel", masked features) to ``seen`` for every
    batch it runs on. ``nan_on_silence``: NaN logits for a constant input (silence)."""

    def features(wave):
        jax.debug.callback(lambda w: seen.append((name, "wave", np.asarray(w))), wave)
        return _toy_frontend(wave, N_MELS_TEACHER)

    class Toy(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.asarray(weights))

        def __call__(self, x, train=False):
            jax.debug.callback(lambda m: seen.append((name, "mel", np.asarray(m))), x)
            logits = x.mean(-1) @ self.w.value
            if nan_on_silence:
                logits = jnp.where((x == x[:, :1, :1]).all(axis=(1, 2))[:, None], jnp.nan, logits)
            return logits, {}

    frontend = Frontend("toy", {"n_mels": N_MELS_TEACHER}, 32000, N_MELS_TEACHER, features, lambda v: v)
    return distill.Teacher(name, Path(name), {"model": {"name": name.split("-")[0]}}, frontend, Toy())


def _precompute(path, tiny_tau, batch_size, weights=None, nan_on_silence=False):
    root, source = tiny_tau
    if weights is None:
        weights = np.random.default_rng(0).normal(size=(2, N_MELS_TEACHER, len(TAU_CLASSES)))
    seen = []  # (teacher, "wave" | "mel", what it saw) for every batch
    teachers = [_toy_teacher("passt-a", weights[0], seen, nan_on_silence),
                _toy_teacher("cp_resnet-b", weights[1], seen, nan_on_silence)]
    config = Config(data=DataConfig(root=str(root), generate=False, train_split="100"), augment=STORE_CFG)
    store = distill.precompute(path, config=config, teachers=teachers, n_views=2, seed=123,
                               batch_size=batch_size, progress=False)
    jax.effects_barrier()
    waves = np.stack([source.audio(i) for i in range(len(source))])
    return store, STORE_CFG, waves, [c.filename for c in source.clips], seen


def test_precompute_is_reproducible_and_replay_is_bit_exact(tmp_path, tiny_tau):
    store, store_cfg, waves, files, seen = _precompute(tmp_path / "a", tiny_tau, batch_size=3)
    other, *_ = _precompute(tmp_path / "b", tiny_tau, batch_size=7)
    assert store.meta["seed"] == 123 and store.filenames == tuple(files)
    # Parameters are bitwise independent of batching; logits up to the teachers' float rounding.
    for a, b in zip(jax.tree.leaves(store.aug), jax.tree.leaves(other.aug)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(store.logits, other.logits, rtol=1e-5, atol=1e-5)
    assert store.logits.shape == (7, 2, 2, len(TAU_CLASSES))
    # Parameters come from (seed, clip, view) keys.
    direct = aug.example_sampler(store_cfg, 32000)(distill.view_keys(123, np.arange(7), 1))
    np.testing.assert_array_equal(store.aug["roll"]["shift"][:, 1], np.asarray(direct["roll"]["shift"]))
    assert len(np.unique(store.aug["roll"]["shift"])) > 7
    # Replaying stored parameters reproduces bit-exactly what the teachers saw
    # (first batch of 3 clips, view 0, teacher 0 of the batch_size=3 run).
    replay_cfg = aug.config_from_dict(store.meta["augment"])
    assert replay_cfg == store_cfg
    _, params = store.lookup(files[:3], 0)
    w = aug.apply_augment(jnp.asarray(waves[:3]), params, replay_cfg)
    mel = aug.apply_augment(_toy_frontend(w, N_MELS_TEACHER), params, replay_cfg)
    seen_w = next(x for name, kind, x in seen if name == "passt-a" and kind == "wave")
    seen_mel = next(x for name, kind, x in seen if name == "passt-a" and kind == "mel")
    np.testing.assert_array_equal(np.asarray(w), seen_w)
    np.testing.assert_array_equal(np.asarray(mel), seen_mel)
    # The student replays the same bands on its finer 32-bin frontend: exactly twice the bins.
    mel_student = aug.apply_augment(_toy_frontend(w, N_MELS_STUDENT), params, replay_cfg)
    masked_t = np.asarray((seen_mel == 0).all(-1))
    masked_s = np.asarray((mel_student == 0).all(-1))
    np.testing.assert_array_equal(masked_s, np.repeat(masked_t, 2, axis=1))


def test_precompute_rejects_non_finite_teacher_logits(tmp_path, tiny_tau):
    # Non-finite only on the silent padding rows of the last batch (7 = 3 + 3 + 1 clips), which
    # are no clip's logits: accepted.
    store, *_ = _precompute(tmp_path / "padded", tiny_tau, batch_size=3, nan_on_silence=True)
    assert np.isfinite(store.logits).all()
    weights = np.ones((2, N_MELS_TEACHER, len(TAU_CLASSES)), np.float32)
    weights[1, 0, 0] = np.nan
    first = load_split(tiny_tau[0], "100")[0].filename
    with pytest.raises(distill.StoreError, match=rf"precompute: non-finite teacher logits, first at clip "
                                                 rf"'{first}' view 0 teacher 'cp_resnet-b'"):
        _precompute(tmp_path / "bad", tiny_tau, batch_size=3, weights=weights)
    assert not (tmp_path / "bad").exists()


def test_store_extras_hook(tmp_path, tiny_tau):
    store, store_cfg, *_ = _precompute(tmp_path / "s", tiny_tau, batch_size=7)
    dataset_files = list(store.filenames[::-1])  # the dataset orders clips differently
    student = dataclasses.replace(store_cfg, mixstyle=aug.MixStyleConfig())  # the training config
    hook = distill.StoreExtras(tmp_path / "s", dataset_files, TAU_CLASSES, teachers="cnn", augment=student,
                              sample_rate=32000)
    assert hook.teacher_names == ("cp_resnet-b",)
    hook = pickle.loads(pickle.dumps(hook))  # as in a grain worker process
    rng = np.random.default_rng(0)
    seen_views = set()
    for index in range(7):
        out = hook(index, rng)
        assert set(out) == {"teacher_logits", "aug"} and out["teacher_logits"].shape == (1, len(TAU_CLASSES))
        row = 6 - index
        matches = [v for v in range(2) if np.array_equal(out["teacher_logits"], store.logits[row, v, [1]])]
        assert matches
        view = matches[0]
        seen_views.add(view)
        assert out["aug"]["roll"]["shift"] == store.aug["roll"]["shift"][row, view]
        assert out["aug"]["freq_mask"]["start"] == store.aug["freq_mask"]["start"][row, view]
    assert seen_views == {0, 1}
    # All views at once, in dataset order (the split kept on the device draws from these).
    every = hook.all_views()
    np.testing.assert_array_equal(every["teacher_logits"], store.logits[::-1][:, :, [1]])
    np.testing.assert_array_equal(every["aug"]["roll"]["shift"], store.aug["roll"]["shift"][::-1])
    with pytest.raises(distill.StoreError, match="lacks 1"):
        distill.StoreExtras(tmp_path / "s", dataset_files + ["audio/x.wav"], TAU_CLASSES, augment=student,
                            sample_rate=32000)


# ----------------------------------------------------------------------- store vs student augment
STUDENT_AUG = aug.AugmentConfig()  # the training default: roll, frequency mask, Freq-MixStyle


def _aug_store(path, store_cfg, n=5, views=2, meta=None):
    """A store of 32 kHz clips whose parameters are sampled from store_cfg, with store_cfg in its
    header."""
    sample = aug.example_sampler(store_cfg, 32000)
    params = [sample(distill.view_keys(0, np.arange(n), v)) for v in range(views)]
    return distill.write_store(
        path, filenames=[f"audio/c{i}.wav" for i in range(n)], teacher_names=["cp_resnet-a"],
        logits=np.zeros((n, views, 1, len(CLASSES)), np.float32),
        aug_params=jax.tree.map(lambda *a: np.stack(a, axis=1), *params), class_names=CLASSES,
        meta=meta or {"frontend": {}, "augment": aug.config_to_dict(store_cfg), "seed": 0,
                      "data": {"sample_rate": 32000}})


def _hook(path, student, sample_rate=32000):
    return distill.StoreExtras(path, [f"audio/c{i}.wav" for i in range(5)], CLASSES, augment=student,
                               sample_rate=sample_rate)


def test_store_with_masks_refuses_a_student_without(tmp_path):
    path = _aug_store(tmp_path / "s", distill.store_augment(STUDENT_AUG))
    student = dataclasses.replace(STUDENT_AUG, freq_mask=None)
    with pytest.raises(distill.StoreError) as err:
        _hook(path, student)
    message = str(err.value)
    # Both settings are named: the store's masks and the student's disabled ones.
    assert "freq_mask: store FreqMaskConfig(mask_param=48, n_mels=256, mask_value=0.0), student None" in message
    assert str(path) in message and "roll" not in message  # only the differing augmentation
    _hook(path, STUDENT_AUG)  # the matching student is accepted


def test_store_without_masks_refuses_a_student_with_them(tmp_path):
    path = _aug_store(tmp_path / "s", aug.AugmentConfig(freq_mask=None, mixstyle=None))
    with pytest.raises(distill.StoreError,
                       match=r"freq_mask: store None \(disabled\), student FreqMaskConfig\(mask_param=48"):
        _hook(path, STUDENT_AUG)
    _hook(path, dataclasses.replace(STUDENT_AUG, freq_mask=None))


def test_store_augment_field_differences_are_named(tmp_path):
    path = _aug_store(tmp_path / "s", distill.store_augment(STUDENT_AUG))
    student = dataclasses.replace(
        STUDENT_AUG, roll=aug.RollConfig(max_shift_s=0.25),
        freq_mask=dataclasses.replace(STUDENT_AUG.freq_mask, mask_param=24))
    with pytest.raises(distill.StoreError) as err:
        _hook(path, student)
    assert "roll.max_shift_s: store 0.125, student 0.25; freq_mask.mask_param: store 48, student 24" in str(err.value)
    # The stored roll replaces the host's: a student without one would still hear it.
    with pytest.raises(distill.StoreError, match=r"roll: store RollConfig\(max_shift_s=0.125\), "
                                                 r"student None \(disabled\)"):
        _hook(path, dataclasses.replace(STUDENT_AUG, roll=None))


def test_freq_mixstyle_is_exempt(tmp_path):
    path = _aug_store(tmp_path / "s", distill.store_augment(STUDENT_AUG))
    for mixstyle in (None, aug.MixStyleConfig(alpha=0.9, p=1.0, per_example=True)):
        _hook(path, dataclasses.replace(STUDENT_AUG, mixstyle=mixstyle))
    # Even a header that records some MixStyle setting is not compared on it.
    recorded = {**aug.config_to_dict(STUDENT_AUG), "mixstyle": {"alpha": 0.1}}
    assert distill.augment_mismatch(recorded, dataclasses.replace(STUDENT_AUG, mixstyle=None)) == []
    assert distill.store_augment(STUDENT_AUG) == dataclasses.replace(STUDENT_AUG, mixstyle=None)


def test_stored_roll_must_be_counted_at_the_students_rate(tmp_path):
    store_cfg = distill.store_augment(STUDENT_AUG)
    path = _aug_store(tmp_path / "s", store_cfg)
    with pytest.raises(distill.StoreError, match="roll shifts counted at 32000 Hz .* student's waveforms are at 44100 Hz"):
        _hook(path, STUDENT_AUG, sample_rate=44100)
    # A store that does not record its clips' rate cannot vouch for its shifts.
    bare = _aug_store(tmp_path / "bare", store_cfg, meta={"frontend": {}, "seed": 0,
                                                          "augment": aug.config_to_dict(store_cfg)})
    with pytest.raises(distill.StoreError, match="counted at None Hz"):
        _hook(bare, STUDENT_AUG)
    # Stores written while RollConfig had an `sr` field recorded the rate there: still usable.
    legacy = aug.config_to_dict(store_cfg)
    legacy["roll"] = {**legacy["roll"], "sr": 32000}
    old = _aug_store(tmp_path / "old", store_cfg, meta={"frontend": {}, "seed": 0, "augment": legacy})
    _hook(old, STUDENT_AUG)
    with pytest.raises(distill.StoreError, match="counted at 32000 Hz"):
        _hook(old, STUDENT_AUG, sample_rate=16000)


def test_store_whose_arrays_disagree_with_its_header_is_refused(tmp_path):
    inp = _store_inputs(n=5)
    inp["filenames"] = [f"audio/c{i}.wav" for i in range(5)]
    inp["meta"] = {**inp["meta"], "augment": aug.config_to_dict(aug.AugmentConfig(freq_mask=None, mixstyle=None)),
                   "data": {"sample_rate": 32000}}
    path = distill.write_store(tmp_path / "s", **inp)  # holds freq_mask parameters all the same
    with pytest.raises(distill.StoreError, match=r"header augmentations \['roll'\] but stored parameters "
                                                 r"for \['freq_mask', 'roll'\]"):
        _hook(path, dataclasses.replace(STUDENT_AUG, freq_mask=None))
    header = json.loads((path / "header.json").read_text())
    header["meta"]["augment"] = {"warp": {}}
    (path / "header.json").write_text(json.dumps(header))
    with pytest.raises(distill.StoreError, match="unreadable meta\\['augment'\\]"):
        _hook(path, STUDENT_AUG)


def test_training_refuses_a_mismatched_store(tmp_path):
    """The student run opens its store through train.loop._teacher_extras, with config.augment."""
    from asc_jax.config import Config, KDConfig
    from asc_jax.data import tau
    from asc_jax.train import loop

    path = tmp_path / "s"
    n = 5
    sample = aug.example_sampler(distill.store_augment(STUDENT_AUG), 32000)
    params = sample(distill.view_keys(0, np.arange(n), 0))
    clips = [tau.Clip(f"audio/c{i}.wav", 0, "a", "lyon", "lyon-1") for i in range(n)]
    distill.write_store(
        path, filenames=[c.filename for c in clips], teacher_names=["cp_resnet-a"],
        logits=np.zeros((n, 1, 1, len(tau.CLASSES)), np.float32),
        aug_params=jax.tree.map(lambda a: np.asarray(a)[:, None], params), class_names=tau.CLASSES,
        meta={"frontend": {}, "augment": aug.config_to_dict(distill.store_augment(STUDENT_AUG)), "seed": 0,
              "data": {"sample_rate": 32000}})
    data = types.SimpleNamespace(train_clips=clips)
    config = Config(kd=KDConfig(store=str(path)))
    assert loop._teacher_extras(config, data).teacher_names == ("cp_resnet-a",)
    no_masks = dataclasses.replace(config, augment=dataclasses.replace(STUDENT_AUG, freq_mask=None))
    with pytest.raises(distill.StoreError, match="freq_mask: store FreqMaskConfig.*student None"):
        loop._teacher_extras(no_masks, data)
