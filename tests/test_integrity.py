"""Saved artifacts verify themselves (DESIGN rule 17): a damaged saved model or checkpoint fails
with one CorruptModelError naming the directory and the damaged file or array, and training never
saves a non-finite state nor points to a checkpoint that is missing or non-finite."""
import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import grain
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from asc_jax import predict as P
from asc_jax import quantize as Q
from asc_jax.audio.augment import AugmentConfig
from asc_jax.checkpoint import CorruptModelError, TrainCheckpoints, first_non_finite, load_model
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig
from asc_jax.data import synthetic
from asc_jax.data.tau import CLASSES
from asc_jax.train import train_and_evaluate
from asc_jax.train.loop import _check_finite
from tests.test_quantize import MEL, TINY, save_tiny_deploy, scene_audio, tiny_deploy


def _data_files(directory: Path) -> list[Path]:
    """Orbax's array data files (ocdbt `d/` folders) under `directory`, largest first."""
    return sorted((p for p in directory.rglob("*") if p.is_file() and p.parent.name == "d"),
                  key=lambda p: -p.stat().st_size)


def _scribble(path: Path, n: int = 100, seed: int = 0) -> None:
    """Overwrites `n` bytes in the middle of `path` with random ones."""
    data = bytearray(path.read_bytes())
    start = (len(data) - n) // 2
    data[start:start + n] = np.random.default_rng(seed).bytes(n)
    path.write_bytes(bytes(data))


# --- saved models --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    save_tiny_deploy(root / "deploy")
    return root / "deploy"


@pytest.fixture
def copy(saved, tmp_path):
    out = tmp_path / "deploy"
    shutil.copytree(saved, out)
    return out


def _damage_message(directory: Path) -> str:
    with pytest.raises(CorruptModelError) as err:
        load_model(directory)
    message = str(err.value)
    assert message.startswith(f"saved model {directory} is damaged: "), message
    assert "\n" not in message
    return message


def test_integrity_is_recorded_and_a_clean_model_loads(saved):
    spec = json.loads((saved / "model.json").read_text())["integrity"]
    assert spec["algorithm"] == "sha256"
    kernel = spec["arrays"]["stages/2/0/project/conv/kernel"]
    assert kernel["dtype"] == "float32" and len(kernel["shape"]) == 4 and len(kernel["sha256"]) == 64
    assert "weights/_METADATA" in spec["files"]
    _, loaded_spec = load_model(saved)
    assert "integrity" not in loaded_spec and loaded_spec["class_names"] == list(CLASSES)


def test_random_bytes_in_a_data_file_name_the_file_and_the_array(copy):
    data = _data_files(copy / "weights")[0]
    _scribble(data)
    message = _damage_message(copy)
    assert f"{data.relative_to(copy)} changed since it was saved (sha256 mismatch)" in message
    assert re.search(r"array \S+/kernel differs from the saved one", message), message


def test_deleted_metadata_is_named(copy):
    (copy / "weights" / "_METADATA").unlink()
    assert "weights/_METADATA is missing" in _damage_message(copy)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_deleted_or_truncated_data_file_is_named(copy, how, capfd):
    data = _data_files(copy / "weights")[0]
    size = data.stat().st_size
    if how == "deleted":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:size // 2])
    message = _damage_message(copy)
    name = data.relative_to(copy)
    assert (f"{name} is missing" if how == "deleted" else f"{name} has {size // 2} bytes, {size} when saved") \
        in message, message
    # orbax's failure is summarised in the message, not also logged as pages of asyncio tracebacks
    assert "Traceback" not in capfd.readouterr().err


def test_truncated_model_json_is_named(copy):
    text = (copy / "model.json").read_text()
    (copy / "model.json").write_text(text[:len(text) // 2])
    assert "model.json is not valid JSON" in _damage_message(copy)


def test_damaged_int8_model_is_refused(tmp_path):
    model = tiny_deploy(3)
    ranges = {name: jnp.array([-4.0, 4.0]) for name in Q.conv_layers(model)}
    spec = {"model": {"name": "rep_mobile", "options": TINY, "deploy": True}, "mel": dataclasses.asdict(MEL)}
    out = Q.save_quantized(tmp_path / "int8", Q.quantize(model, ranges, Q.QuantConfig()), spec, Q.QuantConfig())
    load_model(out)  # clean
    _scribble(_data_files(out / "weights")[0])
    with pytest.raises(CorruptModelError, match=rf"saved model {re.escape(str(out))} is damaged: weights/"):
        load_model(out)


def test_model_saved_without_integrity_data_still_loads(copy, caplog):
    spec = json.loads((copy / "model.json").read_text())
    del spec["integrity"]
    (copy / "model.json").write_text(json.dumps(spec))
    with caplog.at_level(logging.WARNING, logger="asc_jax.checkpoint"):
        load_model(copy)
    assert "no integrity data" in caplog.text


def test_predict_cli_on_a_damaged_model_exits_non_zero(copy, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", scene_audio(1, 1)[0], MEL.sample_rate)
    _scribble(_data_files(copy / "weights")[0])
    out = tmp_path / "output.csv"
    code = P.main([str(tmp_path / "a.wav"), "--checkpoint", str(copy), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and not out.exists()
    assert len(err) == 1 and err[0].startswith(f"error: saved model {copy} is damaged: "), err


# --- training checkpoints ------------------------------------------------------------------------

def _state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"step": jnp.array(2, jnp.int32),
            "params": {"stages": {"1": {"conv": {"kernel": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)}}}},
            "batch_stats": {"stages": {"1": {"bn": {"var": jnp.ones(16)}}}},
            "opt_state": {"mu": jnp.zeros((64, 64))}}


def _iterator():
    return iter(grain.MapDataset.range(8).to_iter_dataset())


def _with_inf(state: dict) -> dict:
    return {**state, "batch_stats": {"stages": {"1": {"bn": {"var": jnp.ones(16).at[3].set(jnp.inf)}}}}}


def test_non_finite_state_is_never_saved_and_the_last_good_one_is_named(tmp_path):
    good = _state()
    with TrainCheckpoints(tmp_path / "ck") as ckpts:
        with pytest.raises(FloatingPointError, match=r"at step 1: batch_stats/stages/1/bn/var \(1 of 16 values "
                                                     r"non-finite\).*\(no checkpoint has been saved yet\)"):
            ckpts.save_latest(1, _with_inf(good), _iterator())
        ckpts.save_latest(2, good, _iterator())
        ckpts.save_best(2, good, {"macro_accuracy": 0.5})
        with pytest.raises(FloatingPointError) as err:
            ckpts.save_best(3, _with_inf(good), {"macro_accuracy": 0.6})
        latest = tmp_path / "ck" / "latest" / "2"
        assert f"(last good checkpoint: {latest} (step 2))" in str(err.value)
        with pytest.raises(FloatingPointError, match=rf"loss nan at step 4.*{re.escape(str(latest))}"):
            _check_finite([{"loss": np.float32(np.nan)}], 3, ckpts.last_good)
    assert sorted(p.name for p in (tmp_path / "ck" / "latest").iterdir()) == ["2"]
    assert sorted(p.name for p in (tmp_path / "ck" / "best").iterdir()) == ["2"]
    with TrainCheckpoints(tmp_path / "ck") as ckpts:  # what it names is there and finite
        assert first_non_finite(ckpts.restore_latest(good, _iterator())) is None


@pytest.mark.parametrize("how", ["scribbled", "data file deleted", "manifest deleted", "checksums deleted"])
def test_damaged_checkpoint_is_refused_on_resume(tmp_path, how):
    good = _state()
    with TrainCheckpoints(tmp_path / "ck") as ckpts:
        ckpts.save_latest(2, good, _iterator())
    step = tmp_path / "ck" / "latest" / "2"
    if how == "scribbled":
        _scribble(_data_files(step / "state")[0])
    elif how == "data file deleted":
        _data_files(step / "state")[0].unlink()
    elif how == "manifest deleted":
        (step / "state" / "manifest.ocdbt").unlink()
    else:
        (step / "_CHECKPOINT_METADATA").unlink()
    with TrainCheckpoints(tmp_path / "ck") as ckpts:
        with pytest.raises(CorruptModelError) as err:
            ckpts.restore_latest(good, _iterator())
    message = str(err.value)
    assert message.startswith(f"checkpoint {step} is damaged: ") and f"Delete {step} to fall back" in message
    if how == "scribbled":
        assert "array params/stages/1/conv/kernel differs from the saved one" in message, message
    elif how == "checksums deleted":
        assert "_CHECKPOINT_METADATA (which holds the array checksums) is missing" in message, message
    else:
        assert "orbax cannot restore it" in message, message


@pytest.mark.slow
def test_huge_learning_rate_names_the_leaf_and_no_missing_checkpoint(tmp_path):
    root = synthetic.ensure_dataset(tmp_path / "data", n_train_per_class_device=1, n_test_per_class_device=1,
                                    clips_per_recording=1)  # 60 training clips: one step per epoch
    config = Config(
        seed=1, data=DataConfig(root=str(root), generate=False), mel=MEL,
        augment=AugmentConfig(roll=None, freq_mask=None, mixstyle=None),
        model=ModelConfig(name="rep_mobile", options=TINY),
        # An infinite peak makes the warmup's first learning rate 0 * inf = NaN: the first step's
        # loss (before the update) is finite, the state after it is not.
        optim=OptimConfig(lr=float("inf"), epochs=3, warmup_epochs=1, batch_size=32),
        eval_every_epochs=100, log_every_steps=1)
    with pytest.raises(FloatingPointError, match=r"non-finite training state at step 1: params/\S+ "
                                                 r"\(\d+ of \d+ values non-finite\).*no checkpoint has been saved yet"):
        train_and_evaluate(config, tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoints" / "latest").iterdir())
