"""The experiment runner: plans of every table, aggregation against hand-computed numbers,
resumability and skipping, and the CLI glue of one smoke table with the training faked (the
training loop itself is tested end to end in test_train.py, test_prune_e2e.py, test_kd_e2e.py)."""
import collections
import csv
import dataclasses
import io
import json
import math
import re

import numpy as np
import pytest

from asc_jax.config import to_dict
from asc_jax.data import synthetic
from asc_jax.experiments import TABLES, check, collect, execute, format_cell, main, mean_std, plan
from asc_jax.experiments.runner import load_run_config
from asc_jax.experiments.tables import PAPER_SPLITS, SMOKE_DATASET, Row, Table

STATES = ("train", "resume", "cached", "skipped", "failed")


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """The tiny synthetic set smoke runs generate (120 training clips, 90 test clips)."""
    root = tmp_path_factory.mktemp("smoke") / "tau"
    synthetic.ensure_dataset(root, **SMOKE_DATASET)
    return root


def _dry_run_lines(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    return [line for line in out.splitlines() if line.split(" ", 1)[0] in STATES]


@pytest.mark.parametrize("name", ["I", "II", "III", "IV", "V"])
def test_dry_run_plans_rows_x_splits_x_seeds(name, tmp_path, capsys):
    table = TABLES.get(name)
    workdir = tmp_path / "runs"
    lines = _dry_run_lines(capsys, [name, "--data", str(tmp_path / "tau"), "--workdir", str(workdir),
                                    "--seeds", "0,1", "--splits", "5,25,100", "--dry-run"])
    n_splits = len(table.splits) if table.splits else 3
    assert len(lines) == len(table.rows) * n_splits * 2
    # Every line is a train.py command with its own workdir, split and seed.
    workdirs = [line.split("--workdir ")[1].split(" ")[0] for line in lines]
    assert len(set(workdirs)) == len(lines)
    for line in lines:
        config = line.split("--config ")[1].split(" ")[0]
        assert config.startswith("configs/") and re.search(r"[:,]split=(5|25|100)$", config), line
        assert f"--set data.root={tmp_path / 'tau'}" in line
    assert {w.rsplit("/", 1)[1] for w in workdirs} == {"seed0", "seed1"}
    assert not workdir.exists(), "a dry run must not create run directories"
    # Smoke mode: one seed, one split (100) per row.
    smoke = _dry_run_lines(capsys, [name, "--data", str(tmp_path / "tau"), "--workdir", str(workdir),
                                    "--smoke", "--dry-run"])
    assert len(smoke) == len(table.rows)
    assert all("split=100 " in line and "seed=0" in line and "optim.epochs=1" in line for line in smoke)


def test_plan_spec_overrides_and_layout(tmp_path):
    runs = plan(TABLES.get("II"), data="D", workdir=tmp_path, seeds=(3,), splits=("25",))
    assert [r.row.key for r in runs] == ["all", "no_3x3", "no_1x1", "no_3x1_1x3"]
    run = runs[2]
    assert run.spec == "configs/rep_mobile_tau.py:branches=3x3+3x1+1x3,split=25"
    assert run.overrides == ("data.root=D", "seed=3")
    assert run.workdir == tmp_path / "II" / "no_1x1" / "split25" / "seed3"
    config = load_run_config(run)
    assert config.model.options["branches"] == ("3x3", "3x1", "1x3")
    assert (config.seed, config.data.train_split, config.data.root) == (3, "25", "D")
    # Table I is fixed at split 100 whatever --splits says; smoke runs shrink the model.
    runs = plan(TABLES.get("I"), data="D", workdir=tmp_path, seeds=(0,), splits=PAPER_SPLITS, smoke=True)
    assert {r.split for r in runs} == {"100"}
    config = load_run_config(runs[0])
    assert config.model.options["base_channels"] == 8 and config.optim.epochs == 1
    assert config.data.generate and config.data.synthetic["n_train_per_class_device"] == 2


def test_mean_std_and_cells_match_hand_computation():
    # mean = 0.56; deviations -0.05, -0.01, 0.06 -> sample var = 0.0062 / 2 = 0.0031.
    mean, std = mean_std([0.51, 0.55, 0.62])
    assert mean == pytest.approx(0.56, abs=1e-12)
    assert std == pytest.approx(math.sqrt(0.0031), abs=1e-12)
    assert std == pytest.approx(np.std([0.51, 0.55, 0.62], ddof=1), abs=1e-12)
    assert format_cell([0.51, 0.55, 0.62], 3) == "56.00 ± 5.57"
    assert format_cell([0.5, 0.6], 3) == "55.00 ± 7.07 (n=2)"
    assert format_cell([0.5], 1) == "50.00"
    assert format_cell([], 3) == "–"


def _fake_summary(workdir, accuracy, params=1000, macs=2_000_000):
    workdir.mkdir(parents=True)
    complexity = {"deploy_form": {"params": params, "macs": macs}}
    (workdir / "summary.json").write_text(json.dumps(
        {"finished": True, "eval": {"macro_accuracy": accuracy, "accuracy": 0.0}, "complexity": complexity}))


def test_aggregation_of_fake_summaries(tmp_path):
    table = Table("T", "Table T: test", rows=(
        Row("a", "System A", "configs/demo.py"), Row("b", "System B", "configs/demo.py")))
    runs = plan(table, data="D", workdir=tmp_path, seeds=(0, 1, 2), splits=("5", "100"))
    accuracies = {("a", "5"): [0.51, 0.55, 0.62], ("a", "100"): [0.70, 0.72],
                  ("b", "5"): [0.40], ("b", "100"): []}
    by_cell = {}
    for run in runs:
        by_cell.setdefault((run.row.key, run.split), []).append(run)
    for cell, values in accuracies.items():
        for run, value in zip(by_cell[cell], values):
            _fake_summary(run.workdir, value, params=1234 if cell[0] == "a" else 56_789)
    unfinished = by_cell[("b", "100")][0].workdir
    unfinished.mkdir(parents=True)
    (unfinished / "summary.json").write_text(json.dumps({"finished": False, "step": 3}))

    results = collect(table, runs)
    md = results.markdown().splitlines()
    header = md.index("| System | Params | MACs | 5% | 100% |")
    assert md[header + 2] == "| System A | 1.2K | 2.00M | 56.00 ± 5.57 | 71.00 ± 1.41 (n=2) |"
    assert md[header + 3] == "| System B | 56.8K | 2.00M | 40.00 (n=1) | – |"

    rows = list(csv.DictReader(io.StringIO(results.csv())))
    assert [r["system"] for r in rows] == ["System A", "System B"]
    assert float(rows[0]["split5_mean"]) == pytest.approx(0.56, abs=1e-12)
    assert float(rows[0]["split5_std"]) == pytest.approx(math.sqrt(0.0031), abs=1e-12)
    assert float(rows[0]["split100_std"]) == pytest.approx(np.std([0.70, 0.72], ddof=1), abs=1e-12)
    assert rows[0]["split100_n"] == "2" and rows[0]["params"] == "1234"
    assert rows[1]["split5_std"] == "" and rows[1]["split100_mean"] == "" and rows[1]["split100_n"] == "0"


def test_pruning_summaries_report_their_last_phase(tmp_path):
    table = Table("T", "T", rows=(Row("p", "pruned", "configs/demo.py"),))
    (run,) = plan(table, data="D", workdir=tmp_path, seeds=(0,), splits=("25",))
    run.workdir.mkdir(parents=True)
    phase = lambda acc, params: {"macro_accuracy": acc, "complexity": {  # noqa: E731
        "train_form": {"params": 0, "macs": 0}, "deploy_form": {"params": params, "macs": 7_000_000}}}
    (run.workdir / "summary.json").write_text(json.dumps(
        {"finished": True, "phases": [phase(0.6, 99_000), phase(0.55, 30_000)]}))
    (row,) = collect(table, [run]).rows
    assert row.accuracies["25"] == (0.55,) and row.params == (30_000,)


def test_execute_skips_finished_resumes_unfinished_and_survives_failures(tmp_path):
    table = Table("T", "T", rows=(Row("ok", "ok", "configs/demo.py"),
                                  Row("boom", "boom", "configs/demo.py:model=cp_mobile")))
    runs = plan(table, data="D", workdir=tmp_path, seeds=(0, 1), splits=("100",))
    calls, attempts = [], {}

    def fake_train(config, workdir):
        calls.append(workdir)
        attempts[workdir] = attempts.get(workdir, 0) + 1
        if config.model.name == "cp_mobile":
            raise RuntimeError("exploded")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(to_dict(config)))
        if workdir.name == "seed1" and attempts[workdir] == 1:
            return {"finished": False, "step": 1}  # stopped early (max_steps): resumed next time
        summary = {"finished": True, "eval": {"macro_accuracy": 0.5}, "complexity": {}}
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary

    first = execute(runs, train_fn=fake_train)
    assert [o.state for o in first] == ["trained", "unfinished", "failed", "failed"]
    assert "exploded" in first[2].reason
    assert "RuntimeError: exploded" in (runs[2].workdir / "error.txt").read_text()

    calls.clear()
    second = execute(runs, train_fn=fake_train)
    assert [o.state for o in second] == ["cached", "trained", "failed", "failed"]
    assert calls == [runs[1].workdir, runs[2].workdir, runs[3].workdir]

    # A finished run whose stored config differs from the plan is not reported as cached.
    stored = json.loads((runs[0].workdir / "config.json").read_text())
    (runs[0].workdir / "config.json").write_text(json.dumps({**stored, "seed": 42}))
    outcome, config = check(runs[0])
    assert outcome.state == "failed" and "different config" in outcome.reason and config is None


def test_unsupported_rows_are_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pretrained/ here
    rows = {r.row.key: r for r in plan(TABLES.get("III"), data="D", workdir=tmp_path, seeds=(0,), splits=("5",))}
    outcome, config = check(rows["passt"])  # trained here on PaSST's frontend
    assert outcome.state == "planned" and config.frontend == "passt" and config.model.name == "passt"
    outcome, config = check(rows["passt_pt"])
    assert outcome.state == "skipped" and "pretrained/passt_audioset not found" in outcome.reason
    student_features = Table("P", "P", rows=(Row("p", "P", "configs/demo.py:model=passt", requires=("passt_frontend",)),))
    (run,) = plan(student_features, data="D", workdir=tmp_path, seeds=(0,), splits=("5",))
    outcome, _ = check(run)
    assert outcome.state == "skipped" and "its own frontend" in outcome.reason
    table = Table("T", "T", rows=(Row("x", "X", "configs/demo.py:model=no_such_model"),))
    (run,) = plan(table, data="D", workdir=tmp_path, seeds=(0,), splits=("5",))
    outcome, _ = check(run)
    assert outcome.state == "skipped" and "'no_such_model' is not registered" in outcome.reason
    results = collect(table, [run], [outcome])
    assert "| X | – | – | skipped |" in results.markdown()
    assert "X: skipped: model 'no_such_model' is not registered" in results.markdown()


def _fake_train_and_evaluate(calls, fail=()):
    """Stands in for `asc_jax.train.train_and_evaluate`: records (workdir, config), writes what a
    finished run leaves for the runner (config.json, summary.json) with a made-up accuracy per row,
    and raises for runs whose row key is in `fail`."""
    def train_and_evaluate(config, workdir):
        calls.append((workdir, config))
        key = workdir.parts[-3]
        if key in fail:
            raise RuntimeError(f"{key} exploded")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
        accuracy = 0.4 + 0.05 * [r.key for r in TABLES.get("II").rows].index(key)
        summary = {"finished": True, "eval": {"macro_accuracy": accuracy, "accuracy": accuracy},
                   "complexity": {"deploy_form": {"params": 1000, "macs": 2_000_000}}}
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary
    return train_and_evaluate


def test_smoke_table_ii_through_the_cli_isolates_failures_and_rerun_is_cached(tmp_path, monkeypatch, capsys):
    """The CLI glue of a table run: the runner's real `train` entry point gets each planned smoke
    config (training itself is faked: tests/test_train.py trains for real), results.md/csv hold
    what the runs reported, a failing run fails only itself (exit status 1), and a rerun retrains
    only that run and skips the finished ones."""
    import asc_jax.train
    calls = []
    monkeypatch.setattr(asc_jax.train, "train_and_evaluate", _fake_train_and_evaluate(calls, fail=("no_1x1",)))
    data, root = tmp_path / "tau", tmp_path / "runs"
    argv = ["II", "--data", str(data), "--workdir", str(root), "--smoke"]
    table = TABLES.get("II")
    runs = plan(table, data=data, workdir=root, seeds=(0,), splits=("100",), smoke=True)
    assert [r.workdir for r in runs] == [root / "II" / row.key / "split100" / "seed0" for row in table.rows]
    assert runs[2].row.key == "no_1x1"  # the run that fails first

    assert main(argv) == 1  # one run failed; the others still ran
    assert [w for w, _ in calls] == [r.workdir for r in runs]
    for (_, config), run in zip(calls, runs):  # exactly the planned smoke config of each run
        assert config == load_run_config(run)
        assert (config.optim.epochs, config.seed, config.data.train_split, config.data.root) == (1, 0, "100", str(data))
    failed = runs[2].workdir / "error.txt"
    assert "RuntimeError: no_1x1 exploded" in failed.read_text()
    out = capsys.readouterr().out
    assert f"Table II: 1 failed, {len(table.rows) - 1} trained" in out
    md = (root / "II" / "results.md").read_text().splitlines()
    header = md.index("| System | 100% |")
    body = md[header + 2: header + 2 + len(table.rows)]
    assert body == [f"| {table.rows[0].label} | 40.00 |", f"| {table.rows[1].label} | 45.00 |",
                    f"| {table.rows[2].label} | – |", f"| {table.rows[3].label} | 55.00 |"]
    assert f"- {table.rows[2].label}: 1 run(s) failed (traceback in {runs[2].workdir}/error.txt)" in md

    # Rerun after the "fix": only the failed run trains, the finished ones are cached.
    calls.clear()
    monkeypatch.setattr(asc_jax.train, "train_and_evaluate", _fake_train_and_evaluate(calls))
    assert main(argv) == 0
    assert [w for w, _ in calls] == [runs[2].workdir]
    assert not failed.exists()
    assert f"Table II: {len(table.rows) - 1} cached, 1 trained" in capsys.readouterr().out
    md = (root / "II" / "results.md").read_text().splitlines()
    assert md[header + 2: header + 2 + len(table.rows)][2] == f"| {table.rows[2].label} | 50.00 |"
    rows = list(csv.DictReader((root / "II" / "results.csv").open()))
    assert [r["key"] for r in rows] == [r.key for r in table.rows]
    assert [float(r["split100_mean"]) for r in rows] == pytest.approx([0.40, 0.45, 0.50, 0.55])
    assert all(r["split100_n"] == "1" and r["split100_std"] == "" and r["note"] == "" for r in rows)

    # A third run has nothing to do and rewrites the same report.
    calls.clear()
    assert main(argv) == 0
    assert calls == [] and f"Table II: {len(table.rows)} cached" in capsys.readouterr().out
    assert (root / "II" / "results.md").read_text().splitlines() == md


def test_runner_train_dispatches_like_train_py(monkeypatch, tmp_path):
    """`asc_jax.train.run` is the one dispatch, called by train.py and by the runner (the CLI's
    default train_fn): pruning configs run their phases, the rest one train_and_evaluate; both of
    those are tested end to end elsewhere."""
    import inspect

    import asc_jax.train
    import train as train_py
    from asc_jax.config import load_config
    from asc_jax.prune import PruneConfig
    from asc_jax.train import progressive
    assert train_py.run is asc_jax.train.run
    assert inspect.signature(execute).parameters["train_fn"].default is asc_jax.train.run
    called = []
    monkeypatch.setattr(asc_jax.train, "train_and_evaluate", lambda c, w: called.append(("dense", w)) or {})
    monkeypatch.setattr(progressive, "train_and_prune", lambda c, w: called.append(("prune", w)) or {})
    config = load_config("configs/demo.py")
    asc_jax.train.run(config, tmp_path / "a")
    asc_jax.train.run(dataclasses.replace(config, prune=PruneConfig(sparsity=0.5)), tmp_path / "b")
    assert called == [("dense", tmp_path / "a"), ("prune", tmp_path / "b")]


def test_a_row_whose_config_cannot_load_fails_only_its_runs(tmp_path):
    """Smoke planning reads each row's model name; a config that cannot be loaded (missing file,
    bad variant) still plans, and `check` fails that run with the loading error. Any other
    error in a config file is a bug and is not swallowed."""
    table = Table("T", "T", rows=(Row("gone", "Gone", str(tmp_path / "missing.py")),
                                  Row("typo", "Typo", "configs/demo.py:epoch=1")))
    runs = plan(table, data="D", workdir=tmp_path, seeds=(0,), smoke=True)
    (gone, _), (typo, _) = (check(r) for r in runs)
    assert gone.state == "failed" and gone.reason.startswith("config: FileNotFoundError"), gone.reason
    assert typo.state == "failed" and "unknown variant 'epoch'" in typo.reason, typo.reason
    buggy = tmp_path / "buggy.py"
    buggy.write_text("def get_config(arg):\n    return 1 / 0\n")
    with pytest.raises(ZeroDivisionError):
        plan(Table("T", "T", rows=(Row("bug", "Bug", str(buggy)),)), data="D", workdir=tmp_path,
             seeds=(0,), smoke=True)


@pytest.mark.slow
def test_kd_table_builds_its_store_from_finished_teachers(smoke_data, tmp_path, monkeypatch):
    from flax import nnx

    from asc_jax.audio.features import MelConfig
    from asc_jax.checkpoint import save_model
    from asc_jax.data.tau import CLASSES
    from asc_jax.experiments import prepare
    from asc_jax.experiments.runner import Grid
    from asc_jax.models import build_model

    teachers = Table("T3", "teachers", rows=(
        Row("small", "small CNN", "configs/rep_mobile_tau.py"),
        Row("gone", "unregistered", "configs/rep_mobile_tau.py:model=no_such_model")))
    monkeypatch.setitem(TABLES._items, "T3", teachers)
    grid = Grid(str(smoke_data), tmp_path, seeds=(0,), smoke=True)
    kd = dataclasses.replace(TABLES.get("IV"), teachers="T3")

    (message,) = prepare.teacher_stores(kd, grid)
    assert "1 unfinished run(s)" in message  # the registered teacher has not run yet
    assert not (tmp_path / "IV" / "stores").exists()

    teacher_run = grid.plan(teachers)[0]
    options = {"base_channels": 8, "n_blocks": (1, 1, 1), "strides": (("b2", (2, 2)),)}
    save_model(teacher_run.workdir / "model", build_model("rep_mobile", rngs=nnx.Rngs(0), **options),
               name="rep_mobile", options=options, mel=dataclasses.asdict(MelConfig()),
               class_names=list(CLASSES))
    (teacher_run.workdir / "summary.json").write_text(json.dumps({"finished": True}))

    assert prepare.teacher_stores(kd, grid, dry_run=True) == [
        f"split 100: would build {tmp_path / 'IV' / 'stores' / 'split100'} from 1 teacher(s)"]
    (message,) = prepare.teacher_stores(kd, grid)
    assert message.endswith("from rep_mobile-small.s0"), message
    states = {run.row.key: check(run)[0] for run in grid.plan(kd)}
    assert {k: o.state for k, o in states.items()} == {
        "none": "planned", "cnn": "planned", "transformer": "skipped", "all": "planned"}
    assert "'transformer' matches none of ['rep_mobile-small.s0']" in states["transformer"].reason
    config = load_run_config(grid.plan(kd)[1])
    assert config.kd.store == str(tmp_path / "IV" / "stores" / "split100") and config.kd.teachers == "cnn"
    assert prepare.teacher_stores(kd, grid)[0].endswith("exists")


def test_a_full_size_store_gets_the_tables_views_for_its_split(tmp_path, monkeypatch):
    """Outside smoke mode the store of a split is precomputed with that split's view count
    (Table.store_views[split]); the precompute itself is stubbed (no data, no teachers run)."""
    import types

    from asc_jax import distill
    from asc_jax.experiments import prepare
    from asc_jax.experiments.runner import Grid

    teachers = Table("T3", "teachers", rows=(Row("small", "small CNN", "configs/rep_mobile_tau.py"),))
    monkeypatch.setitem(TABLES._items, "T3", teachers)
    grid = Grid("D", tmp_path, seeds=(0,), splits=("25", "100"))
    kd = dataclasses.replace(TABLES.get("IV"), teachers="T3", store_views={"25": 3, "100": 7})
    for run in grid.plan(teachers):
        run.workdir.mkdir(parents=True)
        (run.workdir / "summary.json").write_text(json.dumps({"finished": True}))
    calls = {}

    def precompute(out, *, n_views, **kwargs):
        calls[out.name] = n_views
        return types.SimpleNamespace(teacher_names=["t"])

    monkeypatch.setattr(distill, "precompute", precompute)
    assert all(m.endswith("from t") for m in prepare.teacher_stores(kd, grid)), calls
    assert calls == {"split25": 3, "split100": 7}


# ----------------------------------------------------------------------------------------------
# The demo grid
# ----------------------------------------------------------------------------------------------
def _optimizer_steps(config, split):
    """Optimizer steps `config` takes on the embedded set: every phase's epochs (a pruning run's
    dense phase, unless it starts from a trained model, and each round's finetuning) times the
    steps per epoch of `split`."""
    from asc_jax.experiments.tables import DEMO_TRAIN_CLIPS
    epochs = config.optim.epochs
    if config.prune is not None:
        epochs = (0 if config.model.init_from else epochs) + config.prune.rounds * config.prune.finetune_epochs
    return epochs * (DEMO_TRAIN_CLIPS[split] // config.optim.batch_size)


def _width(config):
    from asc_jax.models.rep_mobile import RepMobileConfig
    return config.model.options.get("base_channels", RepMobileConfig().base_channels)


def test_demo_grid_plans_teachers_then_students_and_pruning_at_split_100(tmp_path):
    from asc_jax.experiments.cli import resolve_tables
    from asc_jax.experiments.runner import Grid
    from asc_jax.experiments.tables import DEMO_SPLITS
    teachers, demo = resolve_tables("demo")
    assert (teachers.name, demo.name) == ("demo-teachers", "demo") and demo.teachers == "demo-teachers"
    assert [t.name for t in resolve_tables("all")] == ["I", "II", "III", "IV", "V"]
    assert DEMO_SPLITS == ("5", "25", "100")
    grid = Grid(str(tmp_path / "tau"), tmp_path / "runs")  # the CLI's defaults: seeds 0, 1, 2
    teacher_runs, runs = grid.plan(teachers), grid.plan(demo)
    # Two wide teachers per split, one seed each (an ensemble of two per split).
    assert sorted((r.row.key, r.split, r.seed) for r in teacher_runs) == sorted(
        (key, split, 100) for key in ("cp_mobile_w64", "rep_mobile_w64") for split in DEMO_SPLITS)
    cells = collections.Counter((r.row.key, r.split) for r in runs)
    students = ("rep_mobile", "cp_mobile", "rep_mobile_kd")
    pruning = ("direct32", "direct64", "single64to32", "progressive64")
    assert cells == {**{(k, s): 3 for k in students for s in DEMO_SPLITS}, **{(k, "100"): 3 for k in pruning}}
    assert {r.seed for r in runs} == {0, 1, 2} and len(runs) == 39
    assert len({r.workdir for r in runs + teacher_runs}) == 45
    configs = {(r.row.key, r.split, r.seed): load_run_config(r) for r in runs}
    assert {c.model.name for (k, _, _), c in configs.items() if k != "cp_mobile"} == {"rep_mobile"}
    assert {c.model.name for (k, _, _), c in configs.items() if k == "cp_mobile"} == {"cp_mobile"}
    for (key, split, seed), config in configs.items():
        assert (config.data.train_split, config.seed, config.data.root) == (split, seed, str(tmp_path / "tau"))
        assert (config.kd.store != "") == (key == "rep_mobile_kd")
        assert (config.prune is not None) == (key in ("single64to32", "progressive64"))
        if key == "rep_mobile_kd":  # one store per split, under the demo table's directory
            assert config.kd.store == str(tmp_path / "runs" / "demo" / "stores" / f"split{split}")
            assert config.kd.teachers == "all"
    # Pruning: 64 -> 32 in one round, 64 -> 48 -> 32 in two, both from the dense width-64 model
    # the direct64 run of the same seed trains (listed first: rows run in order); direct at 32.
    from asc_jax.train.progressive import plan_phases
    assert (_width(configs[("direct32", "100", 0)]), _width(configs[("direct64", "100", 0)])) == (32, 64)
    assert [p.width for p in plan_phases(configs[("single64to32", "100", 0)])] == [64, 32]
    assert [p.width for p in plan_phases(configs[("progressive64", "100", 0)])] == [64, 48, 32]
    keys = [r.row.key for r in runs]
    assert keys.index("direct64") < keys.index("single64to32") < keys.index("progressive64")
    for seed in (0, 1, 2):
        dense = next(r for r in runs if (r.row.key, r.seed) == ("direct64", seed))
        for key in ("single64to32", "progressive64"):
            config = configs[(key, "100", seed)]
            assert config.model.init_from == str(dense.workdir / "model")
            assert config.model.options == configs[("direct64", "100", seed)].model.options


def test_demo_budgets_give_every_split_the_same_optimizer_steps(tmp_path):
    from asc_jax.experiments.runner import Grid
    from asc_jax.experiments.tables import (DEMO_SPLITS, DEMO_STEPS, DEMO_TEACHER_STEPS, DEMO_TRAIN_CLIPS,
                                            DEMO_WARMUP_STEPS)
    grid = Grid("D", tmp_path)
    runs = grid.plan(TABLES.get("demo-teachers")) + grid.plan(TABLES.get("demo"))
    steps, widths = collections.defaultdict(set), collections.defaultdict(set)
    for run in runs:
        config = load_run_config(run)
        per_epoch = DEMO_TRAIN_CLIPS[run.split] // config.optim.batch_size
        key = (run.table, run.row.key)
        steps[key].add((run.split, _optimizer_steps(config, run.split)))
        widths[key].add(_width(config))
        if config.prune is None:
            # Warmup: the same number of steps everywhere, up to rounding to whole epochs.
            assert abs(config.optim.warmup_epochs * per_epoch - DEMO_WARMUP_STEPS) <= per_epoch / 2
            # Evaluated at the end only, except the direct-training row (configs/demo.py's cadence).
            if run.row.key != "direct32":
                assert config.eval_every_epochs == config.optim.epochs
    for key in (("demo", "rep_mobile"), ("demo", "cp_mobile"), ("demo", "rep_mobile_kd")):
        by_split = dict(steps[key])
        assert set(by_split) == set(DEMO_SPLITS) and widths[key] == {32}
        # 276 steps of 64 clips at split 100 (6 x 46), 275 at split 25 (25 x 11), 276 at split 5 (138 x 2).
        for split, n in by_split.items():
            assert abs(n - DEMO_STEPS) <= DEMO_TRAIN_CLIPS[split] // 64 / 2
    for key in (("demo-teachers", "cp_mobile_w64"), ("demo-teachers", "rep_mobile_w64")):
        by_split = dict(steps[key])
        assert widths[key] == {64} and DEMO_TEACHER_STEPS > DEMO_STEPS
        for split, n in by_split.items():
            assert abs(n - DEMO_TEACHER_STEPS) <= DEMO_TRAIN_CLIPS[split] // 64 / 2
        assert min(by_split.values()) > max(n for _, n in steps[("demo", "rep_mobile")])
    # Pruning rows: direct training at 32 takes as many steps as the wide model's training
    # (direct64) plus the finetuning of a pruned run.
    pruned = {k: dict(steps[("demo", k)]) for k in ("direct32", "direct64", "single64to32", "progressive64")}
    assert all(set(v) == {"100"} for v in pruned.values())
    direct, dense, single, progressive = (pruned[k]["100"] for k in pruned)
    assert direct == dense + single == dense + progressive and min(dense, single) > 0
    assert widths[("demo", "single64to32")] == widths[("demo", "progressive64")] == {64}
    # The KD stores hold one view per epoch of the students at that split.
    assert TABLES.get("demo").store_views == {"5": 138, "25": 25, "100": 6}


def test_equal_steps_budgets_by_hand():
    from asc_jax.experiments.tables import equal_steps
    # Steps per epoch at batch 64: 150 // 64 = 2, 750 // 64 = 11, 3000 // 64 = 46; warmup 46 steps.
    assert equal_steps(92) == {
        "5": ("optim.epochs=46", "optim.warmup_epochs=23", "eval_every_epochs=46"),
        "25": ("optim.epochs=8", "optim.warmup_epochs=4", "eval_every_epochs=8"),
        "100": ("optim.epochs=2", "optim.warmup_epochs=1", "eval_every_epochs=2")}
    assert equal_steps(276, ("25",)) == {"25": ("optim.epochs=25", "optim.warmup_epochs=4", "eval_every_epochs=25")}
    assert equal_steps(10, ("100",))["100"][0] == "optim.epochs=1"  # never zero epochs


def test_demo_budgets_count_the_clips_the_generator_writes():
    """The budgets assume the split sizes and batch of configs/demo.py's dataset; the generator
    decides them (whole 5-clip recordings per split), so check them against its plan."""
    from asc_jax.config import load_config
    from asc_jax.experiments.tables import DEMO_BATCH, DEMO_TRAIN_CLIPS
    config = load_config("configs/demo.py")
    cfg = synthetic.SyntheticConfig(**config.data.synthetic)
    _, splits = synthetic.plan(cfg)
    assert {str(p): len(recs) * cfg.clips_per_recording for p, recs in splits.items()} == DEMO_TRAIN_CLIPS
    assert config.optim.batch_size == DEMO_BATCH


def _demo_results(tmp_path, accuracy):
    """Fake finished summaries for every run of the demo table (accuracy(row, split, seed)), and
    the table's results as collected from them."""
    table = TABLES.get("demo")
    runs = plan(table, data="D", workdir=tmp_path, seeds=(0, 1, 2))
    for run in runs:
        _fake_summary(run.workdir, accuracy(run.row.key, run.split, run.seed), params=124_862, macs=28_893_268)
    return table, runs, collect(table, runs)


def test_demo_table_and_plot_of_fake_results(tmp_path):
    from asc_jax.experiments.plot import series
    rank = {k: i for i, k in enumerate(r.key for r in TABLES.get("demo").rows)}
    # Row i at split s, seed k: 0.30 + 0.02 i + 0.001 s + 0.01 k -> mean at seed 1, std 0.01.
    table, runs, results = _demo_results(
        tmp_path, lambda key, split, seed: 0.30 + 0.02 * rank[key] + 0.001 * int(split) + 0.01 * seed)
    written = results.write(tmp_path / "out")
    assert [p.name for p in written] == ["results.md", "results.csv", "accuracy_vs_split.png"]

    md = (tmp_path / "out" / "results.md").read_text().splitlines()
    header = md.index("| System | Params | MACs | 5% | 25% | 100% |")
    body = md[header + 2: header + 2 + len(table.rows)]
    assert body[0] == "| Rep-Mobile | 124.9K | 28.89M | 31.50 ± 1.00 | 33.50 ± 1.00 | 41.00 ± 1.00 |"
    assert body[2] == ("| Rep-Mobile + KD (CP-Mobile and Rep-Mobile teachers) | 124.9K | 28.89M | "
                       "35.50 ± 1.00 | 37.50 ± 1.00 | 45.00 ± 1.00 |")
    # Pruning rows run at split 100 only: no cells elsewhere, and no "(n=...)" warnings.
    assert body[6] == "| progressively pruned 64 -> 48 -> 32 | 124.9K | 28.89M | – | – | 53.00 ± 1.00 |"
    assert "![eval macro accuracy vs training split](accuracy_vs_split.png)" in md
    rows = {r["key"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert rows["direct32"]["split5_n"] == "0" and rows["direct32"]["split100_n"] == "3"
    assert float(rows["cp_mobile"]["split25_mean"]) == pytest.approx(0.30 + 0.02 + 0.025 + 0.01)

    # What the plot draws: every system's mean and std (%) at the splits it has.
    lines = {label: (xs, means, stds) for label, xs, means, stds in series(results)}
    assert list(lines) == [r.label for r in table.rows]
    xs, means, stds = lines["Rep-Mobile"]
    assert xs == [5.0, 25.0, 100.0]
    assert means == pytest.approx([31.5, 33.5, 41.0]) and stds == pytest.approx([1.0, 1.0, 1.0])
    assert lines["pruned 64 -> 32"][:2] == ([100.0], [pytest.approx(51.0)])

    from matplotlib.image import imread
    image = imread(tmp_path / "out" / "accuracy_vs_split.png")
    assert image.shape[:2] == (528, 1100)  # 10 x 4.8 in at 110 dpi
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50  # lines, not a blank canvas


def test_plot_handles_missing_seeds_and_tables_over_one_split(tmp_path):
    from asc_jax.experiments.plot import series
    # One seed at split 5 (no error bar there), none at all for CP-Mobile.
    table, runs, _ = _demo_results(tmp_path, lambda key, split, seed: 0.5 + 0.1 * seed)
    keep = [r for r in runs if r.row.key != "cp_mobile" and not (r.split == "5" and r.seed > 0)]
    results = collect(table, keep)
    lines = {label: (xs, means, stds) for label, xs, means, stds in series(results)}
    assert "CP-Mobile (no extra branches)" not in lines
    xs, means, stds = lines["Rep-Mobile"]
    assert xs == [5.0, 25.0, 100.0] and means == pytest.approx([50.0, 60.0, 60.0])
    assert math.isnan(stds[0]) and stds[1:] == pytest.approx([10.0, 10.0])
    assert (tmp_path / "o" / "accuracy_vs_split.png") in results.write(tmp_path / "o")
    # A table over one split gets its table only.
    single = collect(table, [r for r in runs if r.split == "100"])
    assert [p.name for p in single.write(tmp_path / "one")] == ["results.md", "results.csv"]
    assert not (tmp_path / "one" / "accuracy_vs_split.png").exists()


def test_demo_grid_smoke_through_the_cli(smoke_data, tmp_path, monkeypatch, capsys):
    """`python -m asc_jax.experiments demo --smoke`: the teachers run first, their (tiny, real)
    saved models give the demo table its KD store, built for real, then every student and pruning
    run gets its planned smoke config; results.md, results.csv and the plot follow. Training
    itself is faked (train.py's loop is tested end to end in test_train.py, test_prune_e2e.py
    and test_kd_e2e.py)."""
    from flax import nnx

    import asc_jax.train
    from asc_jax.audio.features import MelConfig
    from asc_jax.checkpoint import save_model
    from asc_jax.data.tau import CLASSES
    from asc_jax.distill import read_store
    from asc_jax.train import progressive

    calls = []
    tiny = {"base_channels": 8, "n_blocks": (1, 1, 1), "strides": (("b2", (2, 2)),)}

    def fake_run(config, workdir):
        calls.append((workdir, config))
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
        # Models that later steps load: the teachers' (the store precompute runs them for real)
        # and the dense width-64 ones (the pruned rows' init_from must exist to be planned).
        if workdir.parts[-4] == "demo-teachers" or workdir.parts[-3] == "direct64":
            save_model(workdir / "model", build_model(config.model.name, rngs=nnx.Rngs(0), **tiny),
                       name=config.model.name, options=tiny, mel=dataclasses.asdict(MelConfig()),
                       class_names=list(CLASSES))
        summary = {"finished": True, "eval": {"macro_accuracy": 0.25 + 0.01 * len(calls)},
                   "complexity": {"deploy_form": {"params": 1000, "macs": 2_000_000}}}
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary

    from asc_jax.models import build_model
    monkeypatch.setattr(asc_jax.train, "train_and_evaluate", fake_run)
    monkeypatch.setattr(progressive, "train_and_prune", fake_run)
    root = tmp_path / "runs"
    assert main(["demo", "--data", str(smoke_data), "--workdir", str(root), "--smoke"]) == 0

    # Smoke mode: split 100 only, one seed; the teachers first.
    keys = [(w.parts[-4], w.parts[-3], w.parts[-2], w.parts[-1]) for w, _ in calls]
    assert keys == [("demo-teachers", "cp_mobile_w64", "split100", "seed100"),
                    ("demo-teachers", "rep_mobile_w64", "split100", "seed100")] + [
        ("demo", k, "split100", "seed0") for k in
        ("rep_mobile", "cp_mobile", "rep_mobile_kd", "direct32", "direct64", "single64to32",
         "progressive64")]
    configs = {k[1]: c for k, (_, c) in zip(keys, calls)}
    assert all(c.optim.epochs == 1 and c.optim.batch_size == 32 for c in configs.values())
    # Tiny models where the widths are free, the pruning widths where they are not.
    assert configs["rep_mobile_w64"].model.options["base_channels"] == 8
    assert configs["rep_mobile"].model.options["base_channels"] == 8
    assert configs["single64to32"].model.options == configs["direct64"].model.options == {"base_channels": 64}
    assert configs["progressive64"].model.init_from == str(root / "demo" / "direct64" / "split100" / "seed0" / "model")
    assert configs["progressive64"].prune.rounds == 2 and configs["progressive64"].prune.finetune_epochs == 1
    # The KD student trained on a store of both teachers, built from its own config.
    store = read_store(configs["rep_mobile_kd"].kd.store)
    assert configs["rep_mobile_kd"].kd.store == str(root / "demo" / "stores" / "split100")
    assert sorted(store.teacher_names) == ["cp_mobile-cp_mobile_w64.s100", "rep_mobile-rep_mobile_w64.s100"]
    out = capsys.readouterr().out
    assert "Table demo-teachers: 2 trained" in out and "Table demo: 7 trained" in out
    assert "split 100: built" in out
    md = (root / "demo" / "results.md").read_text()
    assert "| Rep-Mobile + KD (CP-Mobile and Rep-Mobile teachers) | 1.0K | 2.00M | 30.00 |" in md
    # Smoke grids have one split: a table, no plot.
    assert not (root / "demo" / "accuracy_vs_split.png").exists()
