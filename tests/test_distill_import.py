"""Importing teacher logits computed elsewhere (torch .pt, .npy, CSV) into a teacher store."""
import dataclasses
import json
import logging
import sys
import types

import jax
import numpy as np
import pytest

from asc_jax import distill
from asc_jax.audio import augment as aug
from asc_jax.config import Config, DataConfig, KDConfig
from asc_jax.data import tau
from asc_jax.distill import cli, importing

C = len(tau.CLASSES)
N_META, N_SPLIT = 30, 8
# The order a PyTorch pipeline might have used: a permutation of the dataset's classes.
TORCH_CLASSES = list(tau.CLASSES[::-1])
# The student's default augmentation (roll, frequency mask, Freq-MixStyle): an imported store
# replays nothing, so the student samples all of it fresh (extras.check_augment).
STUDENT = aug.AugmentConfig()


@pytest.fixture()
def dataset(tmp_path):
    """TAU-layout metadata without audio (the import reads none): N_META clips in meta.csv,
    split_setup/split25.csv with the first N_SPLIT, split100.csv with 24, test.csv with 6."""
    root = tmp_path / "tau"
    (root / tau.SPLIT_SUBDIR).mkdir(parents=True)
    names = [f"audio/{tau.CLASSES[i % C]}-lyon-{i}-{i}-0-a.wav" for i in range(N_META)]
    labels = [tau.CLASSES[i % C] for i in range(N_META)]
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n" + "".join(
        f"{n}\t{lab}\tlyon-{i}\ta\n" for i, (n, lab) in enumerate(zip(names, labels))))
    for split, rows in (("split25", range(N_SPLIT)), ("split100", range(24)), ("test", range(24, 30))):
        (root / tau.SPLIT_SUBDIR / f"{split}.csv").write_text(
            "filename\tscene_label\n" + "".join(f"{names[i]}\t{labels[i]}\n" for i in rows))
    return root, names


def _config(root, store=""):
    return Config(data=DataConfig(root=str(root), generate=False, train_split="25"), augment=STUDENT,
                  kd=KDConfig(store=str(store)))


def _logits(n, seed=0, views=None):
    rng = np.random.default_rng(seed)
    shape = (n, C) if views is None else (n, views, C)
    return rng.normal(0, 3, shape).astype(np.float32)


def _to_dataset_order(values):
    """Columns of TORCH_CLASSES order -> the dataset's order."""
    return values[..., [TORCH_CLASSES.index(c) for c in tau.CLASSES]]


def _run(tmp_path, *args):
    return cli.main(["import", "--name", "cpjku_ensemble", "--out", str(tmp_path / "store"), *map(str, args)])


# ----------------------------------------------------------------------------------- round trips
def test_npy_for_the_whole_dataset_keeps_the_split_in_dataset_class_order(tmp_path, dataset):
    root, names = dataset
    values = _logits(N_META)
    np.save(tmp_path / "logits.npy", values)
    store = _run(tmp_path, "--logits", tmp_path / "logits.npy", "--filenames", root / "meta.csv",
                 "--classes", ",".join(TORCH_CLASSES), "--config", "configs/kd_tau.py:split=25",
                 "--set", f"data.root={root}", "--set", "data.generate=False")
    assert store.filenames == tuple(names[:N_SPLIT]) and store.n_views == 1
    assert store.teacher_names == ("cpjku_ensemble",) and store.class_names == tau.CLASSES
    assert store.aug == {} and store.logits.shape == (N_SPLIT, 1, 1, C)
    np.testing.assert_array_equal(store.logits[:, 0, 0], _to_dataset_order(values)[:N_SPLIT])
    # Provenance: the source and every file read, with their checksums, and the command.
    imported = store.meta["import"]
    assert imported["sha256"] == importing.sha256(tmp_path / "logits.npy")
    assert imported["rows"] == N_META and imported["dropped"] == N_META - N_SPLIT
    assert imported["classes"] == TORCH_CLASSES and imported["shape"] == [N_META, C]
    assert set(imported["files"]) == {"logits", "filenames", "meta", "split"}
    assert imported["files"]["filenames"]["sha256"] == importing.sha256(root / "meta.csv")
    assert imported["command"].startswith("python -m asc_jax.distill import --name cpjku_ensemble")
    assert store.meta["augment"] == aug.config_to_dict(importing.NO_AUGMENT)
    assert store.meta["data"]["split"] == "25" and "created_with" in store.header


def test_pt_aligned_with_bare_names_and_a_split_csv(tmp_path, dataset):
    torch = pytest.importorskip("torch")
    root, names = dataset
    split = root / tau.SPLIT_SUBDIR / "split25.csv"
    # Rows in another order than the split, named without "audio/", with a view axis of 1.
    order = np.random.default_rng(1).permutation(N_SPLIT)
    (tmp_path / "names.txt").write_text("".join(names[i].split("/")[-1] + "\n" for i in order))
    values = _logits(N_SPLIT, views=1)
    torch.save({"logits": torch.from_numpy(values)}, tmp_path / "t.pt")
    store = _run(tmp_path, "--logits", tmp_path / "t.pt", "--filenames", tmp_path / "names.txt",
                 "--classes", ",".join(TORCH_CLASSES), "--split", split)
    assert store.filenames == tuple(names[:N_SPLIT])  # the dataset's names, the split's order
    expected = np.empty_like(values[:, 0])
    expected[order] = values[:, 0]
    np.testing.assert_array_equal(store.logits[:, 0, 0], _to_dataset_order(expected))
    assert store.meta["import"]["key"] == "logits" and store.meta["import"]["format"] == "pt"
    assert store.meta["import"]["files"]["meta"]["path"] == str((root / "meta.csv").absolute())

    torch.save({"a": torch.zeros(N_SPLIT, C), "b": torch.ones(N_SPLIT, C)}, tmp_path / "two.pt")
    common = ["--filenames", tmp_path / "names.txt", "--classes", "dataset", "--split", split, "--overwrite"]
    with pytest.raises(distill.StoreError, match=r"2 tensors .*'a': \(8, 10\).*pick one with --key"):
        _run(tmp_path, "--logits", tmp_path / "two.pt", *common)
    store = _run(tmp_path, "--logits", tmp_path / "two.pt", "--key", "b", *common)
    assert (store.logits == 1).all()
    torch.save(torch.ones(N_SPLIT, C, dtype=torch.bfloat16), tmp_path / "bf16.pt")
    store = _run(tmp_path, "--logits", tmp_path / "bf16.pt", *common)
    assert store.meta["import"]["dtype"] == "bfloat16" and (store.logits == 1).all()
    torch.save(torch.ones(N_SPLIT, C, dtype=torch.int64), tmp_path / "int.pt")
    with pytest.raises(distill.StoreError, match="floating point, got torch.int64"):
        _run(tmp_path, "--logits", tmp_path / "int.pt", *common)


def test_pt_without_torch_says_so(tmp_path, dataset, monkeypatch):
    root, _ = dataset
    (tmp_path / "t.pt").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match="needs PyTorch"):
        _run(tmp_path, "--logits", tmp_path / "t.pt", "--filenames", root / "meta.csv", "--classes", "dataset",
             "--split", root / tau.SPLIT_SUBDIR / "split25.csv")


def test_csv_header_gives_the_classes(tmp_path, dataset):
    root, names = dataset
    values = _logits(N_META).astype(np.float64)
    # A pandas to_csv: an unnamed index column first; comma-separated; classes in torch order.
    lines = [",filename," + ",".join(TORCH_CLASSES)]
    lines += [f"{i},{names[i]}," + ",".join(repr(float(x)) for x in row) for i, row in enumerate(values)]
    (tmp_path / "logits.csv").write_text("\n".join(lines) + "\n")
    store = _run(tmp_path, "--logits", tmp_path / "logits.csv", "--config", "configs/kd_tau.py:split=25",
                 "--set", f"data.root={root}", "--set", "data.generate=False")
    np.testing.assert_array_equal(store.logits[:, 0, 0],
                                  _to_dataset_order(values[:N_SPLIT]).astype(np.float32))
    assert store.meta["import"]["format"] == "csv"
    with pytest.raises(distill.StoreError, match="table naming its own clips: drop --filenames"):
        _run(tmp_path, "--logits", tmp_path / "logits.csv", "--filenames", root / "meta.csv",
             "--split", root / tau.SPLIT_SUBDIR / "split25.csv", "--overwrite")
    # A DCASE output.csv-like table: a scene_label column, probabilities instead of logits.
    probs = np.exp(values) / np.exp(values).sum(-1, keepdims=True)
    rows = [f"{n}\t{TORCH_CLASSES[0]}\t" + "\t".join(repr(float(x)) for x in p) for n, p in zip(names, probs)]
    (tmp_path / "output.tsv").write_text("\t".join(["filename", "scene_label", *TORCH_CLASSES]) + "\n"
                                         + "\n".join(rows) + "\n")
    common = ["--logits", tmp_path / "output.tsv", "--split", root / tau.SPLIT_SUBDIR / "split25.csv",
              "--overwrite"]
    with pytest.raises(distill.StoreError, match=r"\['scene_label'\] are neither 'filename' nor a class"):
        _run(tmp_path, *common)
    with pytest.raises(distill.StoreError, match="these are probabilities"):
        _run(tmp_path, *common, "--classes", ",".join(TORCH_CLASSES))
    store = _run(tmp_path, *common, "--classes", ",".join(TORCH_CLASSES), "--probabilities")
    got = store.logits[:, 0, 0]
    want = _to_dataset_order(values[:N_SPLIT])
    # log-probabilities: the logits up to a per-row constant.
    np.testing.assert_allclose(got - got.mean(-1, keepdims=True), want - want.mean(-1, keepdims=True), atol=1e-5)


def test_the_student_uses_an_imported_store(tmp_path, dataset):
    """The student opens its store through train.loop._teacher_extras, as for a precomputed one."""
    from asc_jax.train import loop

    root, names = dataset
    np.save(tmp_path / "logits.npy", _logits(N_META))
    config = _config(root, tmp_path / "store")
    store = importing.import_logits(config.kd.store, logits=tmp_path / "logits.npy",
                                    target=importing.target_from_config(config), name="passt-cpjku",
                                    filenames=root / "meta.csv", classes=tau.CLASSES)
    clips = tau.load_split(root, "25", verify="none")
    data = types.SimpleNamespace(train_clips=clips)
    hook = loop._teacher_extras(dataclasses.replace(config, kd=dataclasses.replace(config.kd,
                                                                                 teachers="transformer")), data)
    assert hook.teacher_names == ("passt-cpjku",)
    out = hook(3, np.random.default_rng(0))
    assert out["aug"] == {}  # nothing replayed: the student's pipeline samples its own
    np.testing.assert_array_equal(out["teacher_logits"], store.logits[3, 0])
    # The student's split is checked against the store as for any store.
    with pytest.raises(distill.StoreError, match="lacks 1"):
        distill.StoreExtras(store, [*names[:N_SPLIT], names[-1]], tau.CLASSES, augment=STUDENT,
                            sample_rate=32000)


def test_a_training_batch_carries_the_imported_logits(tmp_path):
    """Through the grain pipeline: each record gets its clip's logits, and no stored
    augmentation, so the host roll is drawn fresh."""
    from asc_jax.data import pipeline, sources
    from tests.conftest import write_tau_dataset

    root = tmp_path / "tau"
    write_tau_dataset(root, np.random.default_rng(0).normal(0, 0.1, (7, tau.TAU_SAMPLE_RATE)).astype(np.float32),
                      tau.TAU_SAMPLE_RATE)
    clips = tau.load_split(root, "100")
    np.save(tmp_path / "logits.npy", _logits(7))
    config = dataclasses.replace(_config(root), data=DataConfig(root=str(root), generate=False))
    store = importing.import_logits(tmp_path / "store", logits=tmp_path / "logits.npy", name="t",
                                    target=importing.target_from_config(config),
                                    filenames=root / "split100.csv", classes=tau.CLASSES)
    hook = distill.StoreExtras(store.path, [c.filename for c in clips], tau.CLASSES, augment=STUDENT,
                               sample_rate=32000)
    source = sources.ClipSource(clips, root, sr=32000)
    batch = next(iter(pipeline.train_dataset(source, batch_size=4, seed=0, extra=hook)))
    rows = store.rows([clips[i].filename for i in batch["index"]])
    np.testing.assert_array_equal(batch["teacher_logits"], store.logits[rows, 0])
    assert not jax.tree.leaves(batch.get("aug", {})) and np.abs(batch["roll"]).max() > 0


# ---------------------------------------------------------------------------------------- errors
def _import_npy(tmp_path, dataset, values, filenames=None, classes=tau.CLASSES, **kw):
    root, names = dataset
    np.save(tmp_path / "logits.npy", values)
    if filenames is None:
        filenames = root / "meta.csv"
    elif not hasattr(filenames, "is_file"):
        (tmp_path / "names.txt").write_text("\n".join(filenames) + "\n")
        filenames = tmp_path / "names.txt"
    return importing.import_logits(tmp_path / "store", logits=tmp_path / "logits.npy",
                                   target=importing.target_from_config(_config(root)), name="t",
                                   filenames=filenames, classes=classes, **kw)


def test_a_row_count_matching_no_list_says_what_it_matches(tmp_path, dataset):
    root, _ = dataset
    split = root / tau.SPLIT_SUBDIR / "split25.csv"
    # Logits of the dataset twice over (several splits stacked) against the training split.
    with pytest.raises(distill.StoreError) as err:
        _import_npy(tmp_path, dataset, _logits(2 * N_META), filenames=split)
    message = str(err.value)
    assert "60 logit rows, but split25.csv lists 8 clips" in message
    assert "60 matches none of meta.csv (30), split25.csv (8), split100.csv (24), test.csv (6)" in message
    assert "2 x meta.csv (30)" in message and "30 x split25.csv" not in message
    # Logits of the whole dataset against the split's list: the message points at meta.csv.
    with pytest.raises(distill.StoreError, match=r"30 logit rows, but split25.csv lists 8 .* 30 matches meta.csv \(30\)"):
        _import_npy(tmp_path, dataset, _logits(N_META), filenames=split)


def test_extra_clips_of_the_dataset_are_dropped_and_logged(tmp_path, dataset, caplog):
    with caplog.at_level(logging.INFO, logger="asc_jax.distill.importing"):
        store = _import_npy(tmp_path, dataset, _logits(N_META))
    assert len(store) == N_SPLIT
    assert f"dropped {N_META - N_SPLIT} (e.g. 'audio/" in caplog.text and "outside split 25 of" in caplog.text


def test_missing_foreign_and_duplicate_clips_are_named(tmp_path, dataset):
    _, names = dataset
    values = _logits(N_SPLIT)
    with pytest.raises(distill.StoreError, match=rf"no logits for 1 \(e.g. '{names[2]}'\) clip\(s\) of split 25"):
        _import_npy(tmp_path, dataset, values[:-1], filenames=names[:2] + names[3:N_SPLIT])
    foreign = names[:N_SPLIT - 1] + ["audio/elsewhere.wav"]
    with pytest.raises(distill.StoreError, match=r"1 \(e.g. 'audio/elsewhere.wav'\) row\(s\) name clips that are "
                                                 r"not in the dataset"):
        _import_npy(tmp_path, dataset, values, filenames=foreign)
    twice = names[:N_SPLIT - 1] + ["/data/TAU/" + names[0]]
    with pytest.raises(distill.StoreError, match=rf"1 clip\(s\) have more than one row \('{names[0].split('/')[-1]}' "
                                                 r"at rows \[0, 7\]\)"):
        _import_npy(tmp_path, dataset, values, filenames=twice)
    assert not (tmp_path / "store").exists()


def test_class_names_are_checked_and_reordered(tmp_path, dataset):
    values = _logits(N_META)
    wrong = ["beach" if c == "tram" else c for c in tau.CLASSES]
    with pytest.raises(distill.StoreError, match=r"not classes of the dataset: \['beach'\]; missing: \['tram'\]"):
        _import_npy(tmp_path, dataset, values, classes=wrong)
    twice = [*tau.CLASSES[:-1], "bus"]
    with pytest.raises(distill.StoreError, match=r"given twice: \['bus'\]; missing: \['tram'\]"):
        _import_npy(tmp_path, dataset, values, classes=twice)
    with pytest.raises(distill.StoreError, match=r"10 logit columns, 9 class names"):
        _import_npy(tmp_path, dataset, values, classes=tau.CLASSES[:-1])
    with pytest.raises(distill.StoreError, match="give the class order of its columns by name"):
        _import_npy(tmp_path, dataset, values, classes=None)
    # A permutation: the column of "airport" (last in TORCH_CLASSES) becomes the first.
    store = _import_npy(tmp_path, dataset, values, classes=TORCH_CLASSES)
    np.testing.assert_array_equal(store.logits[:, 0, 0, 0], values[:N_SPLIT, TORCH_CLASSES.index("airport")])
    np.testing.assert_array_equal(store.logits[:, 0, 0], values[:N_SPLIT, ::-1])


def test_non_finite_logits_are_named(tmp_path, dataset):
    _, names = dataset
    values = _logits(N_META)
    values[5, 2] = np.nan
    values[6, 0] = np.inf
    with pytest.raises(distill.StoreError, match=rf"non-finite logit nan at row 5 \('{names[5]}'\), class "
                                                 rf"'{tau.CLASSES[2]}'; 2 clip\(s\) affected"):
        _import_npy(tmp_path, dataset, values)
    # Non-finite rows of dropped clips do not matter.
    values = _logits(N_META)
    values[N_META - 1] = np.nan
    assert np.isfinite(_import_npy(tmp_path, dataset, values).logits).all()


def test_views_are_refused_unless_reduced(tmp_path, dataset):
    values = _logits(N_META, views=3)
    with pytest.raises(distill.StoreError, match=r"hold 3 views per clip.*--reduce mean"):
        _import_npy(tmp_path, dataset, values)
    store = _import_npy(tmp_path, dataset, values, reduce="mean")
    np.testing.assert_allclose(store.logits[:, 0, 0], values[:N_SPLIT].mean(1), rtol=1e-6)
    assert store.n_views == 1 and store.meta["import"]["reduce"] == "mean"
    with pytest.raises(distill.StoreError, match="no view axis"):
        _import_npy(tmp_path, dataset, _logits(N_META), reduce="mean", overwrite=True)


def test_filename_lists_and_teacher_names(tmp_path, dataset):
    root, names = dataset
    (tmp_path / "list.csv").write_text("index;file\n0;a.wav\n")
    with pytest.raises(distill.StoreError, match=r"no 'filename' column; found \['index', 'file'\]"):
        importing.read_filenames(tmp_path / "list.csv")
    (tmp_path / "list.txt").write_text("a.wav\n\nb.wav\n\n")
    with pytest.raises(distill.StoreError, match=r"blank line\(s\) \[2\]"):
        importing.read_filenames(tmp_path / "list.txt")
    assert importing.read_filenames(root / "meta.csv") == names
    (tmp_path / "one_column.csv").write_text("\ufefffilename\r\naudio/a.wav\r\n")  # BOM, CRLF
    assert importing.read_filenames(tmp_path / "one_column.csv") == ["audio/a.wav"]
    for bad in ("all", "a,b", ""):
        with pytest.raises(ValueError, match="teacher name"):
            importing.import_logits(tmp_path / "s", logits=tmp_path / "x.npy",
                                    target=importing.target_from_config(_config(root)), name=bad)
    (tmp_path / "store").mkdir()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        _import_npy(tmp_path, dataset, _logits(N_META))
    with pytest.raises(SystemExit):  # --config and --split are exclusive
        _run(tmp_path, "--logits", "x.npy", "--config", "c.py", "--split", "s.csv")


def test_header_is_plain_json_with_provenance(tmp_path, dataset):
    store = _import_npy(tmp_path, dataset, _logits(N_META), command="python -m asc_jax.distill import ...")
    header = json.loads((store.path / "header.json").read_text())
    assert header["n_views"] == 1 and list(header["arrays"]) == ["logits"]
    assert header["meta"]["import"]["command"] == "python -m asc_jax.distill import ..."
    assert header["meta"]["teachers"]["t"]["imported"].endswith("logits.npy")
