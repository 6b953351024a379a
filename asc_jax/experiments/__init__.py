"""The paper's experiment grids (Tables I-V): planned from data, run resumably, reported.

    python -m asc_jax.experiments II --data /path/to/tau22 [--seeds 0,1,2] [--splits 5,10,25,50,100]
    python -m asc_jax.experiments all --data data/smoke --smoke          # the whole grid, tiny
    python -m asc_jax.experiments V --data /path/to/tau22 --dry-run      # print the plan
    python -m asc_jax.experiments demo --data data/synthetic_tau --workdir runs/demo_grid

The last is the demo grid: the structure of Tables II-V (Rep-Mobile vs CP-Mobile, KD from wider
teachers it trains first, direct vs single-step vs progressive pruning) on the embedded synthetic
set, generated on first use, at splits 5/25/100 with the same optimizer steps at every split,
over seeds 0, 1, 2 (`asc_jax.experiments.tables`, "The demo grid", holds its budgets). It writes
runs/demo_grid/demo/results.{md,csv} and accuracy_vs_split.png. Cost, estimated (not measured):
45 runs, 54 training phases and 3 teacher stores; ~5 h on an idle 2-core CPU (276 steps of 64
clips per student run, configs/demo.py's budget, at ~1.1 s a step for Rep-Mobile, plus ~30 s of
compilation per phase), more on a shared one; on one GPU the steps take minutes and compilation
most of the time.

Tables are registered in `asc_jax.experiments.tables.TABLES`, grids of several in `GRIDS`;
results land in `<workdir>/<table>/results.{md,csv}` (+ `accuracy_vs_split.png` over splits).
"""
from asc_jax.experiments.cli import main
from asc_jax.experiments.report import TableResults, collect, format_cell, mean_std
from asc_jax.experiments.runner import (REQUIREMENTS, Grid, Outcome, Run, check, execute, plan,
                                        read_summary)
from asc_jax.experiments.tables import TABLES, Row, Table

__all__ = ["main", "TableResults", "collect", "format_cell", "mean_std", "REQUIREMENTS",
           "Grid", "Outcome", "Run", "check", "execute", "plan", "read_summary", "TABLES", "Row", "Table"]
