"""DCASE-style metrics against hand-computed values."""
import csv

import numpy as np
import pytest

from asc_jax.evaluate import compute_metrics, save_report, write_dcase_output


def _onehot(preds, c=3):
    return np.eye(c)[preds]


def test_metrics_hand_computed():
    labels = np.array([0, 0, 0, 0, 1, 2])
    preds = np.array([0, 0, 0, 1, 1, 0])
    devices = ["a", "a", "s1", "s4", "s4", "b"]
    m = compute_metrics(_onehot(preds), labels, devices, class_names=["x", "y", "z"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # Class accuracies 3/4, 1/1, 0/1 -> macro 0.5833, unlike top-1 0.6667.
    assert m["class_accuracy"] == {"x": 0.75, "y": 1.0, "z": 0.0}
    assert m["macro_accuracy"] == pytest.approx((0.75 + 1 + 0) / 3)
    assert m["device_accuracy"] == {"a": 1.0, "b": 0.0, "s1": 1.0, "s4": 0.5}
    assert m["device_group_accuracy"] == {"real": pytest.approx(2 / 3), "seen": 1.0, "unseen": 0.5}
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_nan_logits_and_length_mismatch_are_errors():
    with pytest.raises(FloatingPointError):
        compute_metrics(np.full((2, 3), np.nan), np.array([0, 1]), ["a", "a"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="length mismatch"):
        compute_metrics(np.zeros((2, 3)), np.array([0]), ["a", "a"], ["x", "y", "z"])


def test_report_files_and_dcase_output(tmp_path):
    m = compute_metrics(_onehot(np.array([0, 1, 2])), np.array([0, 1, 1]), ["a", "s1", "s5"], ["x", "y", "z"])
    paths = save_report(m, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    out = write_dcase_output(tmp_path / "output.csv", ["audio/1.wav", "audio/2.wav"], probs, ["x", "y", "z"])
    rows = list(csv.reader(out.open(), delimiter="\t"))
    assert rows[0] == ["filename", "scene_label", "x", "y", "z"]
    assert rows[1][:2] == ["audio/1.wav", "x"] and rows[2][:2] == ["audio/2.wav", "z"]
    assert float(rows[2][4]) == pytest.approx(0.8)
