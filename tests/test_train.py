"""End-to-end training: it learns, resumes exactly, and fails loudly on bad input."""
import dataclasses
import json

import numpy as np
import pytest

from asc_jax.checkpoint import load_model
from asc_jax.config import (Config, DataConfig, ModelConfig, OptimConfig, load_config, override,
                            parse_variant)
from asc_jax.data import synthetic
from asc_jax.surgery import flatten, module_tree
from asc_jax.train import train_and_evaluate
from asc_jax.train.loop import _check_finite

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


@pytest.mark.slow
def test_tiny_run_learns_and_writes_everything(tiny_data, tmp_path):
    summary = train_and_evaluate(_config(tiny_data), tmp_path)
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
def test_resume_reproduces_the_uninterrupted_run(tiny_data, tmp_path):
    config = dataclasses.replace(_config(tiny_data, epochs=2), eval_every_epochs=1)
    straight = train_and_evaluate(config, tmp_path / "straight")
    # Interrupted mid-epoch (step 25 of 36), then the same command again.
    partial = train_and_evaluate(dataclasses.replace(config, max_steps=25), tmp_path / "resumed")
    assert partial == {"step": 25, "total_steps": 36, "finished": False}
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    assert resumed["step"] == straight["step"] == 36
    a = flatten(module_tree(load_model(tmp_path / "straight" / "deploy")[0]))
    b = flatten(module_tree(load_model(tmp_path / "resumed" / "deploy")[0]))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=str(key))
    assert resumed["eval"]["accuracy"] == straight["eval"]["accuracy"]


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
        _check_finite(history, 10, tmp_path)
    _check_finite(history[:1], 10, tmp_path)


def test_config_variants_and_overrides(tmp_path):
    assert parse_variant("split=25,width=96,name=cp_mobile") == {"split": 25, "width": 96, "name": "cp_mobile"}
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
