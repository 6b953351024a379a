"""Evaluation in the DCASE Task 1 style: overall, class-wise, macro and device-wise accuracy,
confusion matrix; JSON + PNG outputs and the DCASE submission `output.csv`.

The DCASE ranking metric is the *macro-averaged class-wise accuracy* (the mean of per-class
accuracies), which differs from top-1 accuracy when classes are imbalanced.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from asc_jax.data.tau import CLASSES, REAL_DEVICES, SEEN_SIMULATED_DEVICES, UNSEEN_DEVICES

DEVICE_GROUPS = {"real": REAL_DEVICES, "seen": SEEN_SIMULATED_DEVICES, "unseen": UNSEEN_DEVICES}


def _mean_or_nan(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """(true, predicted) counts."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def compute_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    devices: Sequence[str],
    class_names: Sequence[str] = CLASSES,
) -> dict:
    """Accuracy breakdowns from per-clip logits.

    Args:
      logits: (N, C) scores; argmax is the prediction.
      labels: (N,) true class indices.
      devices: (N,) device id per clip ("a", "s4", ...).
      class_names: C names, in logit order.
    Returns:
      A JSON-able dict: accuracy, macro_accuracy (DCASE metric), class_accuracy, device_accuracy,
      device_group_accuracy (real / seen / unseen), device_class_accuracy, confusion_matrix, n.
    """
    logits, labels, devices = np.asarray(logits), np.asarray(labels), np.asarray(devices)
    if not (len(logits) == len(labels) == len(devices)):
        raise ValueError(f"length mismatch: {len(logits)} logits, {len(labels)} labels, {len(devices)} devices")
    if not np.isfinite(logits).all():
        raise FloatingPointError("evaluation logits contain NaN or inf")
    preds = logits.argmax(-1)
    correct = preds == labels
    class_acc = {name: _mean_or_nan(correct[labels == i]) for i, name in enumerate(class_names)}
    present = sorted(set(devices.tolist()))
    device_acc = {d: _mean_or_nan(correct[devices == d]) for d in present}
    groups = {g: _mean_or_nan(correct[np.isin(devices, members)]) for g, members in DEVICE_GROUPS.items()
              if np.isin(devices, members).any()}
    device_class = {d: {name: _mean_or_nan(correct[(devices == d) & (labels == i)])
                        for i, name in enumerate(class_names)} for d in present}
    return {
        "n": int(len(labels)),
        "accuracy": _mean_or_nan(correct),
        "macro_accuracy": float(np.nanmean(list(class_acc.values()))),
        "class_accuracy": class_acc,
        "device_accuracy": device_acc,
        "device_group_accuracy": groups,
        "device_class_accuracy": device_class,
        "confusion_matrix": confusion_matrix(labels, preds, len(class_names)).tolist(),
        "class_names": list(class_names),
    }


def group_macro_accuracy(logits: np.ndarray, labels: np.ndarray, devices: Sequence[str],
                         group: Sequence[str], class_names: Sequence[str] = CLASSES) -> float | None:
    """The DCASE metric (macro-class accuracy) over the clips recorded by the devices in `group`,
    e.g. DCASE2025's known and unknown devices; None when no clip is from one of them."""
    mask = np.isin(np.asarray(devices), list(group))
    if not mask.any():
        return None
    logits, labels = np.asarray(logits)[mask], np.asarray(labels)[mask]
    return compute_metrics(logits, labels, np.asarray(devices)[mask], class_names)["macro_accuracy"]


def summary_table(metrics: dict) -> str:
    """A compact text table of the headline numbers."""
    lines = [f"clips {metrics['n']}   accuracy {metrics['accuracy']:.4f}   "
             f"macro-class accuracy {metrics['macro_accuracy']:.4f}"]
    lines.append("class    " + "  ".join(f"{n[:8]:>8}" for n in metrics["class_names"]))
    lines.append("acc      " + "  ".join(f"{metrics['class_accuracy'][n]:8.3f}" for n in metrics["class_names"]))
    devs = list(metrics["device_accuracy"])
    lines.append("device   " + "  ".join(f"{d:>6}" for d in devs))
    lines.append("acc      " + "  ".join(f"{metrics['device_accuracy'][d]:6.3f}" for d in devs))
    if metrics["device_group_accuracy"]:
        lines.append("groups   " + "  ".join(f"{g} {a:.3f}" for g, a in metrics["device_group_accuracy"].items()))
    return "\n".join(lines)


def save_report(metrics: dict, out_dir: str | Path, prefix: str = "eval") -> list[Path]:
    """Writes `<prefix>.json`, `<prefix>_confusion.png` and `<prefix>_devices.png`."""
    import matplotlib
    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{prefix}.json"
    json_path.write_text(json.dumps(metrics, indent=2))

    names = metrics["class_names"]
    cm = np.asarray(metrics["confusion_matrix"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"macro-class accuracy {metrics['macro_accuracy']:.3f}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    cm_path = out_dir / f"{prefix}_confusion.png"
    fig.savefig(cm_path, dpi=110)
    plt.close(fig)

    devs = list(metrics["device_accuracy"])
    colours = ["tab:blue" if d in REAL_DEVICES else "tab:orange" if d in SEEN_SIMULATED_DEVICES
               else "tab:red" for d in devs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(devs, [metrics["device_accuracy"][d] for d in devs], color=colours)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy per device (blue real, orange seen, red unseen)")
    fig.tight_layout()
    dev_path = out_dir / f"{prefix}_devices.png"
    fig.savefig(dev_path, dpi=110)
    plt.close(fig)
    return [json_path, cm_path, dev_path]


def write_dcase_output(path: str | Path, filenames: Sequence[str], probs: np.ndarray,
                       class_names: Sequence[str] = CLASSES) -> Path:
    """DCASE submission file: tab-separated filename, scene_label, one probability column per class."""
    probs = np.asarray(probs)
    if probs.shape != (len(filenames), len(class_names)):
        raise ValueError(f"probs shape {probs.shape} does not match {len(filenames)} files x {len(class_names)} classes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "scene_label", *class_names])
        for name, p in zip(filenames, probs):
            writer.writerow([name, class_names[int(np.argmax(p))], *(f"{v:.6f}" for v in p)])
    return path
