"""Knowledge distillation end to end: a teacher-logit store precomputed from real (tiny) saved
teachers, exact replay of each stored view in the student's pipeline, and a KD run that pulls the
student's predictions to its teacher."""
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from asc_jax import distill
from asc_jax.audio import augment
from asc_jax.audio.features import MelConfig, log_mel
from asc_jax.audio.passt_frontend import passt_logmel
from asc_jax.checkpoint import load_model, resolve_model_dir, save_model
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, load_config
from asc_jax.data import pipeline, sources, synthetic, tau
from asc_jax.distill import cli
from asc_jax.models import build_model
from asc_jax.train import train_and_evaluate
from tests.conftest import randomize_batch_stats_and_affine

# Few blocks and branches: on CPU, tracing the model (not running it) dominates these tests.
CNN = {"base_channels": 8, "channels_multiplier": 2.0, "expansion_rate": 2.0, "n_blocks": (1, 1, 1),
       "strides": {"b2": (2, 2), "b3": (2, 1)}, "branches": ("3x3", "1x1")}
STUDENT = {**CNN, "base_channels": 16}
PASST = {"n_classes": 10, "depth": 1, "embed_dim": 32, "num_heads": 2, "n_frames": 100}
SPLIT = "25"  # 100 clips of the generated set
VIEWS = 3
BATCH = 16
ATOL = 1e-5  # the same float32 math, compiled separately (other fusions) at each call site
CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd_data") / "tau"
    # 300 training clips (split25: 100), 450 test clips over all 9 devices.
    return synthetic.ensure_dataset(root, n_train_per_class_device=5, n_test_per_class_device=5)


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory):
    """A CNN saved as train.py leaves it (workdir/model, with its mel config and classes) and a
    PaSST saved as convert_weights.py leaves it (no frontend, no class names)."""
    base = tmp_path_factory.mktemp("teachers")
    cnn = build_model("rep_mobile", rngs=nnx.Rngs(1), **CNN)
    randomize_batch_stats_and_affine(cnn, seed=1, spread=0.3)
    save_model(base / "cnn_a" / "model", cnn, name="rep_mobile", options=CNN,
               mel=dataclasses.asdict(MelConfig()), class_names=list(tau.CLASSES))
    passt = build_model("passt", rngs=nnx.Rngs(2), **PASST)
    save_model(base / "passt_tiny", passt, name="passt", options=PASST)
    return {"rep_mobile-cnn_a": base / "cnn_a", "passt-tiny": base / "passt_tiny"}


def _student_args(data_root) -> list[str]:
    """The KD demo student's --config / --set, as train.py would take them, on the test data."""
    return ["--config", f"{CONFIGS / 'kd_demo.py'}:split={SPLIT}",
            "--set", f"data.root={data_root}", "--set", "data.generate=False"]


@pytest.fixture(scope="module")
def store(data_root, teacher_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / f"split{SPLIT}"
    return cli.main([
        "precompute", *_student_args(data_root),
        "--teacher", str(teacher_dirs["rep_mobile-cnn_a"]),
        "--teacher", f"tiny={teacher_dirs['passt-tiny']}",
        "--views", str(VIEWS), "--seed", "7", "--out", str(out), "--batch-size", str(BATCH)])


def test_store_from_saved_teachers(store, data_root):
    clips = tau.load_split(data_root, SPLIT)
    assert store.teacher_names == ("rep_mobile-cnn_a", "passt-tiny")
    assert store.filenames == tuple(c.filename for c in clips)
    assert store.logits.shape == (len(clips), VIEWS, 2, len(tau.CLASSES))
    assert distill.resolve_teachers("cnn", store.teacher_names) == ("rep_mobile-cnn_a",)
    assert distill.resolve_teachers("transformer", store.teacher_names) == ("passt-tiny",)
    meta = store.meta
    assert meta["seed"] == 7 and meta["data"]["split"] == SPLIT and meta["data"]["skipped"] == []
    # The student config's augmentation without Freq-MixStyle (kd_demo.py trains with defaults).
    assert augment.config_from_dict(meta["augment"]) == distill.STORE_AUGMENT
    assert meta["frontend"]["passt-tiny"]["name"] == "passt"
    assert meta["frontend"]["rep_mobile-cnn_a"] == {"name": "logmel",
                                                    "options": dataclasses.asdict(MelConfig())}
    shift = np.asarray(store.aug["roll"]["shift"])
    assert np.abs(shift).max() <= 4000 and len(np.unique(shift)) > VIEWS * len(clips) // 2
    assert (np.asarray(store.aug["freq_mask"]["n_mels"]) == 256).all()
    # Views differ: each view is the teacher under another augmentation.
    assert np.abs(store.logits[:, 0] - store.logits[:, 1]).max() > 1e-3


def _jitted(model):
    """Inference-mode logits of a model as one jitted function (eager NNX is slow on CPU)."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False)[0])
    return lambda x: run(state, x)


def _reference_mask(params: dict, n_mels: int) -> np.ndarray:
    """Bins of an n_mels frontend whose centre lies in the stored band, scaled from its own
    resolution (the rule of augment.freq_mask_edges), written out in float64 numpy."""
    centre = np.arange(n_mels) + 0.5
    scale = n_mels / np.asarray(params["n_mels"], np.float64)[:, None]
    lo = np.asarray(params["start"])[:, None] * scale
    hi = (np.asarray(params["start"]) + np.asarray(params["width"]))[:, None] * scale
    return (centre >= lo) & (centre < hi)


def test_stored_logits_equal_an_independent_replay(store, data_root, teacher_dirs):
    """A stored view is the teacher on: np.roll by the stored shift, its own frontend, the stored
    band masked in its own bins and units; computed here without the teachers module."""
    clips = tau.load_split(data_root, SPLIT)
    source = sources.ClipSource(clips, data_root, sr=32000)
    # The first precompute batch and the padded last one (100 = 6 * 16 + 4 clips).
    rows, view = np.r_[0:12, 96:100], 1
    _, params = store.lookup(rows, view)
    wave = np.stack([np.roll(source.audio(i), int(s)) for i, s in zip(rows, params["roll"]["shift"])])
    assert (params["roll"]["shift"] != 0).sum() > BATCH // 2
    assert (params["freq_mask"]["width"] > 2).sum() > BATCH // 2
    # Log-mel units: the CNN's features; PaSST normalises log-mels as (x + 4.5) / 5 after masking.
    features = {"rep_mobile-cnn_a": (lambda w: log_mel(w, MelConfig()), 0.0),
                "passt-tiny": (passt_logmel, (0.0 + 4.5) / 5.0)}
    for k, name in enumerate(store.teacher_names):
        model = _jitted(load_model(resolve_model_dir(teacher_dirs[name]))[0])
        frontend, masked_value = features[name]
        x = np.asarray(frontend(wave))
        mask = _reference_mask(params["freq_mask"], x.shape[1])
        if name == "passt-tiny":  # 256 -> 128 bins: every band covers about half as many bins
            assert x.shape[1] == 128
            assert (np.abs(mask.sum(1) - params["freq_mask"]["width"] / 2) <= 1).all()
        x_masked = np.where(mask[:, :, None], np.float32(masked_value), x)
        expected = np.asarray(model(x_masked))
        np.testing.assert_allclose(store.logits[rows, view, k], expected, atol=ATOL, rtol=ATOL,
                                   err_msg=name)
        # The check is sensitive: without the mask, or without the roll, the logits differ.
        assert np.abs(np.asarray(model(x)) - expected).max() > 1e-3, name
        x_unrolled = np.asarray(frontend(np.stack([source.audio(i) for i in rows])))
        unrolled = np.asarray(model(np.where(mask[:, :, None], np.float32(masked_value), x_unrolled)))
        assert np.abs(unrolled - expected).max() > 1e-4, name


def test_pipeline_batch_replays_the_stored_view(store, data_root, teacher_dirs):
    """What the student trains on is what the teachers saw: the teacher applied to a training
    batch (rolled on the host by the stored shift, band from the batch) gives the batch's
    teacher logits; so does the CNN teacher on the student's own augmented log-mel."""
    clips = tau.load_split(data_root, SPLIT)
    student = load_config(f"{CONFIGS / 'kd_demo.py'}:split={SPLIT}")
    extras = distill.StoreExtras(store.path, [c.filename for c in clips], tau.CLASSES,
                                 augment=student.augment, sample_rate=student.mel.sample_rate)
    ds = pipeline.train_dataset(clips, root=data_root, batch_size=BATCH, seed=3, extra=extras)
    batch = next(iter(ds))
    np.testing.assert_array_equal(batch["roll"], batch["aug"]["roll"]["shift"])
    rolled_cfg = dataclasses.replace(distill.STORE_AUGMENT, roll=None)  # the host rolled already
    for k, name in enumerate(store.teacher_names):
        teacher = distill.load_teacher(teacher_dirs[name], tag=name.split("-", 1)[1])
        assert teacher.name == name
        out = np.asarray(distill.make_apply(teacher, rolled_cfg)(batch["audio"], batch["aug"]))
        np.testing.assert_allclose(out, batch["teacher_logits"][:, k], atol=ATOL, rtol=ATOL, err_msg=name)
        if name == "rep_mobile-cnn_a":
            # The train step's log-mel stage: stored band replayed, MixStyle off for the check.
            mel = log_mel(batch["audio"], MelConfig())
            student_in, _ = augment.augment_batch(
                jax.random.key(0), mel, augment.AugmentConfig(roll=None, mixstyle=None),
                params={"freq_mask": batch["aug"]["freq_mask"]})
            np.testing.assert_allclose(np.asarray(_jitted(teacher.model)(student_in)),
                                       batch["teacher_logits"][:, k], atol=ATOL, rtol=ATOL)


def test_bad_teachers_fail_loudly(tmp_path, teacher_dirs, data_root):
    with pytest.raises(FileNotFoundError, match="no model.json"):
        distill.load_teacher(tmp_path)
    student = load_config(f"{CONFIGS / 'kd_demo.py'}:split={SPLIT}")
    with pytest.raises(ValueError, match="both named 'rep_mobile-cnn_a'"):
        distill.precompute(tmp_path / "s", config=student, n_views=1, seed=0,
                           teachers=[teacher_dirs["rep_mobile-cnn_a"]] * 2)
    with pytest.raises(ValueError, match="tag"):
        distill.load_teacher(teacher_dirs["passt-tiny"], tag="a,b")
    spec_path = teacher_dirs["rep_mobile-cnn_a"] / "model" / "model.json"
    spec = json.loads(spec_path.read_text())
    other = tmp_path / "other"
    for name, edit, error in (
            ("classes", {"class_names": list(reversed(tau.CLASSES))}, "predicts classes"),
            ("frontend", {"mel": None}, "names no frontend")):
        bad = other / name
        bad.mkdir(parents=True)
        (bad / "weights").symlink_to(teacher_dirs["rep_mobile-cnn_a"] / "model" / "weights")
        edited = {k: v for k, v in {**spec, **edit}.items() if v is not None}
        (bad / "model.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=error):
            distill.load_teacher(bad)
    assert not (tmp_path / "s").exists()


STUDENT_CONFIG = """
import dataclasses
from asc_jax.audio import augment
from asc_jax.config import load_config

def get_config(arg=None):
    base = load_config({kd_demo!r} + ":split=" + {split!r})
    return dataclasses.replace(
        base, seed=3,
        data=dataclasses.replace(base.data, root={root!r}, generate=False),
        augment=augment.AugmentConfig(roll=None, freq_mask=augment.FreqMaskConfig(mask_param=8, n_mels=128)),
        kd=dataclasses.replace(base.kd, store={out!r}))
"""


def test_precompute_reads_the_students_config_file(tmp_path, teacher_dirs, data_root):
    """The store samples the augmentation of the config file the student trains with, holds its
    split's clips and goes to its kd.store; that student accepts it, another refuses it."""
    config_file = tmp_path / "student.py"
    config_file.write_text(STUDENT_CONFIG.format(kd_demo=str(CONFIGS / "kd_demo.py"), split=SPLIT,
                                                 root=str(data_root), out=str(tmp_path / "store")))
    store = cli.main(["precompute", "--config", str(config_file),
                      "--teacher", str(teacher_dirs["rep_mobile-cnn_a"]), "--views", "1"])
    student = load_config(str(config_file))
    assert store.path == tmp_path / "store" and store.meta["seed"] == 3  # kd.store, config seed
    assert augment.config_from_dict(store.meta["augment"]) == distill.store_augment(student.augment)
    assert set(store.aug) == {"freq_mask"}  # no roll stored: the config disables it
    assert (np.asarray(store.aug["freq_mask"]["width"]) < 8).all()
    assert (np.asarray(store.aug["freq_mask"]["n_mels"]) == 128).all()
    files = [c.filename for c in tau.load_split(data_root, SPLIT)]
    assert store.filenames == tuple(files)
    distill.StoreExtras(store.path, files, tau.CLASSES, augment=student.augment, sample_rate=32000)
    with pytest.raises(distill.StoreError, match=r"roll: store None \(disabled\), student RollConfig"):
        distill.StoreExtras(store.path, files, tau.CLASSES, augment=augment.AugmentConfig(), sample_rate=32000)
    with pytest.raises(SystemExit):  # the separate augmentation flags are gone
        cli.main(["precompute", "--config", str(config_file), "--teacher", "x", "--views", "1",
                  "--freq-mask-param", "8"])


# ------------------------------------------------------------------------------- KD training run
PERM = np.roll(np.arange(len(tau.CLASSES)), 3)  # teacher says class (y + 3) mod 10: no fixed point


def _rule_store(path, clips) -> None:
    """A teacher whose decisions are a distinctive, learnable rule: it maps every clip of class y
    to class PERM[y]. Its views carry real sampled augmentations, replayed by the run."""
    n = len(clips)
    labels = np.array([c.label for c in clips])
    logits = np.broadcast_to((6.0 * np.eye(len(tau.CLASSES))[PERM[labels]])[:, None, None],
                             (n, 2, 1, len(tau.CLASSES)))
    sample = augment.example_sampler(distill.STORE_AUGMENT, 32000)
    views = [sample(distill.view_keys(0, np.arange(n), v)) for v in range(2)]
    distill.write_store(
        path, filenames=[c.filename for c in clips], teacher_names=["rule-perm"], logits=logits,
        aug_params=jax.tree.map(lambda *a: np.stack(a, axis=1), *views), class_names=tau.CLASSES,
        meta={"frontend": {"rule-perm": None}, "augment": augment.config_to_dict(distill.STORE_AUGMENT),
              "seed": 0, "data": {"sample_rate": 32000}})


def _held_out_agreement(summary) -> float:
    """Share of test clips the student assigns to the teacher's class PERM[y]."""
    confusion = np.asarray(summary["eval"]["confusion_matrix"])
    return float(confusion[np.arange(len(PERM)), PERM].sum() / confusion.sum())


@pytest.mark.slow
def test_kd_pulls_the_student_to_the_teacher(data_root, tmp_path):
    clips = tau.load_split(data_root, "100")
    _rule_store(tmp_path / "store", clips)
    recipe = load_config(f"{CONFIGS / 'kd_demo.py'}").kd  # the default KD hyper-parameters
    base = Config(
        seed=1,
        data=DataConfig(root=str(data_root), generate=False, train_split="100"),
        model=ModelConfig(name="rep_mobile", options=STUDENT),
        optim=OptimConfig(lr=0.01, epochs=4, warmup_epochs=1, batch_size=BATCH),
        kd=dataclasses.replace(recipe, store=str(tmp_path / "store"), teachers="all"),
        eval_every_epochs=4,
        log_every_steps=6,
    )
    # The same run, store and replayed augmentation, with the KD term switched off (lam = 1).
    runs = {"kd": base, "no_kd": dataclasses.replace(base, kd=dataclasses.replace(base.kd, lam=1.0)),
            # The split and the store's views on the device (data.on_device): the teacher logits
            # must reach each clip there too, or the student could not learn PERM[y].
            "kd_on_device": dataclasses.replace(base, data=dataclasses.replace(base.data, on_device=True))}
    summaries, agree_train = {}, {}
    for name, config in runs.items():
        summaries[name] = train_and_evaluate(config, tmp_path / name)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        agree_train[name] = np.mean([r["agree_ensemble"] for r in rows if r["split"] == "train"][-3:])
    held_out = {name: _held_out_agreement(s) for name, s in summaries.items()}
    # Chance agreement is 0.1; the plain student learns y and so rarely says PERM[y]. Measured:
    # held-out 0.49 with KD vs 0.02 without; last three logged train rows 0.36 vs 0.05.
    for kd in ("kd", "kd_on_device"):
        assert held_out[kd] > 0.3 and held_out[kd] > held_out["no_kd"] + 0.2, held_out
        assert agree_train[kd] > 0.25 and agree_train[kd] > agree_train["no_kd"] + 0.15, agree_train


# ------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("split", ["5", "10", "25", "50", "100"])
def test_table_iv_configs(split):
    baseline = load_config(f"{CONFIGS / 'rep_mobile_tau.py'}:split={split}")
    assert load_config(f"{CONFIGS / 'kd_tau.py'}:split={split},teachers=none") == baseline
    for ensemble in ("cnn", "transformer", "all"):
        config = load_config(f"{CONFIGS / 'kd_tau.py'}:split={split},teachers={ensemble}")
        assert config.kd.store == f"stores/split{split}" and config.kd.teachers == ensemble
        # Only the KD settings differ from the baseline row.
        assert dataclasses.replace(config, kd=baseline.kd) == baseline
        # CPJKU's lambda = 0.02 with their KL mean over 10 classes: equal term ratio here.
        lam = config.kd.lam
        assert lam / (1 - lam) == pytest.approx(0.02 * 10 / 0.98)
        assert config.kd.tau == 2.0 and config.kd.scale_by_tau_sq
    paper = load_config(f"{CONFIGS / 'kd_tau.py'}:split={split},teachers=all,kd=paper").kd
    assert (paper.tau, paper.lam, paper.scale_by_tau_sq) == (0.1, 0.02, False)
    with pytest.raises(ValueError, match="teachers must be"):
        load_config(f"{CONFIGS / 'kd_tau.py'}:split={split},teachers=passt")
