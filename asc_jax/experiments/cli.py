"""Command line: `python -m asc_jax.experiments <table> --data DIR [options]`.

Runs (or, with --dry-run, prints) every run of a table: rows x splits x seeds, each the equivalent
of one `train.py` command with its own workdir. Rerunning the same command skips finished runs,
resumes unfinished ones and rewrites `<workdir>/<table>/results.{md,csv}` (and, for a table over
several splits, the plot `accuracy_vs_split.png`), which are also refreshed after every run.
A grid name (`all`, `demo`) runs several tables in order. Exit status 1 if any run failed (the
others still run).
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Sequence

from asc_jax import setup_compilation_cache, setup_logging
from asc_jax.experiments.report import collect
from asc_jax.experiments.prepare import teacher_stores
from asc_jax.experiments.runner import Grid, Outcome, check, execute
from asc_jax.experiments.tables import DEFAULT_SEEDS, GRIDS, PAPER_SPLITS, TABLES, Table

DEFAULT_WORKDIR = "runs/experiments"
DEFAULT_SMOKE_WORKDIR = "runs/experiments_smoke"  # smoke configs differ, so never share workdirs
_ROMAN = (("X", 10), ("IX", 9), ("V", 5), ("IV", 4), ("I", 1))


def _roman(n: int) -> str:
    out = ""
    for symbol, value in _ROMAN:
        count, n = divmod(n, value)
        out += symbol * count
    return out


def resolve_tables(name: str) -> list[Table]:
    """"II", "ii", "2" -> [Table II]; a grid ("all": the paper's tables in numeric order, "demo":
    the demo teachers, then the demo table) -> its tables in order; any other table by name."""
    if name.lower() in GRIDS:
        return [TABLES.get(n) for n in GRIDS[name.lower()]]
    if name in TABLES:
        return [TABLES.get(name)]
    key = _roman(int(name)) if name.isdigit() else name.upper()
    return [TABLES.get(key)]


def table_names() -> list[str]:
    """Registered tables, roman numerals in numeric order (plain sorting puts IX before V)."""
    return sorted(TABLES.names(), key=lambda n: (_roman_value(n) is None, _roman_value(n) or 0, n))


def _roman_value(name: str) -> int | None:
    value = dict(s for s in _ROMAN if len(s[0]) == 1)
    if not name or any(c not in value for c in name):
        return None
    digits = [value[c] for c in name]
    return sum(-d if d < nxt else d for d, nxt in zip(digits, digits[1:] + [0]))


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _split_list(text: str) -> tuple[str, ...]:
    splits = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [s for s in splits if s not in PAPER_SPLITS]
    if unknown or not splits:
        raise argparse.ArgumentTypeError(f"splits must be among {', '.join(PAPER_SPLITS)}; got {text!r}")
    return splits


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m asc_jax.experiments",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help=f"table to run: {', '.join(table_names())}, 1-5, or a grid of "
                                      f"tables: {', '.join(GRIDS)}")
    parser.add_argument("--data", required=True,
                        help="dataset root (TAU layout); with --smoke the tiny synthetic set is "
                             "generated here")
    parser.add_argument("--workdir", default=None,
                        help=f"experiments root (default {DEFAULT_WORKDIR}, "
                             f"{DEFAULT_SMOKE_WORKDIR} with --smoke)")
    parser.add_argument("--seeds", type=_int_list, default=DEFAULT_SEEDS,
                        help="comma-separated seeds (tables without fixed seeds)")
    parser.add_argument("--splits", type=_split_list, default=PAPER_SPLITS,
                        help="comma-separated training splits (tables without fixed splits)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budgets on a generated synthetic set: first seed, split 100, 1 epoch")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run (applied last), e.g. optim.epochs=10")
    parser.add_argument("--extra-teachers", default="", metavar="DIR",
                        help="KD teachers besides table III's, per split: DIR/split<N>/<saved model dir> "
                             "(e.g. converted PaSST checkpoints fine-tuned on that split)")
    args = parser.parse_args(argv)
    if not args.seeds:
        parser.error("--seeds is empty")
    try:
        args.tables = resolve_tables(args.table)
    except (KeyError, ValueError) as e:
        parser.error(str(e))
    args.workdir = Path(args.workdir or (DEFAULT_SMOKE_WORKDIR if args.smoke else DEFAULT_WORKDIR))
    return args


def _counts(outcomes: Sequence[Outcome]) -> str:
    counts = collections.Counter(o.state for o in outcomes)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def dry_run(runs) -> list[Outcome]:
    """Prints one line per run: what would happen, and the equivalent train.py command."""
    outcomes = []
    for run in runs:
        outcome, _ = check(run)
        state = outcome.state
        if state == "planned":
            state = "resume" if (run.workdir / "checkpoints").exists() else "train"
        print(f"{state:8} {run.command()}" + (f"\n         # {outcome.reason}" if outcome.reason else ""))
        outcomes.append(outcome)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (1 if a run failed)."""
    args = parse_args(argv)
    setup_logging()
    setup_compilation_cache()
    grid = Grid(args.data, args.workdir, args.seeds, args.splits, args.smoke, tuple(args.set),
                args.extra_teachers)
    status = 0
    for table in args.tables:
        runs = grid.plan(table)
        if table.teachers:
            for message in teacher_stores(table, grid, args.dry_run):
                print(f"# Table {table.name}: teacher_stores: {message}")
        if args.dry_run:
            print(f"# Table {table.name}: {len(runs)} runs")
            print(f"# Table {table.name}: {_counts(dry_run(runs))}")
            continue
        out_dir = grid.table_dir(table)

        def refresh(outcomes, table=table, runs=runs, out_dir=out_dir):
            collect(table, runs, outcomes).write(out_dir)

        outcomes = execute(runs, after_each=refresh)
        results = collect(table, runs, outcomes)
        written = results.write(out_dir)
        print(results.markdown())
        print(f"Table {table.name}: {_counts(outcomes)}; wrote {', '.join(map(str, written))}")
        if any(o.state == "failed" for o in outcomes):
            status = 1
    return status
