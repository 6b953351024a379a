"""Metric sinks: console, CSV + JSON-lines files, TensorBoard event files."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalars stay, vectors become name/0, name/1..., nested dicts name/key (for every sink)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}/"))
            continue
        arr = np.asarray(value)
        if arr.ndim == 0:
            out[name] = float(arr)
        else:
            out.update({f"{name}/{i}": float(v) for i, v in enumerate(arr.ravel())})
    return out


class MetricWriter:
    """Writes every logged row to `metrics.jsonl`, one CSV per split and TensorBoard."""

    def __init__(self, workdir: str | Path):
        from tensorboardX import SummaryWriter

        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.dir / "metrics.jsonl").open("a")
        self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    def write(self, split: str, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        flat = flatten_metrics(metrics)
        self._jsonl.write(json.dumps({"split": split, "step": step, **flat}) + "\n")
        self._jsonl.flush()
        csv_path = self.dir / f"metrics_{split}.csv"
        new = not csv_path.exists()
        with csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *flat], extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **flat})
        for name, value in flat.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, step)
        self._tb.flush()
        return flat

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def format_metrics(flat: Mapping[str, float], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {flat[k]:.4g}" for k in keys if k in flat)
