"""Results tables in the paper's layout: rows = systems, columns = splits.

Cells are "mean ± std" of the eval macro-class accuracy (in %) over the seeds that finished, with
the sample standard deviation (ddof = 1, as for a handful of seeds); a cell with fewer seeds than
planned says so ("(n=2)"), a single seed shows the mean alone, and a system not run at a split
(the demo grid's pruning rows outside split 100) shows "–". Params/MACs are those of the fused
deploy model (`complexity.json` "deploy_form" in each run's summary). A table over several splits
also gets a plot of accuracy vs split (`asc_jax.experiments.plot`), linked from results.md.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from asc_jax.experiments.runner import SUMMARY, Outcome, Run, read_summary
from asc_jax.experiments.tables import Row, Table

METRIC = "macro_accuracy"
PLOT = "accuracy_vs_split.png"  # written next to results.md for tables over several splits
COMPLEXITY_FORM = "deploy_form"
EMPTY = "–"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; nan for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclasses.dataclass(frozen=True)
class RowResult:
    row: Row
    accuracies: Mapping[str, tuple[float, ...]]  # split -> eval macro accuracy of each finished seed
    planned: Mapping[str, int]  # split -> planned seeds
    params: tuple[int, ...]  # distinct deploy-model parameter counts over the finished runs
    macs: tuple[int, ...]  # distinct deploy-model MACs
    skipped: str = ""  # reason, when every run of the row was skipped
    failed: int = 0  # runs that raised
    failed_example: str = ""  # workdir of one failed run (its error.txt has the traceback)


@dataclasses.dataclass(frozen=True)
class TableResults:
    table: Table
    splits: tuple[str, ...]
    seeds: tuple[int, ...]
    rows: tuple[RowResult, ...]

    def markdown(self) -> str:
        return to_markdown(self)

    def csv(self) -> str:
        return to_csv(self)

    def write(self, directory: Path) -> tuple[Path, ...]:
        """Writes results.md and results.csv into `directory`, and for a table over several
        splits the plot of accuracy vs split (`asc_jax.experiments.plot`); returns the paths."""
        from asc_jax.experiments.plot import plot_accuracy_vs_split  # plot imports this module
        directory.mkdir(parents=True, exist_ok=True)
        md, table_csv = directory / "results.md", directory / "results.csv"
        md.write_text(self.markdown())
        table_csv.write_text(self.csv())
        if len(self.splits) < 2:
            return md, table_csv
        return md, table_csv, plot_accuracy_vs_split(self, directory / PLOT)


def collect(table: Table, runs: Sequence[Run], outcomes: Sequence[Outcome] = ()) -> TableResults:
    """Reads every planned run's summary from its workdir.

    Args:
      table: the table the runs belong to.
      runs: the planned runs (their order fixes the column order).
      outcomes: what the runner did (skip reasons, failures); runs without one are read from disk.
    """
    by_workdir = {o.run.workdir: o for o in outcomes}
    splits = tuple(dict.fromkeys(r.split for r in runs))
    seeds = tuple(dict.fromkeys(r.seed for r in runs))
    rows = []
    for row in table.rows:
        mine = [r for r in runs if r.row.key == row.key]
        accuracies: dict[str, list[float]] = {s: [] for s in splits}
        planned = {s: sum(r.split == s for r in mine) for s in splits}
        params, macs, skips, failed = set(), set(), [], []
        for run in mine:
            outcome = by_workdir.get(run.workdir)
            if outcome is not None and outcome.state == "skipped":
                skips.append(outcome.reason)
                continue
            if outcome is not None and outcome.state == "failed":
                failed.append(run)
                continue
            try:
                summary = read_summary(run.workdir)
            except ValueError:
                summary = None  # a corrupt summary counts as missing; the runner reports it
            if summary is None:
                continue
            accuracy, form = final_result(summary, run.workdir)
            accuracies[run.split].append(accuracy)
            if form:
                params.add(int(form["params"]))
                macs.add(int(form["macs"]))
        rows.append(RowResult(
            row, {s: tuple(v) for s, v in accuracies.items()}, planned, tuple(sorted(params)),
            tuple(sorted(macs)), skipped=skips[0] if mine and len(skips) == len(mine) else "",
            failed=len(failed), failed_example=str(failed[0].workdir) if failed else ""))
    return TableResults(table, splits, seeds, tuple(rows))


def final_result(summary: Mapping[str, Any], workdir: Path) -> tuple[float, Mapping[str, Any] | None]:
    """(eval macro accuracy, deploy-form complexity or None) of a finished run: a training run's
    own summary, or the last phase's row of a pruning run (`asc_jax.train.progressive`)."""
    final = summary["phases"][-1] if summary.get("phases") else summary
    try:
        accuracy = final["eval"][METRIC] if "eval" in final else final[METRIC]
    except KeyError:
        raise KeyError(f"{Path(workdir) / SUMMARY} has no eval {METRIC}") from None
    return float(accuracy), final.get("complexity", {}).get(COMPLEXITY_FORM)


def format_cell(values: Sequence[float], planned: int) -> str:
    """"57.12 ± 0.43" (percent); the mean alone for one value; "(n=k)" when k < planned."""
    if not values:
        return EMPTY
    mean, std = mean_std(values)
    text = f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text + (f" (n={len(values)})" if len(values) < planned else "")


def _human(n: int) -> str:
    """126952 -> "127.0K", 29561088 -> "29.56M" (params and MACs)."""
    for scale, unit, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "K", 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return str(n)


def _span(values: tuple[int, ...]) -> str:
    if not values:
        return EMPTY
    return _human(values[0]) if len(values) == 1 else f"{_human(values[0])}–{_human(values[-1])}"


def to_markdown(results: TableResults) -> str:
    table = results.table
    head = ["System"] + (["Params", "MACs"] if table.complexity else []) + [f"{s}%" for s in results.splits]
    align = [":--"] + ["--:"] * (len(head) - 1)
    lines = [f"## {table.title}", "",
             f"Eval macro-class accuracy (%) per training split, mean ± std (ddof 1) over seeds "
             f"{', '.join(map(str, results.seeds))}"
             + ("; params/MACs of the fused deploy model" if table.complexity else "") + ".", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    notes = []
    for r in results.rows:
        cells = [r.row.label]
        if table.complexity:
            cells += [_span(r.params), _span(r.macs)]
        if r.skipped:
            cells += ["skipped"] * len(results.splits)
            notes.append(f"{r.row.label}: skipped: {r.skipped}")
        else:
            cells += [format_cell(r.accuracies[s], r.planned[s]) for s in results.splits]
        if r.failed:
            notes.append(f"{r.row.label}: {r.failed} run(s) failed (traceback in "
                         f"{r.failed_example}/error.txt)")
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if len(results.splits) > 1:
        lines += ["", f"![eval macro accuracy vs training split]({PLOT})"]
    return "\n".join(lines) + "\n"


def to_csv(results: TableResults) -> str:
    """One line per system: params, MACs, then mean/std/n of the macro accuracy (fraction, not
    %, unrounded) per split; `note` holds a skip reason or failure count."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["system", "key", "params", "macs"]
                    + [f"split{s}_{k}" for s in results.splits for k in ("mean", "std", "n")] + ["note"])
    for r in results.rows:
        stats = []
        for s in results.splits:
            mean, std = mean_std(r.accuracies[s])
            stats += ["" if math.isnan(mean) else repr(mean), "" if math.isnan(std) else repr(std),
                      len(r.accuracies[s])]
        note = f"skipped: {r.skipped}" if r.skipped else (f"{r.failed} failed" if r.failed else "")
        writer.writerow([r.row.label, r.row.key, "/".join(map(str, r.params)), "/".join(map(str, r.macs))]
                        + stats + [note])
    return out.getvalue()
