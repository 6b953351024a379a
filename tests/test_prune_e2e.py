"""Progressive pruning end to end: phases of train -> prune -> slice -> finetune -> fuse.

The tiny run prunes a small Rep-Mobile (with GRN and two depthwise branches) 24 -> 16 -> 8,
one epoch per phase; the paper's 96 -> 64 -> 32 is checked on random weights through the same
planning and pruning functions (training a width-96 model is too slow for CI).
"""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from asc_jax import complexity
from asc_jax.checkpoint import load_model
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig, load_config
from asc_jax.data import synthetic
from asc_jax.models import build_model
from asc_jax.models.rep_mobile import RepMobileConfig
from asc_jax.prune import PruneConfig
from asc_jax.surgery import flatten, load_into
from asc_jax.train import progressive

SMALL = {"base_channels": 24, "channels_multiplier": 2.0, "expansion_rate": 2.0, "n_blocks": (1, 1),
         "strides": {"b2": (2, 2)}, "branches": ("3x3", "1x3")}
INPUT = (1, 256, 63)


def filled(build, seed=0):
    """`build()` with random weights, without eager flax init (one compile per parameter shape)."""
    rng = np.random.default_rng(seed)
    shapes = flatten(nnx.state(nnx.eval_shape(build)).to_pure_dict())
    tree = {}
    for path, x in shapes.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        values = rng.uniform(0.5, 1.5, x.shape) if path[-1] == "var" else rng.normal(0, 0.3, x.shape)
        node[path[-1]] = values.astype(np.float32)
    return load_into(build, tree)


def counts(name, **options):
    model = filled(lambda: build_model(name, rngs=nnx.Rngs(0), **options))
    return complexity.count_params(model), complexity.count_macs(model, INPUT)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tau"
    # 300 training clips (5 per class and seen device), 450 test clips over all 9 devices.
    return synthetic.ensure_dataset(root, n_train_per_class_device=5, n_test_per_class_device=5)


def _config(root, **prune) -> Config:
    return Config(
        seed=0,
        data=DataConfig(root=str(root), generate=False),
        model=ModelConfig(name="rep_mobile", options=SMALL),
        optim=OptimConfig(lr=0.01, epochs=1, warmup_epochs=0, batch_size=16),
        eval_every_epochs=1,
        log_every_steps=6,
        prune=PruneConfig(**{"target": {"base_channels": 8}, "rounds": 2, "finetune_epochs": 1, **prune}),
    )


@pytest.mark.slow
def test_progressive_prune_finetune_fuse(tiny_data, tmp_path, monkeypatch, capsys):
    config = _config(tiny_data)
    summary = progressive.train_and_prune(config, tmp_path)
    assert summary["finished"]
    rows = summary["phases"]
    assert [r["name"] for r in rows] == ["phase0_dense", "phase1_w16", "phase2_w8"]

    # Linear 24 -> 16 -> 8 lands every group on the widths of the base-16 and base-8 models:
    # each phase has exactly their params and MACs, both forms.
    for row, base in zip(rows, (24, 16, 8)):
        options = {**SMALL, "base_channels": base}
        for form, deploy in (("train_form", False), ("deploy_form", True)):
            params, macs = counts("rep_mobile", deploy=deploy, **options)
            assert row["complexity"][form] == {"params": params, "macs": macs}, (row["name"], form)
    for form in ("train_form", "deploy_form"):
        for key in ("params", "macs"):
            a, b, c = (r["complexity"][form][key] for r in rows)
            assert a > b > c, (form, key)

    # Each finetuning phase started from the slice of its predecessor, saved with its widths.
    for r, stage_channels in ((1, (16, 16, 32)), (2, (8, 8, 16))):
        spec = json.loads((tmp_path / rows[r]["name"] / "init" / "model.json").read_text())
        assert tuple(spec["model"]["options"]["stage_channels"]) == stage_channels
        assert spec["pruned_from"].endswith(f"{rows[r - 1]['name']}/model")

    # Accuracy reported for every phase (a real number; one epoch is too short to demand more).
    for row in rows:
        assert 0.0 <= row["macro_accuracy"] <= 1.0
        assert row["deploy_macro_accuracy"] == pytest.approx(row["macro_accuracy"], abs=0.01)
    out = capsys.readouterr().out
    assert all(r["name"] in out for r in rows) and "macro acc" in out
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    # The result is the last phase's fused model, and it computes what the finetuned model does.
    assert summary["result"] == str(tmp_path / "deploy")
    deploy, spec = load_model(tmp_path / "deploy")
    trained, _ = load_model(tmp_path / "phase2_w8" / "model")
    assert spec["model"]["deploy"] and spec["model"]["options"]["stage_channels"] == [8, 8, 16]
    assert complexity.count_params(deploy) == rows[-1]["complexity"]["deploy_form"]["params"]
    x = jax.random.normal(jax.random.key(0), (2, 256, 63)) * 3.0
    ref = np.asarray(jax.jit(lambda x: trained(x)[0])(x))
    out = np.asarray(jax.jit(lambda x: deploy(x)[0])(x))
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)

    # Rerunning the same call trains nothing: every phase is finished.
    def fail(*args, **kwargs):
        raise AssertionError("a finished phase was run again")

    monkeypatch.setattr(progressive, "train_and_evaluate", fail)
    assert progressive.train_and_prune(config, tmp_path) == summary
    # A changed config is refused rather than silently reusing the finished phases.
    with pytest.raises(ValueError, match="different config"):
        progressive.train_and_prune(_config(tiny_data, method="bn_scale"), tmp_path)


def test_paper_96_to_32_has_the_base_32_complexity():
    """Table V: width 96 pruned to the base-32 widths (progressively, 96 -> 64 -> 32, and in one
    step) gives exactly the base-32 model: 126,952 params / 28,893,268 MACs in the branch-free
    BN form DCASE counts (cp_mobile), 124,862 params fused."""
    config = load_config("configs/prune_tau.py:split=25,variant=progressive96")
    phases = progressive.plan_phases(config)
    assert [(p.name, p.epochs) for p in phases] == [("phase0_dense", 150), ("phase1_w64", 75), ("phase2_w32", 75)]
    single = progressive.plan_phases(load_config("configs/prune_tau.py:split=25,variant=single96to32"))
    assert [p.name for p in single] == ["phase0_dense", "phase1_w32"] and single[1].widths == phases[2].widths

    model = filled(lambda: config.model.build(nnx.Rngs(0)), seed=1)
    options = dict(config.model.options)
    widths = []
    for phase in phases[1:]:
        model, options = progressive.prune_round(model, config.model.name, options, phase.widths)
        widths.append(model.config.widths())
    assert widths[0] == (16, (64, 64, 152, 336), (192, 192, 192, 192, 448, 448))
    assert widths[1] == RepMobileConfig().widths()
    branch_free = {k: v for k, v in options.items() if k != "branches"}
    assert counts("cp_mobile", **branch_free) == (126_952, 28_893_268)
    assert counts("rep_mobile", deploy=True, **options)[0] == 124_862


def test_phase_planning_rules(tmp_path):
    config = _config(tmp_path)
    phases = progressive.plan_phases(config)
    assert [(p.name, p.width, p.epochs) for p in phases] == [
        ("phase0_dense", 24, 1), ("phase1_w16", 16, 1), ("phase2_w8", 8, 1)]
    # A trained wide model given as init_from is not trained again, only evaluated.
    with_init = dataclasses.replace(config, model=dataclasses.replace(config.model, init_from="runs/wide/model"))
    assert progressive.plan_phases(with_init)[0].epochs == 0
    finetune = progressive.phase_config(config, phases[1], {"base_channels": 16}, tmp_path / "init")
    assert finetune.prune is None and finetune.model.init_from == str(tmp_path / "init")
    assert finetune.optim.epochs == 1 and finetune.kd == config.kd and finetune.data == config.data
    # The dense phase trains on config.optim; a round on its own recipe (tests/test_prune_schedule.py).
    recipe = dataclasses.replace(config, optim=dataclasses.replace(config.optim, warmup_epochs=5))
    assert progressive.phase_config(recipe, phases[0]).optim == recipe.optim
    long = dataclasses.replace(phases[1], epochs=75)
    assert progressive.phase_config(recipe, long, {}, "init").optim == dataclasses.replace(
        recipe.optim, epochs=75, lr=config.prune.finetune_lr, warmup_epochs=0)
    # Explicit widths in the options override the target's base_channels: nothing would be pruned.
    fixed = dataclasses.replace(config, model=ModelConfig(options={**SMALL, "stage_channels": (24, 24, 48)}))
    with pytest.raises(ValueError, match="nothing to prune"):
        progressive.plan_phases(fixed)
    with pytest.raises(ValueError, match="nothing to prune"):
        progressive.train_and_prune(fixed, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="config.prune is not set"):
        progressive.plan_phases(dataclasses.replace(config, prune=None))


def test_an_unfinished_phase_stops_the_run(tmp_path, monkeypatch):
    """A phase cut short (max_steps) ends the call; the same call again continues that phase
    (train_and_evaluate resumes its own workdir) and only then starts the next."""
    calls = []

    def interrupted(config, workdir):
        calls.append((workdir.name, config.max_steps))
        return {"step": 4, "total_steps": 18, "finished": False}

    monkeypatch.setattr(progressive, "train_and_evaluate", interrupted)
    config = dataclasses.replace(_config(tmp_path), max_steps=4)
    result = progressive.train_and_prune(config, tmp_path)
    assert result == {"finished": False, "phase": "phase0_dense", "step": 4, "total_steps": 18}
    assert calls == [("phase0_dense", 4)] and not (tmp_path / "summary.json").exists()
    # max_steps may differ between an interrupted run and its continuation.
    progressive.train_and_prune(dataclasses.replace(config, max_steps=0), tmp_path)
    assert calls[-1] == ("phase0_dense", 0)
