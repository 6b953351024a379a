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
    """Writes every logged row to `metrics.jsonl`, one CSV per split and TensorBoard.

    A resumed run repeats the steps after its checkpoint, so opening the writer for a run that
    resumes from `start_step` first drops the rows of later steps that the interrupted run had
    logged (and tells TensorBoard to purge them): every step appears once after any number of
    resumes. In a multi-host run only process 0 writes (`enabled`); the others only format.
    """

    def __init__(self, workdir: str | Path, *, start_step: int = 0, enabled: bool = True):
        self.dir = Path(workdir)
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self.dir.mkdir(parents=True, exist_ok=True)
        _drop_rows_after(self.dir / "metrics.jsonl", start_step, lambda line: json.loads(line)["step"])
        for csv_path in self.dir.glob("metrics_*.csv"):
            _drop_rows_after(csv_path, start_step, lambda line: int(line.split(",", 1)[0]), header=True)
        self._jsonl = (self.dir / "metrics.jsonl").open("a")
        self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step + 1)

    def write(self, split: str, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        flat = flatten_metrics(metrics)
        if not self.enabled:
            return flat
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
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _drop_rows_after(path: Path, step: int, step_of, header: bool = False) -> None:
    """Rewrites `path` without the rows logged after `step` (atomically: a kill mid-way keeps
    either the old or the new file). A torn last line, from a kill mid-write, is dropped too."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    head, rows = (lines[:1], lines[1:]) if header else ([], lines)

    def keep(line: str) -> bool:
        try:
            return line.endswith("\n") and step_of(line) <= step
        except (ValueError, KeyError):
            return False

    kept = [line for line in rows if keep(line)]
    if len(kept) != len(rows):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(head + kept))
        tmp.replace(path)


def format_metrics(flat: Mapping[str, float], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {flat[k]:.4g}" for k in keys if k in flat)
