"""What a table needs before its runs: the KD teacher stores of a table with `Table.teachers`.

Table IV distils from teachers that Table III trains (the demo grid: "demo" from "demo-teachers"):
per split, its teacher-logit store is precomputed from every finished run of the teacher table
at that split (each seed one teacher, named `<arch>-<row>.s<seed>`) plus any extra saved teachers
(converted PaSST checkpoints fine-tuned on that split: `--extra-teachers DIR` with
`DIR/split<N>/<model dir>`). Teachers must be trained on the student's split only (the DCASE2024
rule), hence one store per split.

A store is built once, when every teacher run at its split has finished or been skipped, so
it never holds a partial ensemble; delete it to rebuild (e.g. after adding teachers). It is
precomputed from the config of the table's first distilling run at that split (as
`python -m asc_jax.distill precompute --config <its spec> --set <its overrides>` would), so it
samples exactly the augmentation the students train with, and holds their training clips.
"""
from __future__ import annotations

from pathlib import Path

from asc_jax.experiments.runner import Grid, check, load_run_config
from asc_jax.experiments.tables import TABLES, Table

STORE_DIR = "stores/split{split}"  # under the table's directory; the KD rows' `store=` points here
SMOKE_STORE_VIEWS = 2  # instead of Table.store_views
STORE_SEED = 0


def store_dir(grid: Grid, table: Table, split: str) -> Path:
    return grid.table_dir(table) / STORE_DIR.format(split=split)


def extra_teachers(grid: Grid, split: str) -> list[Path]:
    """Saved model directories under `<extra_teachers>/split<N>/`."""
    if not grid.extra_teachers:
        return []
    root = Path(grid.extra_teachers) / f"split{split}"
    if not root.is_dir():
        raise FileNotFoundError(f"--extra-teachers {grid.extra_teachers}: no split{split}/ directory")
    return sorted(p for p in root.iterdir() if p.is_dir())


def teacher_stores(table: Table, grid: Grid, dry_run: bool = False) -> list[str]:
    """Builds `<table dir>/stores/split<N>` for every split of `table` (see the module doc).

    Returns:
      One message per split: the store built, or why it was not (exists, teachers unfinished...).
    """
    from asc_jax import distill
    teacher_runs = grid.plan(TABLES.get(table.teachers))
    messages = []
    students = {}  # split -> the config of the first run at that split that distils
    for run in grid.plan(table):
        if run.split not in students or not students[run.split].kd.store:
            students[run.split] = load_run_config(run)
    for split, student in students.items():
        out = store_dir(grid, table, split)
        if not student.kd.store:
            messages.append(f"split {split}: no teacher store needed: no run of table {table.name} distils")
            continue
        if out.exists():  # stores are written atomically: an existing one is complete
            messages.append(f"split {split}: teacher store {out} exists")
            continue
        states = [(run, check(run)[0].state) for run in teacher_runs if run.split == split]
        pending = [run for run, state in states if state not in ("cached", "skipped")]
        if pending:
            messages.append(f"split {split}: no teacher store yet: table {table.teachers} has "
                            f"{len(pending)} unfinished run(s) at this split (first: {pending[0].workdir})")
            continue
        pairs = ([(f"{run.row.key}.s{run.seed}", run.workdir) for run, state in states if state == "cached"]
                 + [(None, path) for path in extra_teachers(grid, split)])
        if not pairs:
            messages.append(f"split {split}: no teacher store: no finished teachers in table "
                            f"{table.teachers} and no --extra-teachers")
            continue
        if dry_run:
            messages.append(f"split {split}: would build {out} from {len(pairs)} teacher(s)")
            continue
        # The student's data section generates the tiny smoke dataset if it is not there yet.
        store = distill.precompute(
            out, config=student, teachers=pairs,
            n_views=SMOKE_STORE_VIEWS if grid.smoke else table.store_views[split], seed=STORE_SEED,
            progress=False)
        messages.append(f"split {split}: built {out} from {', '.join(store.teacher_names)}")
    return messages
