"""End-to-end training: it learns, resumes exactly, and fails loudly on bad input."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from asc_jax.checkpoint import load_model
from asc_jax.config import (Config, DataConfig, ModelConfig, OptimConfig, load_config, override,
                            parse_variant)
from asc_jax.data import synthetic
from asc_jax.surgery import flatten, module_tree
from asc_jax.train import train_and_evaluate
from asc_jax.train.logging import MetricWriter
from asc_jax.train.loop import _check_finite

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SMALL_MODEL = {"base_channels": 16, "channels_multiplier": 2.0, "expansion_rate": 2.0}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tau"
    # 600 training clips (10 per class and seen device), 450 test clips over all 9 devices.
    synthetic.ensure_dataset(root, n_train_per_class_device=10, n_test_per_class_device=5)
    return root


def _config(root, **optim) -> Config:
    return Config(
        seed=1,
        data=DataConfig(root=str(root), generate=False),
        model=ModelConfig(name="rep_mobile", options=SMALL_MODEL),
        optim=OptimConfig(**{"lr": 0.01, "epochs": 6, "warmup_epochs": 1, "batch_size": 32, **optim}),
        eval_every_epochs=3,
        log_every_steps=5,
    )


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    """The float32 reference run of this module: (summary, workdir)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    return train_and_evaluate(_config(tiny_data), workdir), workdir


@pytest.mark.slow
def test_tiny_run_learns_and_writes_everything(tiny_run):
    summary, tmp_path = tiny_run
    assert summary["finished"] and summary["step"] == 6 * (600 // 32)
    # Chance is 0.10 on 10 balanced classes; measured ~0.5 on this budget.
    assert summary["eval"]["macro_accuracy"] > 0.3, summary["eval"]["macro_accuracy"]
    # The fused deploy model is the trained model: same decisions.
    assert summary["deploy_eval"]["accuracy"] == pytest.approx(summary["eval"]["accuracy"])
    assert summary["deploy_max_logit_diff"] < 1e-3
    for name in ("config.json", "metrics.jsonl", "metrics_train.csv", "metrics_eval.csv",
                 "eval/final.json", "eval/final_confusion.png", "eval/final_devices.png",
                 "deploy/model.json", "complexity.json", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert {"grad_norm", "param_norm", "update_norm", "lr", "accuracy"} <= set(train_rows[0])
    deploy, spec = load_model(tmp_path / "deploy")
    assert spec["class_names"][0] == "airport" and spec["model"]["deploy"]
    assert not any("bn" in map(str, p) for p in flatten(module_tree(deploy)))


@pytest.mark.slow
def test_bfloat16_compute_trains_as_well_as_float32(tiny_data, tiny_run, tmp_path):
    """optim.compute_dtype="bfloat16" on the embedded (easy) set: the same run as the float32
    reference reaches its accuracy (measured: 0.633 vs 0.664); evaluation and the saved models
    are float32."""
    summary = train_and_evaluate(_config(tiny_data, compute_dtype="bfloat16"), tmp_path)
    got, ref = summary["eval"]["macro_accuracy"], tiny_run[0]["eval"]["macro_accuracy"]
    assert got > 0.3 and abs(got - ref) < 0.1, (got, ref)
    assert summary["deploy_max_logit_diff"] < 1e-3
    deploy, _ = load_model(tmp_path / "deploy")
    assert {x.dtype for x in jax.tree.leaves(nnx.state(deploy))} == {np.dtype(np.float32)}


@pytest.mark.slow
def test_on_device_split_with_scanned_steps_learns_and_resumes_exactly(tiny_data, tmp_path):
    """data.on_device with 4 steps per dispatch (18 steps an epoch: dispatches of 4, 4, 4, 4, 2):
    it learns, and a run stopped at step 21 (off the dispatch grid) and resumed ends with the
    uninterrupted run's weights and evaluation."""
    base = _config(tiny_data, epochs=3, steps_per_dispatch=4)
    config = dataclasses.replace(base, data=dataclasses.replace(base.data, on_device=True))
    straight = train_and_evaluate(config, tmp_path / "straight")
    assert straight["finished"] and straight["step"] == 3 * (600 // 32)
    # Chance 0.10; a third of the reference's budget (measured 0.424).
    assert straight["eval"]["macro_accuracy"] > 0.2, straight["eval"]["macro_accuracy"]
    stopped = train_and_evaluate(dataclasses.replace(config, max_steps=21), tmp_path / "resumed")
    assert not stopped["finished"] and stopped["step"] == 21
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    assert resumed["eval"]["accuracy"] == straight["eval"]["accuracy"]
    (a, _), (b, _) = (load_model(tmp_path / run / "model") for run in ("straight", "resumed"))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(a), nnx.state(b))
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    logged = [r["step"] for r in rows if r["split"] == "train"]
    assert logged == sorted(set(logged)) and logged[-1] == 54  # each logging step once, in order


def test_resume_with_a_different_config_is_refused(tiny_data, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"seed": 99}))
    with pytest.raises(ValueError, match="different config"):
        train_and_evaluate(_config(tiny_data), tmp_path)


def test_missing_dataset_is_a_clear_error(tmp_path):
    config = dataclasses.replace(_config(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="meta.csv"):
        train_and_evaluate(config, tmp_path / "run")


def test_non_finite_loss_names_the_step(tmp_path):
    history = [{"loss": np.float32(2.3)}, {"loss": np.float32(np.nan)}]
    with pytest.raises(FloatingPointError, match="at step 12"):
        _check_finite(history, 10, lambda: str(tmp_path))
    _check_finite(history[:1], 10, lambda: str(tmp_path))


def test_config_variants_and_overrides(tmp_path):
    defaults = {"split": "100", "width": 32, "name": "rep_mobile", "extra": None}
    assert parse_variant("split=25,width=96,name=cp_mobile", defaults) == {
        "split": "25", "width": 96, "name": "cp_mobile", "extra": None}
    assert parse_variant(None, defaults) == defaults
    config = load_config("configs/demo.py:epochs=3,split=25")
    assert config.optim.epochs == 3 and config.data.train_split == "25"
    config = override(config, "optim.lr=1")  # int literal accepted for a float field
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    config = override(config, "model.options.base_channels=96")
    assert config.model.options == {"base_channels": 96}
    config = override(config, "augment.mixstyle=None")
    assert config.augment.mixstyle is None
    with pytest.raises(KeyError, match="no field 'lrr'"):
        override(config, "optim.lrr=0.1")
    with pytest.raises(TypeError, match="expected"):
        override(config, "optim.epochs=ten")
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.py"))


@pytest.mark.parametrize("config_file", sorted(p.name for p in CONFIGS.glob("*.py")))
def test_every_config_file_rejects_unknown_variant_keys(config_file):
    """`epoch=1` (for epochs) was silently ignored by demo.py."""
    load_config(f"{CONFIGS / config_file}")  # the defaults are valid
    with pytest.raises(ValueError, match=r"unknown variant 'epoch'; known: .*epochs"):
        load_config(f"{CONFIGS / config_file}:epoch=1")
    with pytest.raises(TypeError, match="variant 'epochs': expected int"):
        load_config(f"{CONFIGS / config_file}:epochs=abc")


def test_overrides_are_type_checked():
    config = load_config(f"{CONFIGS / 'demo.py'}")
    with pytest.raises(TypeError, match="'optim.batch_size': expected int, got True"):
        override(config, "optim.batch_size=True")  # a bool is not an int (it was batch 1)
    with pytest.raises(TypeError, match="expected float"):
        override(config, "optim.lr=True")
    with pytest.raises(TypeError, match="expected bool"):
        override(config, "data.generate=1")
    assert override(config, "augment.freq_mask.mask_param=24").augment.freq_mask.mask_param == 24
    assert override(config, "data.train_split=25").data.train_split == "25"


def test_overrides_enable_a_disabled_section_with_its_defaults():
    config = load_config(f"{CONFIGS / 'demo.py'}")
    assert config.augment.dir is None and config.augment.time_mask is None
    dir_cfg = override(config, "augment.dir.folder=/irs").augment.dir
    assert (dir_cfg.folder, dir_cfg.p, dir_cfg.devices) == ("/irs", 0.6, ("a",))
    assert override(config, "augment.time_mask.mask_param=5").augment.time_mask.n_frames == 100
    assert override(override(config, "augment.dir.folder=/irs"), "augment.dir=None").augment.dir is None


def test_a_failed_start_leaves_no_config_behind(tiny_data, tmp_path):
    """A typo'd model name must not make the workdir refuse the corrected command."""
    typo = dataclasses.replace(_config(tiny_data), model=ModelConfig(name="rep_mobil", options=SMALL_MODEL))
    with pytest.raises(KeyError, match="unknown model 'rep_mobil'"):
        train_and_evaluate(typo, tmp_path)
    assert not (tmp_path / "config.json").exists()
    fixed = dataclasses.replace(_config(tiny_data), max_steps=1)
    assert train_and_evaluate(fixed, tmp_path)["step"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "rep_mobile"


def test_metric_writer_keeps_each_step_once_across_resumes(tmp_path):
    """An interrupted run logged steps past its last checkpoint; the resumed run logs them again.
    Reopening the writer at the checkpoint's step drops the later rows (and a torn last line)."""
    writer = MetricWriter(tmp_path)
    for step in (5, 10, 15, 20):
        writer.write("train", step, {"loss": float(step)})
    writer.write("eval", 10, {"accuracy": 0.5})
    writer.write("eval", 20, {"accuracy": 0.6})
    writer.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"split": "train", "step": 2')  # killed mid-write
    for start, steps in ((10, [5, 10]), (0, [])):  # resume at 10, then restart from scratch
        writer = MetricWriter(tmp_path, start_step=start)
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
        assert [r["step"] for r in rows if r["split"] == "train"] == steps
        csv_steps = [int(line.split(",")[0]) for line in (tmp_path / "metrics_train.csv").read_text().splitlines()[1:]]
        assert csv_steps == steps
        for step in (15, 20):
            writer.write("train", step, {"loss": float(step)})
        writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [(r["split"], r["step"]) for r in rows] == [("train", 15), ("train", 20)]
    MetricWriter(tmp_path / "other", enabled=False).write("train", 1, {"loss": 1.0})  # not process 0
    assert not (tmp_path / "other").exists()


def test_the_runs_own_messages_are_visible_after_importing_orbax():
    """orbax's import configures the root logger at WARNING, which made logging.basicConfig a
    no-op: "resumed from step N" never showed."""
    code = ("import orbax.checkpoint, logging; from asc_jax import setup_logging; setup_logging(); "
            "logging.getLogger('asc_jax.train.loop').info('resumed from step 7')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "resumed from step 7" in out.stderr


@pytest.mark.parametrize("name", ["rep_mobile", "cp_mobile", "bc_resnet", "tf_sepnet", "passt"])
def test_model_options_are_type_checked_against_the_model_config(name):
    """`--set model.options.base_channels=abc` failed deep inside the model ("can only
    concatenate str (not "float") to str"); now the option is named before anything is built."""
    from flax import nnx

    from asc_jax.models import build_model

    option = "embed_dim" if name == "passt" else "n_classes"
    with pytest.raises(TypeError, match=rf"{name} option '{option}': expected int, got 'abc'"):
        build_model(name, rngs=nnx.Rngs(0), **{option: "abc"})
    with pytest.raises(TypeError, match=rf"{name} option '{option}': expected int, got True"):
        build_model(name, rngs=nnx.Rngs(0), **{option: True})
    with pytest.raises(TypeError, match=rf"unknown {name} option 'base_channel'; known: "):
        build_model(name, rngs=nnx.Rngs(0), base_channel=8)


def test_entry_points_keep_compiled_programs_on_disk_unless_told_not_to(tmp_path):
    """setup_compilation_cache (train.py, the experiments and device-specific CLIs): the folder
    from $ASC_JAX_XLA_CACHE gets the compiled programs of a run's jitted functions; "off"
    leaves JAX's cache unset. In subprocesses: the test session has its own cache."""
    code = ("import jax, jax.numpy as jnp, sys; from asc_jax import setup_compilation_cache; "
            "folder = setup_compilation_cache(); "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
            "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready(); "
            "print(folder, jax.config.jax_compilation_cache_dir)")
    for value, expect_files in ((str(tmp_path / "xla"), True), ("off", False)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
        out = subprocess.run([sys.executable, "-c", code], env={**env, "ASC_JAX_XLA_CACHE": value},
                             capture_output=True, text=True, check=True).stdout.split()
        if expect_files:
            assert out == [value, value] and any((tmp_path / "xla").iterdir())
        else:
            assert out == ["None", "None"]
