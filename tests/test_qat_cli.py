"""End to end: `python -m asc_jax.quantize --qat` on a tiny generated dataset and saved deploy model.

PTQ, QAT finetuning (the production train step) from the PTQ ranges, int8 conversion, the report
(float vs PTQ vs QAT accuracy, DCASE memory) and the saved QAT int8 model.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asc_jax import complexity, inference
from asc_jax import quantize as Q
from asc_jax.checkpoint import load_model
from asc_jax.data import sources, tau
from asc_jax.data.synthetic import ensure_dataset
from tests.test_quantize import save_tiny_deploy

# The int8 model dequantizes the codes that the fake-quant model computes in its forward pass:
# the same products, so their logits (spread ~2) differ by float32 summation order at most.
FAKE_QUANT_ATOL = 1e-4
BATCH = 30  # clips per forward pass and per QAT step: 300 training clips -> 10 steps per epoch


def test_qat_cli_reports_float_ptq_qat_and_saves_a_working_int8_model(tmp_path, capsys, monkeypatch):
    # 5 clips per (class, device): 300 training clips (6 devices), 450 test clips (9 devices).
    root = ensure_dataset(tmp_path / "data", n_train_per_class_device=5, n_test_per_class_device=5)
    save_tiny_deploy(tmp_path / "deploy")
    finetuned = []

    def keep_fake_quant(*args, **kwargs):
        model, history = finetune_qat(*args, **kwargs)
        finetuned.append(model)
        return model, history

    finetune_qat = Q.finetune_qat
    monkeypatch.setattr(Q.cli, "finetune_qat", keep_fake_quant)
    out = tmp_path / "int8"
    assert Q.main(["--checkpoint", str(tmp_path / "deploy"), "--data-root", str(root), "--n-calib", "30",
                   "--batch-size", str(BATCH), "--out", str(out), "--qat", "--qat-epochs", "2",
                   "--qat-lr", "1e-3", "--qat-batch-size", str(BATCH),
                   # The augmented train step (as in training) compiles ~10 s longer on 2 cores.
                   "--no-qat-augment"]) == 0
    printed = capsys.readouterr().out
    print(printed)  # the measured numbers, with pytest -s
    assert all(row in printed for row in ("DCASE memory at int8", "int8 PTQ", "int8 QAT", "(QAT vs float)"))
    assert f"QAT int8 model saved to {out}_qat" in printed

    # One report, saved with both int8 models, with the three accuracies and the memory.
    result = json.loads((out / "quantization.json").read_text())
    assert json.loads((tmp_path / "int8_qat" / "quantization.json").read_text()) == result
    for form in ("float", "int8", "qat"):
        assert result[form]["n"] == 450 and 0.0 <= result[form]["accuracy"] <= 1.0
    assert result["memory"]["fits_dcase"] and result["memory"]["params"] > 0
    qat = result["qat_finetune"]
    assert qat["n_train"] == 300 and qat["steps"] == 2 * (300 // BATCH)
    assert qat["config"]["train_split"] == "100" and qat["config"]["lr"] == 1e-3
    assert qat["config"]["augment"] == {"roll": None, "freq_mask": None, "mixstyle": None, "time_mask": None,
                                        "dir": None}
    assert len(qat["loss"]) == 2 and np.isfinite(qat["loss"]).all()
    assert qat["max_abs_diff_to_fake_quant"] <= FAKE_QUANT_ATOL
    assert abs(result["float"]["accuracy"] - result["qat"]["accuracy"]) <= 1 - qat["top1_agreement"] + 1e-9

    # The saved QAT model loads as int8, finetuned (not the PTQ model), and predicts through the
    # one inference path what the report measured and what the fake-quant model computes.
    model, spec = load_model(out.with_name("int8_qat"), form="int8")
    codes = jax.tree.leaves(nnx.state(model, Q.QuantWeight))
    assert codes and all(c.dtype == jnp.int8 for c in codes)
    ptq_codes = jax.tree.leaves(nnx.state(load_model(out, form="int8")[0], Q.QuantWeight))
    assert any(not np.array_equal(a, b) for a, b in zip(codes, ptq_codes))
    assert spec["quant_eval"]["method"] == "qat"
    assert spec["quant_eval"]["int8_accuracy"] == result["qat"]["accuracy"]
    assert complexity.memory_report(model).as_dict() == result["memory"]

    saved = inference.load(out.with_name("int8_qat"), form="int8")
    clips = tau.load_split(root, "test")
    source = sources.ClipSource(clips, root, sr=saved.frontend.sample_rate, cache=False)
    [fake_quant] = finetuned
    fake_quant_fn = inference.model_fn(fake_quant, saved.frontend.features)
    int8_logits, fake_quant_logits = inference.predict(lambda audio: (saved.fn(audio), fake_quant_fn(audio)),
                                                       source, BATCH)
    np.testing.assert_allclose(int8_logits, fake_quant_logits, rtol=0, atol=FAKE_QUANT_ATOL)
    labels = np.array([c.label for c in clips])
    assert np.mean(int8_logits.argmax(-1) == labels) == pytest.approx(result["qat"]["accuracy"], abs=1e-12)


def test_qat_options_are_checked():
    with pytest.raises(ValueError, match="epochs >= 1"):
        Q.QATConfig(epochs=0)
    with pytest.raises(ValueError, match="lr > 0"):
        Q.QATConfig(lr=0.0)
    with pytest.raises(SystemExit):
        Q.main(["--checkpoint", "x", "--data-root", "y", "--qat-out", "z"])
