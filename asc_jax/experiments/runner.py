"""Plans and runs the grid of a table: rows x splits x seeds, one workdir per run, resumable.

A run is exactly what `python train.py --config <spec> --workdir <dir> --set ...` would do
(`Run.command()` prints that command). A finished run (its `summary.json` says finished) is never
trained again; an unfinished one resumes from its checkpoint, because `train_and_evaluate` resumes
automatically from the workdir. Rows whose requirements are not met (an unregistered model, a CNN
that cannot be fused into the deploy form the loop ends with, PaSST without its own frontend,
initial weights that are not there) are skipped with the reason, never approximated.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shlex
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from flax import nnx

from asc_jax.config import Config, load_config, override, to_dict
from asc_jax.experiments.tables import (
    DEFAULT_SEEDS, PAPER_SPLITS, SMOKE_MODEL_OPTIONS, SMOKE_OVERRIDES, SMOKE_SPLIT, Row, Table)
from asc_jax.registry import Registry
from asc_jax.train import check_resumable
from asc_jax.train import run as run_training

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SUMMARY = "summary.json"
ERROR = "error.txt"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a table: a row at one split and seed."""

    table: str
    row: Row
    split: str
    seed: int
    spec: str  # Config spec including the split.
    overrides: tuple[str, ...]  # Applied in order after loading the spec.
    workdir: Path

    def command(self) -> str:
        """The equivalent `train.py` command line."""
        args = ["python", "train.py", "--config", self.spec, "--workdir", str(self.workdir)]
        for assignment in self.overrides:
            args += ["--set", assignment]
        return shlex.join(args)


@dataclasses.dataclass(frozen=True)
class Grid:
    """Where and how a table's runs are planned (the CLI arguments)."""

    data: str  # Dataset root, passed as `data.root` (smoke mode generates the tiny set there).
    workdir: Path  # Experiments root: runs go to <workdir>/<table>/<row>/split<N>/seed<S>.
    # Seeds of every cell, for tables without fixed seeds (smoke mode keeps the first).
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    splits: tuple[str, ...] = PAPER_SPLITS  # For tables over splits (smoke mode: split 100 only).
    smoke: bool = False  # Tiny budgets on the synthetic set (asc_jax.experiments.tables).
    extra: tuple[str, ...] = ()  # `dotted.path=value` overrides applied last, to every run.
    extra_teachers: str = ""  # Directory of extra KD teachers per split: <dir>/split<N>/<model dirs>.

    def table_dir(self, table: Table | str) -> Path:
        return Path(self.workdir) / (table if isinstance(table, str) else table.name)

    def plan(self, table: Table) -> list[Run]:
        """The runs of `table`, row-major (row, split, seed), without touching any workdir."""
        splits = tuple(str(s) for s in (table.splits or self.splits))
        seeds = tuple(table.seeds or self.seeds)
        if self.smoke:
            splits, seeds = (SMOKE_SPLIT,), seeds[:1]
        runs = []
        for row in table.rows:
            for split in (s for s in splits if row.splits is None or s in row.splits):
                for seed in seeds:
                    spec = self._fill(table, split, seed, (row.smoke_spec or row.spec) if self.smoke else row.spec)
                    overrides = tuple(self._fill(table, split, seed, o)
                                      for o in row.overrides + tuple(row.split_overrides.get(split, ())))
                    if self.smoke:  # last: tiny budgets replace the row's own
                        overrides += _smoke_overrides(row, spec)
                    runs.append(Run(table.name, row, split, seed, _with_split(spec, split),
                                    overrides + (f"data.root={self.data}", f"seed={seed}") + self.extra,
                                    self.table_dir(table) / row.key / f"split{split}" / f"seed{seed}"))
        return runs

    def _fill(self, table: Table, split: str, seed: int, text: str) -> str:
        """Row specs and overrides may name per-run paths (the KD teacher store of the split, the
        model another row's run at the same split and seed trained)."""
        return (text.replace("{table_dir}", str(self.table_dir(table))).replace("{split}", split)
                .replace("{seed}", str(seed)))


def plan(table: Table, *, data: str | Path, workdir: str | Path, seeds: Sequence[int] = DEFAULT_SEEDS,
         splits: Sequence[str] = PAPER_SPLITS, smoke: bool = False, extra: Sequence[str] = ()) -> list[Run]:
    """`Grid(...).plan(table)`: the runs of `table` (see `Grid`)."""
    return Grid(str(data), Path(workdir), tuple(seeds), tuple(str(s) for s in splits), smoke,
                tuple(extra)).plan(table)


def _with_split(spec: str, split: str) -> str:
    path, _, variant = spec.partition(":")
    return f"{path}:{variant + ',' if variant else ''}split={split}"


def _smoke_overrides(row: Row, spec: str) -> tuple[str, ...]:
    overrides = SMOKE_OVERRIDES
    if row.smoke_model_options:
        model = _model_name(spec)
        overrides += tuple(f"model.options.{k}={v!r}" for k, v in SMOKE_MODEL_OPTIONS.get(model, {}).items())
    return overrides


@functools.lru_cache(maxsize=None)
def _model_name(spec: str) -> str | None:
    """The model a config builds, or None if the config cannot be loaded (the run then fails
    with the loading error, which `check` reports).

    Only the errors `load_config` raises for a config that cannot be loaded count (a missing
    file, no get_config or a wrong return, a bad variant); any other is a bug and propagates.
    """
    try:
        return load_config(_resolve_path(spec)).model.name
    except (OSError, AttributeError, TypeError, ValueError):
        return None


def _resolve_path(spec: str) -> str:
    """Config paths are written relative to the repo root; accept any working directory."""
    path, sep, variant = spec.partition(":")
    if not Path(path).is_file() and (REPO_ROOT / path).is_file():
        path = str(REPO_ROOT / path)
    return path + sep + variant


def load_run_config(run: Run) -> Config:
    config = load_config(_resolve_path(run.spec))
    for assignment in run.overrides:
        config = override(config, assignment)
    return config


# ----------------------------------------------------------------------------------------------
# Requirements: a run whose config fails one is skipped with the returned reason.
# ----------------------------------------------------------------------------------------------
REQUIREMENTS: Registry[Callable[[Config], str | None]] = Registry("experiment requirement")
# Checked for every run before the row's own requirements.
ALWAYS = ("model_registered", "deploy_form", "init_weights")


@REQUIREMENTS.register("model_registered")
def _model_registered(config: Config) -> str | None:
    from asc_jax.models import MODELS
    if config.model.name not in MODELS:
        return f"model {config.model.name!r} is not registered (asc_jax.models.MODELS has {MODELS.names()})"
    return None


@REQUIREMENTS.register("init_weights")
def _init_weights(config: Config) -> str | None:
    init = config.model.init_from
    if init and not (Path(init) / "model.json").is_file():
        return (f"initial weights {init} not found (model.init_from): either an earlier run of the grid "
                "writes them (the demo grid's dense width-64 models: rerun once that run has finished) "
                "or they are converted first (PaSST-PT: convert_weights.py --arch passt --torch-ckpt "
                f"FILE --out {init} --num-classes 10)")
    return None


@REQUIREMENTS.register("deploy_form")
def _deploy_form(config: Config) -> str | None:
    return _deploy_error(config.model.name, json.dumps(to_dict(config.model.options), sort_keys=True))


@functools.lru_cache(maxsize=None)
def _deploy_error(name: str, options_json: str) -> str | None:
    from asc_jax.config import ModelConfig
    from asc_jax.models import has_deploy_form
    if not has_deploy_form(name):
        return None  # deploys as trained (PaSST)
    model = ModelConfig(name=name, options=json.loads(options_json))
    try:  # abstract build: no parameters are materialised
        nnx.eval_shape(lambda: model.build(nnx.Rngs(0), deploy=True))
    except ValueError as e:
        return f"{e} (train_and_evaluate ends by fusing the model into its deploy form)"
    return None


@REQUIREMENTS.register("passt_frontend")
def _passt_frontend(config: Config) -> str | None:
    # PaSST was trained on its own log-mel (asc_jax.audio.passt_frontend: 128 Kaldi mels, hop
    # 320, preemphasis, (x + 4.5) / 5); trained on the student features it would not be the
    # paper's teacher, and AudioSet weights would not fit.
    if config.frontend != "passt":
        return (f"PaSST is trained on its own frontend: the row's config must set "
                f"frontend='passt' (it has {config.frontend!r})")
    return None


@REQUIREMENTS.register("kd_store")
def _kd_store(config: Config) -> str | None:
    if not config.kd.store:
        return None  # no distillation
    from asc_jax import distill
    try:
        store = distill.read_store(config.kd.store, check_finite=False)
        distill.resolve_teachers(config.kd.teachers, store.teacher_names)
    except (OSError, ValueError) as e:  # StoreError is a ValueError
        return (f"teacher store: {e} (a KD table builds its stores from its teacher table's finished "
                "runs, e.g. IV from III; PaSST teachers are converted weights, given with --extra-teachers)")
    return None


def unmet_requirement(row: Row, config: Config) -> str | None:
    """The first unmet requirement's reason, or None."""
    for name in row.requires + ALWAYS:  # the row's own first: its reason is the specific one
        reason = REQUIREMENTS.get(name)(config)
        if reason:
            return reason
    return None


# ----------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------
def read_summary(workdir: Path) -> dict[str, Any] | None:
    """The run's summary if it finished, else None."""
    path = Path(workdir) / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to rerun the run") from None
    return summary if summary.get("finished") is True else None


@dataclasses.dataclass(frozen=True)
class Outcome:
    run: Run
    state: str  # "cached", "trained", "unfinished", "skipped", "failed" (dry run: "planned").
    reason: str = ""  # Skip reason or error.
    seconds: float = 0.0


def check(run: Run) -> tuple[Outcome, Config | None]:
    """What executing `run` would do now, without training: (outcome, config to train or None)."""
    try:
        config = load_run_config(run)
    except Exception as e:  # noqa: BLE001 - any config error fails this run, not the grid
        return Outcome(run, "failed", f"config: {type(e).__name__}: {e}"), None
    try:
        # A finished run is cached only if it ran this config (the check train.py's resume makes).
        check_resumable(run.workdir, config)
        finished = read_summary(run.workdir) is not None
    except ValueError as e:  # a different config; an unreadable config.json / summary.json
        return Outcome(run, "failed", str(e)), None
    if finished:
        return Outcome(run, "cached"), None
    reason = unmet_requirement(run.row, config)
    if reason:
        return Outcome(run, "skipped", reason), None
    return Outcome(run, "planned"), config


def execute(runs: Iterable[Run], *, train_fn: Callable[[Config, Path], dict] = run_training,
            after_each: Callable[[list[Outcome]], None] | None = None) -> list[Outcome]:
    """Runs every run that is not finished or skipped, in order; one failure does not stop the
    grid (its traceback goes to `<workdir>/error.txt`).

    Args:
      runs: planned runs.
      train_fn: (config, workdir) -> summary; `asc_jax.train.run` (what train.py runs) unless testing.
      after_each: called with the outcomes so far after every run (e.g. to refresh the report).

    Returns:
      One outcome per run, in order.
    """
    runs = list(runs)
    outcomes: list[Outcome] = []
    for i, run in enumerate(runs, 1):
        outcome, config = check(run)
        label = f"[{i}/{len(runs)}] {run.table}/{run.row.key}/split{run.split}/seed{run.seed}"
        if config is not None:
            log.info("%s: training in %s", label, run.workdir)
            start = time.perf_counter()
            try:
                summary = train_fn(config, run.workdir)
            except Exception as e:  # noqa: BLE001 - recorded, the grid goes on
                run.workdir.mkdir(parents=True, exist_ok=True)
                (run.workdir / ERROR).write_text(traceback.format_exc())
                outcome = Outcome(run, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - start)
            else:
                (run.workdir / ERROR).unlink(missing_ok=True)
                state = "trained" if summary.get("finished") else "unfinished"
                outcome = Outcome(run, state, "", time.perf_counter() - start)
        took = f" after {outcome.seconds:.0f} s" if config is not None else ""
        log.info("%s: %s%s%s", label, outcome.state, took, f" ({outcome.reason})" if outcome.reason else "")
        outcomes.append(outcome)
        if after_each is not None:
            after_each(outcomes)
    return outcomes
