"""Resume after real process kills (SIGKILL) is exact, and its bookkeeping is clean.

A run of `train.py` is killed three times, by SIGKILL, as a crash or a pre-empted machine would
kill it: mid-training, during an (asynchronous) checkpoint write, and during finalize (after the
training-form model is saved, before the deploy model is). Rerunning the same command each time
must end with weights bitwise equal to an uninterrupted run's, every logged step exactly once in
metrics.jsonl and the CSVs, and the run's own "resumed from step" message visible on stderr.

`python tests/test_resume_kill.py --config ... --workdir ...` is the worker: train.py's main with
the kill points of $KILL_AT installed.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _install_kill_point(spec: str) -> None:
    """`save_latest:N`: SIGKILL right after the step-N save was issued (orbax writes it in a
    background thread, so the process dies mid-write). `finalize`: SIGKILL after the first saved
    model of finalize (model/ written, deploy/ not)."""
    from asc_jax import checkpoint
    from asc_jax.train import loop

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if spec.startswith("save_latest:"):
        at = int(spec.split(":")[1])
        original = checkpoint.TrainCheckpoints.save_latest

        def save_latest(self, step, *args, **kwargs):
            original(self, step, *args, **kwargs)
            if step == at:
                die()

        checkpoint.TrainCheckpoints.save_latest = save_latest
    elif spec == "finalize":
        original_save = loop.save_model

        def save_model(*args, **kwargs):
            original_save(*args, **kwargs)
            die()

        loop.save_model = save_model
    elif spec:
        raise ValueError(f"unknown KILL_AT {spec!r}")


CONFIG = """
from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig

def get_config(arg=None):
    return Config(
        seed=1,
        data=DataConfig(root={root!r}, generate=False),
        model=ModelConfig(name="rep_mobile",
                          options={{"base_channels": 16, "channels_multiplier": 2.0, "expansion_rate": 2.0}}),
        optim=OptimConfig(lr=0.01, epochs=2, warmup_epochs=1, batch_size=32),
        eval_every_epochs=1,
        log_every_steps=5,
    )
"""


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **extra)
    # The persistent compilation cache of the test session: the five processes compile the same
    # steps, and on 2 CPU cores compilation dominates.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "asc_jax_xla_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    return env


def _start(config: Path, workdir: Path, kill_at: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--config", str(config), "--workdir", str(workdir)],
                            cwd=ROOT, env=_env(KILL_AT=kill_at), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, expect_kill: bool) -> str:
    out, _ = proc.communicate(timeout=600)
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, out[-3000:]
    else:
        assert proc.returncode == 0, out[-3000:]
    return out


def _logged_steps(workdir: Path) -> dict[str, list[int]]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    steps = {split: [r["step"] for r in rows if r["split"] == split] for split in ("train", "eval")}
    for split in steps:
        lines = (workdir / f"metrics_{split}.csv").read_text().splitlines()[1:]
        assert [int(line.split(",")[0]) for line in lines] == steps[split], split
    return steps


def _weights(model_dir: Path) -> dict:
    from asc_jax.checkpoint import load_model
    from asc_jax.surgery import flatten, module_tree
    return flatten(module_tree(load_model(model_dir)[0]))


@pytest.mark.slow
def test_three_sigkills_resume_bitwise_exact(tmp_path_factory, tmp_path):
    from asc_jax.data import synthetic

    data = tmp_path_factory.mktemp("data") / "tau"
    synthetic.ensure_dataset(data, n_train_per_class_device=10, n_test_per_class_device=5)  # 600 / 450 clips
    config = tmp_path / "tiny.py"
    config.write_text(textwrap.dedent(CONFIG.format(root=str(data))))

    straight = tmp_path / "straight"
    _finish(_start(config, straight), expect_kill=False)

    run = tmp_path / "killed"  # 18 steps per epoch, 36 in all; checkpoints at 18 and 36
    proc = _start(config, run)  # 1: killed from outside, mid-epoch, before any checkpoint
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and any(
                json.loads(line)["step"] >= 10 for line in (run / "metrics.jsonl").read_text().splitlines()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    _finish(proc, expect_kill=True)
    _finish(_start(config, run, kill_at="save_latest:36"), expect_kill=True)  # 2: mid-write
    out = _finish(_start(config, run, kill_at="finalize"), expect_kill=True)  # 3: mid-finalize
    assert "resumed from step 18" in out, out[-3000:]  # the write at 36 never completed
    out = _finish(_start(config, run), expect_kill=False)
    assert "resumed from step 36" in out, out[-3000:]

    expected = _logged_steps(straight)
    assert expected["train"] == [5, 10, 15, 18, 20, 25, 30, 35, 36] and expected["eval"] == [18, 36]
    assert _logged_steps(run) == expected
    for form in ("model", "deploy"):
        a, b = _weights(straight / form), _weights(run / form)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{form} {key}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _install_kill_point(os.environ.get("KILL_AT", ""))
    import train

    train.main(sys.argv[1:])
