"""The paper's experiment grids (Tables I-V): planned from data, run resumably, reported.

    python -m asc_jax.experiments II --data /path/to/tau22 [--seeds 0,1,2] [--splits 5,10,25,50,100]
    python -m asc_jax.experiments all --data data/smoke --smoke          # the whole grid, tiny
    python -m asc_jax.experiments V --data /path/to/tau22 --dry-run      # print the plan

Tables are registered in `asc_jax.experiments.tables.TABLES`; results land in
`<workdir>/<table>/results.{md,csv}`.
"""
from asc_jax.experiments.cli import main
from asc_jax.experiments.report import TableResults, collect, format_cell, mean_std
from asc_jax.experiments.runner import (REQUIREMENTS, Grid, Outcome, Run, check, execute, plan,
                                        read_summary)
from asc_jax.experiments.tables import TABLES, Row, Table

__all__ = ["main", "TableResults", "collect", "format_cell", "mean_std", "REQUIREMENTS",
           "Grid", "Outcome", "Run", "check", "execute", "plan", "read_summary", "TABLES", "Row", "Table"]
