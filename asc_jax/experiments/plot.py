"""Accuracy vs training split, one line per system of a table (the figure next to results.md).

Each system's mean eval macro-class accuracy over its finished seeds is drawn at every split it
has results for, with the sample standard deviation as an error bar where at least two seeds
finished; a system run at one split only (the pruning rows of the demo grid) is a single point.
The split axis is logarithmic, as the splits are (5, 10, 25, 50, 100 %).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from asc_jax.data.tau import CLASSES
from asc_jax.experiments.report import TableResults, mean_std
_MARKERS = "osD^vP*Xh<>p"


def series(results: TableResults) -> list[tuple[str, list[float], list[float], list[float]]]:
    """(label, splits in %, mean %, std %) of every system with at least one result; std is nan
    where fewer than two seeds finished."""
    out = []
    for row in results.rows:
        xs, means, stds = [], [], []
        for split in results.splits:
            values = row.accuracies.get(split, ())
            if values:
                mean, std = mean_std(values)
                xs.append(float(split))
                means.append(100 * mean)
                stds.append(100 * std)
        if xs:
            out.append((row.row.label, xs, means, stds))
    return out


def plot_accuracy_vs_split(results: TableResults, path: Path) -> Path:
    """Draws `results` into the PNG `path` (see the module doc) and returns it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: headless, and no pyplot state shared between calls.
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lines = series(results)
    for i, (label, xs, means, stds) in enumerate(lines):
        # Nudge the systems apart along the log axis so that error bars do not hide each other.
        shift = 1.0 + 0.025 * (i - (len(lines) - 1) / 2)
        errors = [0.0 if math.isnan(s) else s for s in stds]
        ax.errorbar([x * shift for x in xs], means, yerr=errors, label=label, marker=_MARKERS[i % len(_MARKERS)],
                    capsize=3, linewidth=1.5, markersize=6)
    ax.axhline(100 / len(CLASSES), color="grey", linestyle=":", linewidth=1, label="chance")
    splits = [float(s) for s in results.splits]
    ax.set_xscale("log")
    ax.set_xticks(splits, [f"{s}%" for s in results.splits])
    ax.minorticks_off()
    ax.set_xlim(min(splits) / 1.3, max(splits) * 1.3)
    ax.set_xlabel("training split (share of the training set)")
    ax.set_ylabel("eval macro-class accuracy (%)")
    ax.set_title(textwrap.fill(results.table.title, 90), fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.legend(fontsize=8, loc="outside right upper",
               title=f"mean ± std, seeds {', '.join(map(str, results.seeds))}", title_fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
