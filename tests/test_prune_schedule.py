"""The finetuning recipe of a pruning round: its own peak lr and warmup, cosine to 0 in the round.

A round that ended at its peak learning rate (1-epoch rounds with a 1-epoch warmup) handed an
unsettled model to the next round and to the result; these tests read the optax schedule each
phase really trains with (OptimConfig.schedule), at the demo's real steps per epoch.
"""
import dataclasses
import json

import numpy as np
import pytest

from asc_jax.config import OptimConfig, config_diff, load_config, override, to_dict
from asc_jax.prune import PruneConfig
from asc_jax.train import progressive

# configs/prune_demo.py trains on the synthetic set's 3,000 clips in batches of 64 (the loop
# drops the remainder): 46 steps per epoch.
STEPS_PER_EPOCH = 3000 // 64


def _demo(**variant):
    arg = ",".join(f"{k}={v}" for k, v in variant.items())
    return load_config(f"configs/prune_demo.py:{arg}" if arg else "configs/prune_demo.py")


def _round(config, index=1):
    """Phase `index` (> 0) as plan_phases makes it (the widths play no part in the optimizer)."""
    return progressive.Phase(index, f"phase{index}_w40", 40, config.prune.finetune_epochs, {})


def _lrs(optim: OptimConfig) -> np.ndarray:
    """The learning rate of every step of a phase, and one past its end."""
    schedule = optim.schedule(STEPS_PER_EPOCH)
    return np.array([float(schedule(s)) for s in range(optim.epochs * STEPS_PER_EPOCH + 1)])


@pytest.mark.parametrize("finetune_epochs", [1, 3])
def test_a_round_starts_at_finetune_lr_and_decays_to_zero_within_itself(finetune_epochs):
    config = _demo(finetune_epochs=finetune_epochs)
    assert config.optim.lr == 0.01 and config.optim.warmup_epochs == 1  # the dense recipe differs
    optim = progressive.phase_config(config, _round(config), {"base_channels": 40}, "init").optim
    assert optim.epochs == finetune_epochs and optim.lr_schedule == "warmup_cosine"
    lrs = _lrs(optim)
    last = finetune_epochs * STEPS_PER_EPOCH - 1  # the round's final update
    peak = config.prune.finetune_lr
    assert peak == pytest.approx(1e-3)
    assert lrs[0] == pytest.approx(peak)  # no warmup: the first step is at the peak
    assert lrs.max() == pytest.approx(peak)
    assert np.all(np.diff(lrs) <= 1e-12)  # cosine only: never back up
    assert lrs[last] < 0.01 * peak and lrs[last + 1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[STEPS_PER_EPOCH * finetune_epochs // 2] == pytest.approx(peak / 2, rel=0.05)


def test_a_warmup_shorter_than_the_round_reaches_the_peak_then_decays():
    config = override(override(_demo(finetune_epochs=3), "prune.finetune_warmup_epochs=1"),
                      "prune.finetune_lr=0.002")
    optim = progressive.phase_config(config, _round(config, 2), {}, "init").optim
    assert (optim.lr, optim.warmup_epochs, optim.epochs) == (0.002, 1, 3)
    lrs = _lrs(optim)
    assert lrs[0] == 0.0 and lrs[STEPS_PER_EPOCH] == pytest.approx(0.002)
    assert np.argmax(lrs) == STEPS_PER_EPOCH
    assert lrs[3 * STEPS_PER_EPOCH - 1] < 0.01 * 0.002


def test_the_dense_phase_keeps_its_own_recipe():
    config = _demo()
    dense = progressive.phase_config(config, progressive.Phase(0, progressive.DENSE_PHASE, 48, 4))
    assert dense.optim == dataclasses.replace(config.optim, epochs=4)
    assert (dense.optim.lr, dense.optim.warmup_epochs) == (0.01, 1)
    # Whatever the dense schedule is, a round runs its own warmup_cosine (with the dense Adam and
    # batch settings).
    stepped = dataclasses.replace(config, optim=dataclasses.replace(
        config.optim, lr_schedule="exp_warmup_linear_down", warmup_epochs=3, b2=0.99))
    ft = progressive.phase_config(stepped, _round(stepped), {}, "init").optim
    assert ft == dataclasses.replace(stepped.optim, epochs=2, lr=1e-3, warmup_epochs=0,
                                     lr_schedule="warmup_cosine")


def test_demo_rounds_are_warmup_free_cosine_over_at_least_two_epochs():
    for variant in ("progressive", "single"):
        prune = _demo(variant=variant).prune
        assert prune.finetune_epochs >= 2 and prune.finetune_warmup_epochs == 0
        assert prune.finetune_lr < _demo().optim.lr


@pytest.mark.parametrize("variant", ["single64to32", "single96to32", "progressive96"])
def test_tau_rounds_have_an_explicit_recipe_also_in_the_smoke_grid(variant):
    config = load_config(f"configs/prune_tau.py:variant={variant}")
    assert (config.prune.finetune_lr, config.prune.finetune_warmup_epochs) == (1e-3, 0)
    assert config.optim.lr == 0.01 and config.optim.warmup_epochs == 5
    # The experiments' Table V smoke spec: 1-epoch rounds must still be a valid recipe.
    smoke = load_config(f"configs/prune_tau.py:variant={variant},epochs=1,finetune_epochs=1")
    assert smoke.prune.finetune_epochs == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(rounds=2, finetune_epochs=1, finetune_warmup_epochs=1),
     r"finetune_warmup_epochs=1 must be less than finetune_epochs=1"),
    (dict(rounds=2, finetune_epochs=3, finetune_warmup_epochs=5),
     r"finetune_warmup_epochs=5 must be less than finetune_epochs=3"),
    (dict(finetune_epochs=0, finetune_warmup_epochs=1),
     r"finetune_warmup_epochs=1 must be less than finetune_epochs=0"),
    (dict(finetune_epochs=2, finetune_warmup_epochs=-1), r"finetune_warmup_epochs must be >= 0, got -1"),
    (dict(finetune_epochs=2, finetune_lr=0.0), r"finetune_lr must be .* > 0, got 0.0"),
    (dict(finetune_epochs=2, finetune_lr=-1e-3), r"finetune_lr must be .* > 0"),
    (dict(finetune_epochs=2, finetune_lr=float("nan")), r"finetune_lr must be .* > 0, got nan"),
    (dict(finetune_epochs=2, finetune_lr=float("inf")), r"finetune_lr must be a finite"),
])
def test_recipe_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(sparsity=0.5, **kwargs)
    PruneConfig(sparsity=0.5, finetune_epochs=2, finetune_warmup_epochs=1)  # warmup < round: fine


def test_recipe_fields_override_serialize_and_diff():
    config = _demo()
    changed = override(config, "prune.finetune_lr=0.002")
    assert changed.prune.finetune_lr == 0.002 and isinstance(changed.prune.finetune_lr, float)
    assert override(config, "prune.finetune_lr=1").prune.finetune_lr == 1.0  # int -> float
    with pytest.raises(TypeError, match="prune.finetune_warmup_epochs"):
        override(config, "prune.finetune_warmup_epochs=0.5")
    with pytest.raises(ValueError, match="finetune_warmup_epochs=2 must be less than finetune_epochs=2"):
        override(config, "prune.finetune_warmup_epochs=2")
    stored = json.loads(json.dumps(to_dict(config)))
    assert stored["prune"]["finetune_lr"] == 1e-3 and stored["prune"]["finetune_warmup_epochs"] == 0
    assert config_diff(stored, config) == []
    assert config_diff(stored, changed) == ["prune.finetune_lr"]
    assert config_diff(stored, override(config, "prune.finetune_warmup_epochs=1")) == [
        "prune.finetune_warmup_epochs"]
