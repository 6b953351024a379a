"""DCASE2025 submission packages: the CLI end to end on a tiny device set and evaluation set, the
meta.yaml filled from the run, the YAML subset against PyYAML, and the validator on malformed
copies of the package, each rejected with a message naming the file, line or column."""
import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest

from asc_jax import dcase2025 as api
from asc_jax import device_set as ds
from asc_jax import evaluate
from asc_jax.data.tau import CLASSES
from asc_jax.submission import cli, layout, meta_yaml, validator, yaml_lite
from tests.test_dcase2025_api import EVAL_DEVICES, write_dev_and_eval_sets
from tests.test_predict import build_device_set

LABEL = "Doe_ABC_task1_1"
TEMPLATE = """\
# Submission information
submission:
  label: Doe_ABC_task1_9          # the writer puts the package's label here
  name: Tiny Rep-Mobile, device-specific
  abbreviation: TinyRep
  authors:
    - lastname: Doe
      firstname: Jane
      email: jane.doe@example.org   # contact
      corresponding: true
      affiliation:
        abbreviation: ABC
        institute: Example Institute
        department: Acoustics
        location: Linz, Austria
    - lastname: Roe
      firstname: Richard
      email: r.roe@example.org
      corresponding: false
      affiliation: { abbreviation: ABC, institute: Example Institute, location: "Linz, Austria" }
system:
  inference_code: https://example.org/asc-jax
  source_code: !!null
  description:
    input_sampling_rate: 44.1kHz     # measured: replaced by the frontend's rate
    external_data_usage: pre-trained model
    data_augmentation: "TODO: a placeholder does not hide the derived value"
  external_datasets:
    - name: AudioSet (PaSST teacher pre-training)
      url: https://research.google.com/audioset/
      total_audio_length: !!null
"""


def _metrics(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    devices = ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"] * 4
    return evaluate.compute_metrics(rng.normal(size=(36, 10)), np.arange(36) % 10, devices)


RUN_CONFIG = {"augment": {"roll": {"max_shift": 0.125}, "freq_mask": {"max_width": 48}, "mixstyle": {"p": 0.4},
                          "time_mask": None, "dir": None},
              "kd": {"store": "stores/split25"}, "data": {"train_split": "25"},
              "model": {"name": "rep_mobile", "init_from": ""}, "prune": None}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("submission")
    meta = {"eval": {"metrics": _metrics(0), "base_metrics": _metrics(1)}, "config": RUN_CONFIG}
    built = build_device_set(tmp_path_factory, meta=meta)
    sets = write_dev_and_eval_sets(root)
    template = root / "template.meta.yaml"
    template.write_text(TEMPLATE)
    out = root / "out"
    args = ["--checkpoint", str(built["set"]), "--eval-root", str(sets["eval"]), "--label", LABEL,
            "--out", str(out), "--meta-template", str(template), "--cpu", "--batch-size", "8"]
    return {**built, **sets, "meta": meta, "template": template, "args": args, "out": out,
            "dir": out / LABEL, "files": layout.package_files(out / LABEL, LABEL)}


@pytest.fixture(scope="module")
def written(package):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(package["args"])
    assert code == 0, stdout.getvalue()
    return {**package, "stdout": stdout.getvalue()}


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_cli_writes_the_package(written):
    files = written["files"]
    assert sorted(p.name for p in written["dir"].iterdir()) == sorted(p.name for p in files.values())
    assert "routing: base 4, a 1, s1 1 (files per model)" in written["stdout"]
    assert "4 file(s) fell back to the base model: 1 with no device id; 1 with device unknown; " \
           "2 of a device without its own model (c 1, s9 1)" in written["stdout"]

    # output.csv: what evaluate_submission.py writes from the API's logits.
    rows = _rows(files["output"])
    assert rows[0] == ["filename", "scene_label", *CLASSES]
    eval_set = layout.read_eval_set(written["eval"])
    assert [r[0] for r in rows[1:]] == eval_set.filenames == [f"audio/{i}.wav" for i in range(len(EVAL_DEVICES))]
    logits, order = api.predict([str(p) for p in eval_set.paths()], eval_set.device_ids, written["set"],
                                use_cuda=False)
    z = np.exp(np.stack(logits) - np.max(logits, axis=1, keepdims=True))
    expected = z / z.sum(1, keepdims=True)
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(probs, expected, atol=5e-7 + 1e-9)  # six decimals
    assert [r[1] for r in rows[1:]] == [CLASSES[i] for i in expected.argmax(1)]

    # complexity JSON: test_complexity.py's measurement of the set.
    assert json.loads(files["complexity"].read_text()) == api.check_complexity(api.load_model(written["set"]))


def test_meta_yaml_is_filled_from_the_run(written):
    text = written["files"]["meta"].read_text()
    meta = yaml_lite.load(text)
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text) == meta  # a real YAML parser reads the same

    submission = meta["submission"]
    assert submission["label"] == LABEL and submission["name"] == "Tiny Rep-Mobile, device-specific"
    assert [a["lastname"] for a in submission["authors"]] == ["Doe", "Roe"]
    assert submission["authors"][1]["affiliation"]["location"] == "Linz, Austria"

    complexity_json = json.loads(written["files"]["complexity"].read_text())
    assert meta["system"]["complexity"] == {
        "total_model_size": complexity_json["max_Params"], "total_parameters": 23_632,
        "macs": complexity_json["max_MACs"], "precision": "fp32"}
    description = meta["system"]["description"]
    assert description["input_sampling_rate"] == "16kHz"  # measured, not the template's 44.1kHz
    assert description["data_augmentation"] == "time rolling, frequency masking, freq-mixstyle"
    assert description["external_data_usage"] == "pre-trained model"  # declared
    assert "knowledge distillation" in description["complexity_management"]
    assert description["num_models_at_inference"] == 3
    assert description["model_weight_sharing"] == "fully device-specific"
    assert "25% split" in description["training_data"]
    assert meta["system"]["source_code"] is None
    assert meta["system"]["external_datasets"][0]["name"].startswith("AudioSet")

    dev = meta["results"]["development_dataset"]
    for block, metrics in (("device_specific", written["meta"]["eval"]["metrics"]),
                           ("general", written["meta"]["eval"]["base_metrics"])):
        assert dev[block]["overall"] == {"logloss": None, "accuracy": round(100 * metrics["macro_accuracy"], 2)}
        assert list(dev[block]["class_wise"]) == list(CLASSES)
        assert dev[block]["class_wise"]["park"]["accuracy"] == round(100 * metrics["class_accuracy"]["park"], 2)
        assert dev[block]["device_wise"]["s4"]["accuracy"] == round(100 * metrics["device_accuracy"]["s4"], 2)

    report = validator.validate(written["dir"], eval_root=written["eval"])
    assert report.ok and report.warnings == [], report.format()


def test_check_cli_accepts_the_package(written, capsys):
    assert cli.main(["--check", str(written["dir"]), "--eval-root", str(written["eval"])]) == 0
    assert capsys.readouterr().out.strip().endswith("valid (0 warning(s))")
    # Without the evaluation set the row checks are skipped, and said so.
    assert cli.main(["--check", str(written["dir"])]) == 0
    assert "row count and filenames not checked" in capsys.readouterr().out


# --- the validator on malformed packages --------------------------------------------------------

def _edit_rows(path, edit):
    rows = _rows(path)
    edit(rows)
    with path.open("w", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(rows)


def _drop_column(name):
    def edit(rows):
        k = rows[0].index(name)
        for r in rows:
            del r[k]
    return edit


def _swap_columns(a, b):
    def edit(rows):
        i, j = rows[0].index(a), rows[0].index(b)
        for r in rows:
            r[i], r[j] = r[j], r[i]
    return edit


def _set(row, column, value):
    def edit(rows):
        rows[row][rows[0].index(column) if isinstance(column, str) else column] = value
    return edit


def _scale_row(row, factor):
    def edit(rows):
        rows[row][2:] = [f"{float(v) * factor:.6f}" for v in rows[row][2:]]
    return edit


def _least_likely(rows, row):
    probs = [float(v) for v in rows[row][2:]]
    return CLASSES[int(np.argmin(probs))]


def _mislabel(row):
    def edit(rows):
        rows[row][1] = _least_likely(rows, row)
    return edit


def _edit_json(edit):
    def apply(path):
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return apply


def _edit_meta(edit):
    def apply(path):
        meta = yaml_lite.load(path.read_text())
        edit(meta)
        path.write_text(yaml_lite.dump(meta))
    return apply


def _over_macs(data):
    data["per_device"]["s1"]["MACs"] = 31_000_000
    data["max_MACs"] = 31_000_000


OUT, META, COMPLEXITY = "output", "meta", "complexity"
MALFORMED = {
    "missing column": (OUT, lambda p: _edit_rows(p, _drop_column("tram")),
                       [f"{LABEL}.output.csv: missing column(s) ['tram']"]),
    "wrong row count": (OUT, lambda p: _edit_rows(p, lambda rows: rows.pop()),
                        [f"{LABEL}.output.csv: 5 rows, but the evaluation set", "has 6 clips: one row per clip",
                         "1 clip(s) of the evaluation set have no row (first: audio/5.wav)"]),
    "bad class name in the header": (OUT, lambda p: _edit_rows(p, _set(0, "bus", "bus_stop")),
                                     ["unknown column(s) ['bus_stop'] (class names must be the DCASE classes",
                                      "missing column(s) ['bus']"]),
    "bad scene label": (OUT, lambda p: _edit_rows(p, _set(2, 1, "forest")),
                        [f"{LABEL}.output.csv: line 3: scene_label 'forest' is not a DCASE class"]),
    "probabilities off": (OUT, lambda p: _edit_rows(p, _scale_row(1, 0.5)),
                          ["line 2: probabilities sum to 0.5", "(must be 1 within 0.001)"]),
    "scene label not the argmax": (OUT, lambda p: _edit_rows(p, _mislabel(4)),
                                   ["line 5: scene_label", "is not the most probable class"]),
    "reordered columns": (OUT, lambda p: _edit_rows(p, _swap_columns("bus", "tram")),
                          ["columns out of order: expected ['filename', 'scene_label', 'airport', 'bus'"]),
    "duplicate filename": (OUT, lambda p: _edit_rows(p, _set(3, 0, "audio/0.wav")),
                           ["line 4: audio/0.wav is on line 2 already",
                            "1 clip(s) of the evaluation set have no row (first: audio/2.wav)"]),
    "unknown filename": (OUT, lambda p: _edit_rows(p, _set(3, 0, "audio/99.wav")),
                         ["line 4: audio/99.wav is not a clip of the evaluation set"]),
    "non-finite probability": (OUT, lambda p: _edit_rows(p, _set(6, "park", "nan")),
                               ["line 7, column park: nan is not finite"]),
    "probability outside [0, 1]": (OUT, lambda p: _edit_rows(p, _set(6, "park", "-0.2")),
                                   ["line 7, column park: -0.2 is outside [0, 1]"]),
    "not a number": (OUT, lambda p: _edit_rows(p, _set(6, "park", "high")),
                     ["line 7, column park: 'high' is not a number"]),
    "comma-separated": (OUT, lambda p: p.write_text(p.read_text().replace("\t", ",")),
                        ["the header has no tabs but commas: the file must be tab-separated"]),
    "over the MAC limit": (COMPLEXITY, _edit_json(_over_macs),
                           [f"{LABEL}.complexity.json: device s1: 31,000,000 MACs exceed the limit of 30,000,000",
                            "system.complexity.macs is 1527608, the complexity JSON's max_MACs is 31000000"]),
    "over the memory limit in meta.yaml": (
        META, _edit_meta(lambda m: m["system"]["complexity"].update(total_model_size=200_000)),
        ["system.complexity.total_model_size 200,000 exceeds the limit of 128,000"]),
    "stale max in the complexity JSON": (COMPLEXITY, _edit_json(lambda d: d.update(max_Params=1)),
                                         ["max_Params is 1, the per-device maximum is 94528"]),
    "label mismatch in meta.yaml": (META, _edit_meta(lambda m: m["submission"].update(label="Doe_ABC_task1_2")),
                                    ["submission.label is 'Doe_ABC_task1_2', the package's label is "
                                     "'Doe_ABC_task1_1'"]),
    "missing meta field": (META, _edit_meta(lambda m: m["submission"].pop("name")),
                           [f"{LABEL}.meta.yaml: missing submission.name"]),
    "two corresponding authors": (
        META, _edit_meta(lambda m: m["submission"]["authors"][1].update(corresponding=True)),
        ["exactly one author must have 'corresponding: true', found 2"]),
    "long abbreviation": (META, _edit_meta(lambda m: m["submission"].update(abbreviation="TinyRepMobile")),
                          ["submission.abbreviation 'TinyRepMobile' is longer than 10 characters"]),
    "unreadable meta.yaml": (META, lambda p: p.write_text("submission:\n  label: &l x\n"),
                             [f"{LABEL}.meta.yaml: line 2: anchors are not supported"]),
    "missing file": (META, lambda p: p.unlink(), [f"missing {LABEL}.meta.yaml"]),
    "stray file": (OUT, lambda p: (p.parent / "notes.txt").write_text("x"),
                   ["unexpected notes.txt: every file of the package starts with its label 'Doe_ABC_task1_1'"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_validator_rejects_malformed_packages(written, tmp_path, case):
    kind, mutate, messages = MALFORMED[case]
    copy = tmp_path / LABEL
    shutil.copytree(written["dir"], copy)
    mutate(layout.package_files(copy, LABEL)[kind])
    report = validator.validate(copy, eval_root=written["eval"])
    assert not report.ok
    text = report.format()
    for message in messages:
        assert message in text, f"{case}: expected {message!r} in\n{text}"


def test_check_cli_fails_on_a_bad_label_and_names_it(written, tmp_path, capsys):
    copy = tmp_path / "Doe_task1_1"
    shutil.copytree(written["dir"], copy)
    assert cli.main(["--check", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "label 'Doe_task1_1' is not of the form Lastname_Inst_task1_N" in out
    assert f"unexpected {LABEL}.output.csv" in out


def test_writer_fails_loudly(package, tmp_path, capsys):
    # A label that cannot be valid stops before anything is loaded.
    args = [*package["args"][:4], "--label", "doe_task1", "--out", str(tmp_path)]
    assert cli.main(args) == 1
    assert "label 'doe_task1' is not of the form" in capsys.readouterr().err
    # A package that fails the checks after writing is reported, with every error.
    bad = tmp_path / "bad.meta.yaml"
    bad.write_text(package["template"].read_text().replace("abbreviation: TinyRep", "abbreviation: TinyRepMobile"))
    args = [*package["args"], "--out", str(tmp_path), "--meta-template", str(bad)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "the package fails the submission checks" in err
    assert "submission.abbreviation 'TinyRepMobile' is longer than 10 characters" in err
    assert (tmp_path / LABEL / f"{LABEL}.output.csv").is_file()  # left for inspection
    assert cli.main(args) == 1 and "exists; pass --overwrite" in capsys.readouterr().err


def test_eval_set_layouts(package, tmp_path):
    dev = layout.read_eval_set(package["dev"])  # no evaluation_setup/: meta.csv, devices from source_label
    assert dev.source.name == "meta.csv" and dev.device_ids == ["a", "b", "s1", "s4", "a", "s6"]
    with pytest.raises(FileNotFoundError, match="no evaluation_setup/fold1_test.csv"):
        layout.read_eval_set(tmp_path)
    (tmp_path / "evaluation_setup").mkdir()
    listing = tmp_path / "evaluation_setup" / "fold1_test.csv"
    listing.write_text("filename\tdevice_id\naudio/1.wav\ta\naudio/1.wav\tb\n")
    with pytest.raises(ValueError, match=r"fold1_test.csv line 3: audio/1.wav is listed already on line 2"):
        layout.read_eval_set(tmp_path)
    listing.write_text("filename\naudio/1.wav\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['device_id'\]"):
        layout.read_eval_set(tmp_path)


def test_meta_of_a_single_model_workdir(package, tmp_path):
    """A single model: results from its workdir's summary.json for both blocks, the config's
    absence of teachers and pretrained init declared as no external data."""
    workdir = tmp_path / "run"
    shutil.copytree(package["members"]["base"], workdir / "deploy")
    metrics = _metrics(2)
    (workdir / "summary.json").write_text(json.dumps({"deploy_eval": metrics}))
    (workdir / "config.json").write_text(json.dumps({**RUN_CONFIG, "kd": {"store": ""}}))
    model = api.load_model(workdir)
    meta = meta_yaml.build_meta(label=LABEL, device_set=model.device_set, is_set=model.is_set,
                                sample_rate=model.sample_rate, complexity_json=api.check_complexity(model))
    dev = meta["results"]["development_dataset"]
    assert dev["general"] == dev["device_specific"]
    assert dev["general"]["overall"]["accuracy"] == round(100 * metrics["macro_accuracy"], 2)
    description = meta["system"]["description"]
    assert description["num_models_at_inference"] == 1 and description["device_information"] == "not used"
    assert description["external_data_usage"] is None and meta["system"]["external_datasets"] == []
    assert "knowledge distillation" not in description["complexity_management"]
    assert meta_yaml.placeholders(meta) == [
        "submission.name", "submission.abbreviation", "submission.authors[0].lastname",
        "submission.authors[0].firstname", "submission.authors[0].email",
        "submission.authors[0].affiliation.abbreviation", "submission.authors[0].affiliation.institute",
        "submission.authors[0].affiliation.department", "submission.authors[0].affiliation.location",
        "system.inference_code", "system.source_code"]
    # The set manifest's device list is what routes: the single model has none.
    assert model.device_set.devices == {} and model.route("a") == ds.BASE


# --- the YAML subset ----------------------------------------------------------------------------

YAML_VALUES = {
    "plain": "log-mel energies", "commas": "freq-mixstyle, time rolling", "colon": "a: b", "hash": "x # y",
    "url": "https://example.org/x", "numeric string": "0123", "float string": "1.5", "bool string": "yes",
    "null string": "null", "empty": "", "quote": "O'Neil", "unicode": "Universität Linz", "int": 7, "neg": -3,
    "float": 0.1, "small": 1e-5, "big": 1e20, "inf": float("inf"), "none": None, "true": True,
    "list": ["a", 2, None], "empty list": [], "empty map": {},
    "people": [{"name": "x", "nested": {"k": 1}}, {"name": "y"}],
}


def test_yaml_subset_round_trips_and_agrees_with_pyyaml():
    text = yaml_lite.dump({"root": YAML_VALUES}, {"root": "a comment", "root.plain": "two\nlines"})
    assert yaml_lite.load(text) == {"root": YAML_VALUES}
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text) == {"root": YAML_VALUES}
    assert yaml_lite.load(TEMPLATE) == yaml.safe_load(TEMPLATE)  # the organisers' style: flow maps, comments


@pytest.mark.parametrize("text, message", [
    ("a: &x 1", "line 1: anchors are not supported"),
    ("a: |\n  x", "line 1: block scalars are not supported"),
    ("a: b\n   c", "line 2: unexpected indentation"),
    ("a: 1\na: 2", "line 2: duplicate key 'a'"),
    ("a:\n\t- x", "line 2: tab in indentation"),
    ("a: [[1]]", "line 1: nested flow collections are not supported"),
    ("a: 017", "line 1: '017' is a number in another base"),
    ("a: !!str x", "line 1: tags are not supported"),
    ("a: 'x", "line 1: unterminated '-quoted string"),
    ("a: b: c", "line 1: ': ' inside a value"),
])
def test_yaml_subset_refuses_what_it_would_misread(text, message):
    with pytest.raises(yaml_lite.YamlError, match=message.replace("[", r"\[").replace("|", r"\|")):
        yaml_lite.load(text)
