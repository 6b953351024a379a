"""Evaluation of a device set as DCASE2025 reports it, next to its base model alone.

Every clip of the split goes to the member its device routes to (`device_set.predict_routed`);
the base model alone is evaluated on the same clips for comparison. Reported (`evaluate_set`):

* the usual `evaluate.compute_metrics` of the routed predictions (overall, class-wise, macro,
  device-wise, confusion matrix) and of the base alone;
* DCASE2025's split of the ranking metric: macro-class accuracy (the mean of the class-wise
  accuracies, `evaluate`'s DCASE metric) over the clips of the known devices (those the set has
  a model for) and over the clips of all other devices (unknown: routed to the base). The
  challenge's results table gives "Overall", "Known devices" and "Unknown devices" accuracy;
  reading the group columns as the macro-class accuracy within each group is this code's choice
  (the same metric as "Overall", restricted to the group's clips);
* per known device: the accuracy of the base and of the device's model on that device's clips,
  the gain that stage 2 bought.

The base alone is run on the known devices' clips only: every other clip is routed to it, so its
routed logits are the base's.

`evaluate_and_record` also writes the reports into the set (`eval/<split>.json`, and the tables
and plots of `evaluate.save_report` for the routed predictions) and the summary into the
manifest's meta["eval"], which the DCASE submission writer reads.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from asc_jax import evaluate, inference
from asc_jax.data import sources
from asc_jax.device_set import BASE, DeviceModelSet, load_members, predict_routed, update_meta

EVAL_DIR = "eval"


def dcase2025_metrics(routed_logits: np.ndarray, base_logits: np.ndarray, labels: Sequence[int],
                      devices: Sequence[str], known: Sequence[str],
                      class_names: Sequence[str]) -> dict[str, Any]:
    """The set's metrics from per-clip logits (pure: no models, no audio).

    Args:
      routed_logits: (N, C) logits of each clip from the member its device routes to.
      base_logits: (N, C) logits of the base model for the same clips.
      labels: (N,) class indices; devices: (N,) device ids.
      known: the devices the set has a model of its own for.
    Returns:
      {"metrics", "base_metrics": compute_metrics dicts, "known_devices", "unknown_devices"
       (those present), "known_device_macro_accuracy", "unknown_device_macro_accuracy" (None for
       a group without clips), the same two for the base alone ("base_known_device_macro_accuracy",
       "base_unknown_device_macro_accuracy"), "per_device": {known device: {"n", "base",
       "device_model" (accuracy on its clips), "gain"}}}.
    """
    labels, devices = np.asarray(labels), np.asarray(devices)
    metrics = evaluate.compute_metrics(routed_logits, labels, devices, class_names)
    base_metrics = evaluate.compute_metrics(base_logits, labels, devices, class_names)
    unknown = sorted(set(devices.tolist()) - set(known))

    def macro(logits: np.ndarray, group: Sequence[str]) -> float | None:
        return evaluate.group_macro_accuracy(logits, labels, devices, group, class_names)

    per_device = {}
    for device in known:
        n = int((devices == device).sum())
        if n:
            ours, theirs = metrics["device_accuracy"][device], base_metrics["device_accuracy"][device]
            per_device[device] = {"n": n, "base": theirs, "device_model": ours, "gain": ours - theirs}
    return {
        "metrics": metrics,
        "base_metrics": base_metrics,
        "known_devices": [d for d in known if (devices == d).any()],
        "unknown_devices": unknown,
        "known_device_macro_accuracy": macro(routed_logits, known),
        "unknown_device_macro_accuracy": macro(routed_logits, unknown),
        "base_known_device_macro_accuracy": macro(base_logits, known),
        "base_unknown_device_macro_accuracy": macro(base_logits, unknown),
        "per_device": per_device,
    }


def evaluate_set(device_set: DeviceModelSet, data_root: str | Path, split: str = "test", *,
                 batch_size: int = 64, on_error: str = "raise") -> dict[str, Any]:
    """Routed and base-alone predictions over a split, and their metrics (`dcase2025_metrics`).

    Args:
      device_set: the set (`device_set.read_device_set`).
      data_root: TAU-layout dataset root.
      split: the split evaluated (the development-test split "test" by default).
      on_error: bad clips: "raise", or "skip" (left out and reported, `sources.load_split_source`).
    Returns:
      `dcase2025_metrics` plus "split", "n_clips" and "routing" ({member: clips sent to it}).
    """
    loaded = load_members(device_set)  # they agree on the audio they take
    frontend = loaded[BASE].frontend
    # Uncached: the TAU test split is ~4 GB of float32 audio; what is read twice is re-decoded.
    opened = sources.load_split_source(data_root, split, sr=frontend.sample_rate, resampler=frontend.resampler,
                                       cache=False, on_error=on_error)
    clips = opened.clips
    devices = [c.device for c in clips]
    routed = predict_routed(device_set, opened.source, devices, batch_size=batch_size, loaded=loaded)
    # Clips routed to the base hold its logits already: the base runs again on the others only.
    base_logits = routed.logits.copy()
    rows = np.flatnonzero(np.asarray(routed.members) != BASE)
    if rows.size:
        base_logits[rows] = inference.predict(loaded[BASE].fn, opened.source.subset(rows), batch_size)
    result = dcase2025_metrics(routed.logits, base_logits, [c.label for c in clips], devices,
                               sorted(device_set.devices), device_set.class_names)
    return {"split": str(split), "n_clips": len(clips), "routing": dict(routed.counts), **result}


def _pct(x: float | None) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.3f}"


def summary_table(result: Mapping[str, Any]) -> str:
    """The set against its base: DCASE2025's three numbers, then device-wise accuracy with the
    member each device is routed to, then the class-wise table of the routed predictions."""
    m, b = result["metrics"], result["base_metrics"]
    known = set(result["known_devices"])
    lines = [f"split {result['split']}: {result['n_clips']} clips; known devices "
             f"{', '.join(result['known_devices']) or '-'}; unknown {', '.join(result['unknown_devices']) or '-'}",
             f"{'macro-class accuracy':<22}{'overall':>8}{'known':>8}{'unknown':>8}",
             f"{'device set':<22}{_pct(m['macro_accuracy']):>8}{_pct(result['known_device_macro_accuracy']):>8}"
             f"{_pct(result['unknown_device_macro_accuracy']):>8}",
             f"{'base model alone':<22}{_pct(b['macro_accuracy']):>8}"
             f"{_pct(result['base_known_device_macro_accuracy']):>8}"
             f"{_pct(result['base_unknown_device_macro_accuracy']):>8}", ""]
    devs = list(m["device_accuracy"])
    lines.append("device   " + "  ".join(f"{d:>6}" for d in devs))
    lines.append("model    " + "  ".join(f"{d if d in known else BASE:>6}" for d in devs))
    lines.append("base     " + "  ".join(_pct(b["device_accuracy"][d]) for d in devs))
    lines.append("set      " + "  ".join(_pct(m["device_accuracy"][d]) for d in devs))
    lines += ["", "routed predictions:", evaluate.summary_table(m)]
    return "\n".join(lines)


def evaluate_and_record(device_set: DeviceModelSet, data_root: str | Path, split: str = "test", *,
                        batch_size: int = 64, on_error: str = "raise") -> dict[str, Any]:
    """`evaluate_set`, with its reports written into the set and its summary into the manifest.

    Writes `<set>/eval/<split>.json` (the whole result, the base's metrics included) and
    `<split>_routed.*` (`evaluate.save_report` of the routed predictions: JSON, confusion matrix,
    per-device plot), and sets meta["eval"].
    """
    result = evaluate_set(device_set, data_root, split, batch_size=batch_size, on_error=on_error)
    out = device_set.directory / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}.json").write_text(json.dumps(result, indent=2))
    evaluate.save_report(result["metrics"], out, prefix=f"{split}_routed")
    update_meta(device_set.directory, {"eval": result})
    print(summary_table(result))
    return result
