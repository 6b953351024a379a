"""`config.config_diff`, the one comparison of a run's stored config.json with the config asked
for (the loop's resume, the pruning phases and the experiments runner's cache all use it through
`asc_jax.train.check_resumable`)."""
import dataclasses
import json

import pytest

from asc_jax.config import Config, OptimConfig, config_diff, load_config, override, to_dict
from asc_jax.prune import PruneConfig
from asc_jax.train import check_resumable, record_config


def _stored(config: Config) -> dict:
    return json.loads(json.dumps(to_dict(config)))  # as config.json gives it back


def test_a_changed_field_is_named_by_its_dotted_path():
    config = Config()
    assert config_diff(_stored(config), config) == []
    assert config_diff(_stored(config), override(config, "optim.lr=0.5")) == ["optim.lr"]
    assert config_diff(_stored(config), override(config, "augment.freq_mask.mask_param=3")) == [
        "augment.freq_mask.mask_param"]
    changed = override(override(config, "seed=3"), "data.train_split=25")
    assert config_diff(_stored(config), changed) == ["seed", "data.train_split"]  # declaration order


def test_a_new_field_at_its_default_is_tolerated_and_one_set_away_from_it_is_named():
    config = Config()
    stored = _stored(config)
    del stored["optim"]["grad_clip"]  # added to OptimConfig after the run
    del stored["kd"]  # a whole section added after the run
    assert config_diff(stored, config) == []
    assert config_diff(stored, override(config, "optim.grad_clip=1.0")) == ["optim.grad_clip"]
    assert config_diff(stored, override(config, "kd.tau=3.0")) == ["kd.tau"]


def test_a_pruning_run_from_before_the_per_round_schedule_is_not_taken_for_a_new_one():
    """prune.finetune_lr / finetune_warmup_epochs changed what a round computes (it used to end at
    the dense peak lr): a run stored without them is never the same run, whatever their values."""
    config = dataclasses.replace(Config(), prune=PruneConfig(target=32))
    stored = _stored(config)
    assert config_diff(stored, config) == []
    del stored["prune"]["finetune_lr"], stored["prune"]["finetune_warmup_epochs"]
    assert config_diff(stored, config) == ["prune.finetune_lr", "prune.finetune_warmup_epochs"]


def test_a_field_the_code_no_longer_has_is_named():
    stored = _stored(Config())
    stored["optim"]["momentum"] = 0.9
    assert config_diff(stored, Config()) == ["optim.momentum"]


def test_retired_fields_at_the_values_that_mean_what_the_code_does_are_tolerated():
    """Pruning runs recorded before masked finetuning went stored prune.finetune="sliced" and
    prune.start_epoch=0 (the phases refused anything else) and allow_inexact_masking (unread when
    slicing): they computed what the code computes now, so they resume. Other values differ."""
    config = load_config("configs/prune_demo.py")
    stored = _stored(config)
    stored["prune"].update(finetune="sliced", start_epoch=0, allow_inexact_masking=True)
    assert config_diff(stored, config) == []
    masked = {**stored, "prune": {**stored["prune"], "finetune": "masked", "start_epoch": 2}}
    assert config_diff(masked, config) == ["prune.finetune", "prune.start_epoch"]


def test_runs_that_recorded_the_rolls_sample_rate_resume():
    """RollConfig.sr is gone: training always counted the bound at the stream's rate."""
    config = Config()
    stored = _stored(config)
    stored["augment"]["roll"]["sr"] = 32000
    assert config_diff(stored, config) == []


def test_max_steps_is_ignored():
    config = Config()
    assert config_diff({**_stored(config), "max_steps": 7}, dataclasses.replace(config, max_steps=0)) == []
    assert config_diff(_stored(config), dataclasses.replace(config, max_steps=3)) == []
    assert config_diff(_stored(config), dataclasses.replace(config, max_steps=3), ignore=()) == ["max_steps"]


def test_stale_config_detection():
    """The experiments runner's former `stale_config` cases (a finished grid survives code growth)."""
    config = load_config("configs/demo.py")
    stored = to_dict(config)
    del stored["optim"]["b2"]  # a field added to OptimConfig after the run: not a difference
    stored = {**stored, "max_steps": 7}
    assert config_diff(stored, config) == []
    assert config_diff(stored, override(config, "model.options.base_channels=64")) == ["model.options"]
    assert config_diff(stored, override(config, "optim.b2=0.99")) == ["optim.b2"]  # not the default
    assert config_diff(stored, override(config, "optim.b1=0.8")) == ["optim.b1"]
    assert config_diff(stored, override(config, "seed=5")) == ["seed"]
    # A whole section added after the run: its default (here None) is what the run had.
    del stored["prune"]
    assert config_diff(stored, config) == []
    stale = config_diff(stored, dataclasses.replace(config, prune=PruneConfig(sparsity=0.5)))
    assert stale and all(k.startswith("prune.") for k in stale), stale
    # The run had a section where the config now has None.
    assert config_diff(_stored(dataclasses.replace(config, prune=PruneConfig(sparsity=0.5))), config) == ["prune"]


def test_check_resumable_refuses_a_different_stored_config(tmp_path):
    config = Config(optim=OptimConfig(lr=0.1))
    check_resumable(tmp_path, config)  # a new run
    record_config(tmp_path, config)
    assert json.loads((tmp_path / "config.json").read_text()) == _stored(config)
    check_resumable(tmp_path, dataclasses.replace(config, max_steps=5))
    with pytest.raises(ValueError, match=r"holds a run with a different config \(fields \['optim.lr'\]\)"):
        check_resumable(tmp_path, Config())
    (tmp_path / "config.json").write_text('{"seed": ')  # torn
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        check_resumable(tmp_path, config)


def test_exp_warmup_linear_down_matches_cpjku():
    """OptimConfig(lr_schedule="exp_warmup_linear_down") against the transcribed reference
    (cpjku_dcase23 helpers/lr_schedule.py), stepped once per epoch as their LambdaLR is."""
    import math

    from asc_jax.config import OptimConfig

    def reference(epoch, warmup=3, length=10, start=3, last=0.01):
        up = math.exp(-5.0 * (1.0 - min(max(epoch, 0.5), warmup) / warmup) ** 2) if epoch < warmup else 1.0
        if epoch <= start:
            down = 1.0
        elif epoch - start < length:
            down = last + (1.0 - last) * (length - epoch + start) / length
        else:
            down = last
        return up * down

    cfg = OptimConfig(lr=1e-5, epochs=25, warmup_epochs=3, lr_schedule="exp_warmup_linear_down")
    schedule = cfg.schedule(steps_per_epoch=7)
    for epoch in range(25):
        for step in (7 * epoch, 7 * epoch + 6):
            assert float(schedule(step)) == pytest.approx(1e-5 * reference(epoch), rel=1e-6), (epoch, step)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        OptimConfig(lr_schedule="linear")
