"""The paper's experiment grids as data: a registry of tables, each a list of rows.

A row is a system of the table: a display label, a config spec (what `train.py --config` takes,
without the split, which the runner appends as `split=N`) and `--set` overrides; both may contain
`{split}`, `{seed}` and `{table_dir}` (`<workdir>/<table>`), filled in per run. The runner
crosses rows with splits and seeds; nothing here runs anything.

Smoke mode (`--smoke`) swaps in tiny budgets so the whole grid runs on the embedded synthetic set
in CI: `SMOKE_OVERRIDES` for every run, minimal model widths from `SMOKE_MODEL_OPTIONS` where the
row allows them (looked up by the model the row's config builds), and a row's `smoke_spec`
where budgets are variant arguments of its config (pruning: epochs per finetuning round).

Besides the paper's tables (on TAU22, configs/*_tau.py) there is the demo grid (`GRIDS["demo"]`):
the structure of Tables II-V at small budgets on the embedded synthetic set (configs/demo.py),
with the same optimizer steps at every split.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from asc_jax.registry import Registry

PAPER_SPLITS: tuple[str, ...] = ("5", "10", "25", "50", "100")
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
PAPER_CONFIG = "configs/rep_mobile_tau.py"
PASST_CONFIG = "configs/passt_tau.py"

# A generated set of 120 training clips (2 per class and seen device, one clip per recording so
# that split100 keeps them all) and 90 test clips over all nine devices: a few steps per epoch.
SMOKE_DATASET: Mapping[str, int] = {
    "n_train_per_class_device": 2, "n_test_per_class_device": 1, "clips_per_recording": 1,
    "train_locations_per_class": 2, "test_locations_per_class": 1}
SMOKE_SPLIT = "100"  # the only split whose tiny version still fills a batch
SMOKE_OVERRIDES: tuple[str, ...] = (
    "data.generate=True",
    f"data.synthetic={json.dumps(dict(SMOKE_DATASET))}",  # a dict literal, quoted for the shell
    "optim.epochs=1",
    "optim.batch_size=32",  # 120 clips -> 3 steps
    "eval_every_epochs=1",
    "log_every_steps=1",
    "keep_best=1",
)
# Narrowest sensible settings per model: compile time grows with the layer count and run time
# with the width, and a smoke run only has to prove the grid runs end to end.
SMOKE_MODEL_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "rep_mobile": {"base_channels": 8, "n_blocks": (2, 1, 1)},
    "cp_mobile": {"base_channels": 8, "n_blocks": (2, 1, 1)},
    "dcase2024_baseline": {"base_channels": 8, "n_blocks": (2, 1, 1)},
    "cp_resnet": {"base_channels": 8},
    "bc_resnet": {"base_channels": 8},
    "tf_sepnet": {"base_channels": 16},
    "mobilenet": {"width_mult": 0.1},
    "ecapa_tdnn": {"channels": 32, "scale": 4, "embed_dim": 16, "se_bottleneck": 8,
                   "attention_bottleneck": 8},
    "resnet34": {"base_channels": 4, "n_blocks": (1, 1, 1, 1), "embed_dim": 16},
    "passt": {"embed_dim": 32, "depth": 1, "num_heads": 2},
}


@dataclasses.dataclass(frozen=True)
class Row:
    key: str  # Directory name of the row's runs (stable, filesystem-safe).
    label: str  # The system's name in the results table.
    spec: str  # Config spec without the split, e.g. "configs/rep_mobile_tau.py:model=cp_mobile".
    overrides: tuple[str, ...] = ()  # `--set` overrides (dotted.path=value).
    smoke_spec: str = ""  # Config spec used instead of `spec` in smoke mode ("" = spec).
    requires: tuple[str, ...] = ()  # Names in `asc_jax.experiments.runner.REQUIREMENTS`.
    splits: tuple[str, ...] | None = None  # Only these of the table's splits (None = all of them).
    # Overrides for one split only, after `overrides`: budgets that depend on the split's size.
    split_overrides: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Apply SMOKE_MODEL_OPTIONS in smoke mode (not where pruning targets fix the widths).
    smoke_model_options: bool = True


@dataclasses.dataclass(frozen=True)
class Table:
    name: str  # "I", "II", ...: the CLI argument and the results directory.
    title: str  # Heading of results.md.
    rows: tuple[Row, ...]
    splits: tuple[str, ...] | None = None  # Fixed splits; None = the CLI's --splits.
    seeds: tuple[int, ...] | None = None  # Fixed seeds; None = the CLI's --seeds.
    complexity: bool = True  # Params/MACs columns (where rows differ in size).
    # The table whose finished runs are this table's KD teachers: its per-split teacher stores
    # are built from them before its runs (prepare.py). "" = no teacher stores.
    teachers: str = ""
    # Augmented views per clip in those stores, per split (default: configs/kd_tau.py's 8).
    store_views: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {s: 8 for s in PAPER_SPLITS})

    def __post_init__(self):
        keys = [r.key for r in self.rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {self.name}: duplicate row keys {keys}")
        for row in self.rows:  # a row's own splits must be ones the table can run
            unknown = set(row.splits or ()) | set(row.split_overrides)
            unknown -= set(self.splits or PAPER_SPLITS)
            if unknown:
                raise ValueError(f"table {self.name}, row {row.key}: splits {sorted(unknown)} are not "
                                 f"among the table's {self.splits or PAPER_SPLITS}")


TABLES: Registry[Table] = Registry("experiment table")


def register(table: Table) -> Table:
    TABLES.register(table.name)(table)
    return table


def _model_row(key: str, label: str, model: str, *overrides: str, requires: tuple[str, ...] = ()) -> Row:
    return Row(key, label, f"{PAPER_CONFIG}:model={model}", tuple(overrides), requires=requires)


register(Table(
    name="I",
    title="Table I: low-complexity models on the full training set (split 100)",
    splits=("100",),
    rows=(
        _model_row("rep_mobile", "Rep-Mobile", "rep_mobile"),
        _model_row("cp_mobile", "CP-Mobile", "cp_mobile"),
        _model_row("dcase2024_baseline", "DCASE2024 baseline", "dcase2024_baseline"),
        _model_row("cp_resnet", "CP-ResNet", "cp_resnet"),
        _model_row("bc_resnet", "BC-ResNet-2", "bc_resnet"),
        _model_row("tf_sepnet", "TF-SepNet-64", "tf_sepnet"),
        _model_row("mobilenet", "MobileNetV3 (mn06)", "mobilenet"),
        _model_row("ecapa_tdnn", "ECAPA-TDNN", "ecapa_tdnn"),
        _model_row("resnet34", "ResNet34", "resnet34"),
    ),
))

register(Table(
    name="II",
    title="Table II: Rep-Mobile depthwise-branch ablation",
    complexity=False,  # every variant fuses into the same 3x3 deploy model
    rows=(
        Row("all", "Rep-Mobile (3x3 + 1x1 + 3x1 + 1x3)", f"{PAPER_CONFIG}:branches=3x3+1x1+3x1+1x3"),
        Row("no_3x3", "w/o 3x3", f"{PAPER_CONFIG}:branches=1x1+3x1+1x3"),
        Row("no_1x1", "w/o 1x1", f"{PAPER_CONFIG}:branches=3x3+3x1+1x3"),
        Row("no_3x1_1x3", "w/o 3x1 + 1x3", f"{PAPER_CONFIG}:branches=3x3+1x1"),
    ),
))

register(Table(
    name="III",
    title="Table III: teacher models",
    rows=(
        # Fine-tuned here, on PaSST's own frontend (configs/passt_tau.py states the recipe):
        # from a random initialisation, and from converted AudioSet weights.
        Row("passt", "PaSST", f"{PASST_CONFIG}:init=scratch", requires=("passt_frontend",)),
        # A smoke grid has no AudioSet weights: its PaSST-PT run starts from scratch too.
        Row("passt_pt", "PaSST-PT", f"{PASST_CONFIG}:init=audioset", requires=("passt_frontend",),
            smoke_spec=f"{PASST_CONFIG}:init=scratch"),
        _model_row("cp_resnet_wide", "CP-ResNet (base 64)", "cp_resnet", "model.options.base_channels=64"),
        _model_row("bc_resnet_wide", "BC-ResNet-5 (base 40)", "bc_resnet", "model.options.base_channels=40"),
        _model_row("tf_sepnet_wide", "TF-SepNet-128", "tf_sepnet", "model.options.base_channels=128"),
        _model_row("mobilenet_mn10", "MobileNetV3 (mn10)", "mobilenet", "model.options.width_mult=1.0"),
        _model_row("cp_mobile_wide", "CP-Mobile (base 128)", "cp_mobile", "model.options.base_channels=128"),
        _model_row("ecapa_tdnn", "ECAPA-TDNN (C=512)", "ecapa_tdnn"),
        _model_row("resnet34", "ResNet34 (m=32)", "resnet34"),
    ),
))

register(Table(
    name="IV",
    title="Table IV: knowledge distillation into Rep-Mobile",
    complexity=False,  # one student size throughout
    # Per split, the teacher-logit store comes from table III's finished teachers at that split.
    teachers="III",
    rows=tuple(
        Row(teachers, label,
            f"configs/kd_tau.py:teachers={teachers},store={{table_dir}}/stores/split{{split}}",
            requires=("kd_store",))
        for teachers, label in (("none", "no KD"), ("cnn", "KD: CNN teachers"),
                                ("transformer", "KD: transformer teachers (PaSST)"),
                                ("all", "KD: all teachers"))),
))

register(Table(
    name="V",
    title="Table V: direct training vs. progressive pruning",
    rows=tuple(
        Row(variant, label, f"configs/prune_tau.py:variant={variant}",
            # One epoch for the dense phase and for each finetuning round.
            smoke_spec=f"configs/prune_tau.py:variant={variant},epochs=1,finetune_epochs=1",
            smoke_model_options=False)  # pruning targets fix the widths
        for variant, label in (("direct32", "direct, width 32"), ("direct64", "direct, width 64"),
                               ("direct96", "direct, width 96"), ("single64to32", "pruned 64 -> 32"),
                               ("single96to32", "pruned 96 -> 32"),
                               ("progressive96", "progressively pruned 96 -> 64 -> 32"))),
))

# ----------------------------------------------------------------------------------------------
# The demo grid: the structure of Tables II-V on the embedded synthetic set (configs/demo.py),
# at budgets a CPU can afford. Every run takes about the same number of optimizer steps at every
# split (a split-5 run passes over its clips many times, a split-100 run a few), so that the
# splits differ in data, not in compute.
# Budgets: configs/demo.py's 276 steps of 64 clips per student run, the budget the generator's
# realistic profile was tuned at (README, "The embedded dataset"); at a third of it (92 steps) the
# no-KD baseline sat near 0.2 (chance 0.1), too close to chance to compare methods.
# Cost, from single runs measured on the project's 2-core VM (2026-12-01, other jobs running; the
# VM ran configs/demo.py in 10-12 min, where the issue that asked for the grid measured 5 min):
# a Rep-Mobile student 10-12 min, a base-64 teacher ~40 min (CP-Mobile: 38 min). With CP-Mobile
# students ~0.7x and the pruning rows scaled by their steps and widths: teachers ~4 h, students
# ~4.5 h, pruning rows ~2.3 h, stores ~0.3 h, i.e. ~11 h for 3 seeds here (~5 h at the issue's
# machine speed), against the one hour: the grid is GPU work (README, "Demo grid").
# Measured on the Intel VM of 2026-12-02 (the grid's teacher table, run alone): a base-64
# teacher 13-16 min, so teachers ~1.4 h, students ~1.5 h, pruning ~0.9 h: ~4 h for 3 seeds.
DEMO_SPLITS: tuple[str, ...] = ("5", "25", "100")
DEMO_CONFIG = "configs/demo.py"
DEMO_BATCH = 64  # configs/demo.py's batch size
# Training clips per split of the set configs/demo.py generates (nested splits of whole 5-clip
# recordings; tests check these against the generator).
DEMO_TRAIN_CLIPS: Mapping[str, int] = {"5": 150, "10": 300, "25": 750, "50": 1500, "100": 3000}
DEMO_STEPS = 276  # Optimizer steps of a student run, at every split (6 epochs of split 100).
DEMO_WARMUP_STEPS = 46  # Linear warmup: one epoch of split 100, as configs/demo.py.
DEMO_TEACHER_STEPS = 2 * DEMO_STEPS  # KD teachers train longer than their students...
DEMO_TEACHER_WIDTH = 64  # ...and wider (base channels; the students have 32).
# Pruning (split 100 only), in epochs of split 100: the wide model's training (its own row,
# "direct, width 64"; both pruned rows start from that run's model, so that they compare pruning
# schedules from the same dense model and it is trained once), then finetuning after pruning,
# shared equally by the rounds (progressive: 2, so an even number); direct training at width 32
# gets their sum.
DEMO_PRUNE_WIDTH = 64  # Pruned to the students' 32 in one round, or via 48 in two.
DEMO_DENSE_EPOCHS = 6
DEMO_FINETUNE_EPOCHS = 2


def demo_steps_per_epoch(split: str) -> int:
    return DEMO_TRAIN_CLIPS[split] // DEMO_BATCH  # training drops the last partial batch


def demo_epochs(steps: int, split: str) -> int:
    """The whole number of epochs of `split` closest to `steps` optimizer steps (at least 1)."""
    return max(1, round(steps / demo_steps_per_epoch(split)))


def equal_steps(steps: int, splits: tuple[str, ...] = DEMO_SPLITS) -> dict[str, tuple[str, ...]]:
    """Per split, the `--set` overrides of a configs/demo.py run of about `steps` optimizer steps
    with DEMO_WARMUP_STEPS of warmup, evaluated only at the end (the tables report the final
    model, and every evaluation of the 900 test clips costs CPU time)."""
    budgets = {}
    for split in splits:
        epochs = demo_epochs(steps, split)
        warmup = round(DEMO_WARMUP_STEPS / demo_steps_per_epoch(split))
        budgets[split] = (f"optim.epochs={epochs}", f"optim.warmup_epochs={warmup}",
                          f"eval_every_epochs={epochs}")
    return budgets


register(Table(
    name="demo-teachers",
    title=f"Demo teachers: base {DEMO_TEACHER_WIDTH}, {DEMO_TEACHER_STEPS} steps, per split "
          "(the KD teachers of the demo grid)",
    splits=DEMO_SPLITS,
    seeds=(100,),  # one teacher per architecture and split, seeded apart from the students
    rows=tuple(
        Row(f"{model}_w{DEMO_TEACHER_WIDTH}", f"{label} (base {DEMO_TEACHER_WIDTH})",
            f"{DEMO_CONFIG}:model={model}", (f"model.options.base_channels={DEMO_TEACHER_WIDTH}",),
            split_overrides=equal_steps(DEMO_TEACHER_STEPS))
        for model, label in (("cp_mobile", "CP-Mobile"), ("rep_mobile", "Rep-Mobile"))),
))

_DEMO_STUDENT = equal_steps(DEMO_STEPS)
_DEMO_PRUNE = f"configs/prune_demo.py:width={DEMO_PRUNE_WIDTH},epochs={DEMO_DENSE_EPOCHS}"
_DEMO_PRUNE_SMOKE = f"configs/prune_demo.py:width={DEMO_PRUNE_WIDTH},epochs=1,finetune_epochs=1"
_DEMO_DENSE = f"direct{DEMO_PRUNE_WIDTH}"
# Phase 0 of a pruning run with model.init_from is only evaluated (asc_jax.train.progressive).
_DEMO_FROM_DENSE = (f"model.init_from={{table_dir}}/{_DEMO_DENSE}/split{{split}}/seed{{seed}}/model",)

register(Table(
    name="demo",
    title=f"Demo grid on the embedded synthetic set: architecture (Table II), KD (Table IV) and "
          f"pruning (Table V, split 100); {DEMO_STEPS} steps of {DEMO_BATCH} clips per student run",
    splits=DEMO_SPLITS,
    teachers="demo-teachers",
    # One stored view per epoch: the KD student meets each augmentation of a clip about once,
    # as the students without KD do with their fresh ones, at every split.
    store_views={split: demo_epochs(DEMO_STEPS, split) for split in DEMO_SPLITS},
    rows=(
        Row("rep_mobile", "Rep-Mobile", DEMO_CONFIG, split_overrides=_DEMO_STUDENT),
        Row("cp_mobile", "CP-Mobile (no extra branches)", f"{DEMO_CONFIG}:model=cp_mobile",
            split_overrides=_DEMO_STUDENT),
        Row("rep_mobile_kd", "Rep-Mobile + KD (CP-Mobile and Rep-Mobile teachers)",
            "configs/kd_demo.py:teachers=all,store={table_dir}/stores/split{split}",
            split_overrides=_DEMO_STUDENT, requires=("kd_store",)),
        Row("direct32", f"direct, width 32 ({DEMO_DENSE_EPOCHS + DEMO_FINETUNE_EPOCHS} epochs)",
            f"{DEMO_CONFIG}:epochs={DEMO_DENSE_EPOCHS + DEMO_FINETUNE_EPOCHS}", splits=("100",)),
        # Listed before the pruned rows, whose runs start from its models.
        Row(_DEMO_DENSE, f"direct, width {DEMO_PRUNE_WIDTH} ({DEMO_DENSE_EPOCHS} epochs; unpruned)",
            f"{DEMO_CONFIG}:epochs={DEMO_DENSE_EPOCHS}",
            (f"model.options.base_channels={DEMO_PRUNE_WIDTH}", f"eval_every_epochs={DEMO_DENSE_EPOCHS}"),
            splits=("100",), smoke_model_options=False),
        Row(f"single{DEMO_PRUNE_WIDTH}to32", f"pruned {DEMO_PRUNE_WIDTH} -> 32",
            f"{_DEMO_PRUNE},variant=single,finetune_epochs={DEMO_FINETUNE_EPOCHS}", _DEMO_FROM_DENSE,
            splits=("100",), smoke_spec=f"{_DEMO_PRUNE_SMOKE},variant=single", smoke_model_options=False),
        Row(f"progressive{DEMO_PRUNE_WIDTH}", f"progressively pruned {DEMO_PRUNE_WIDTH} -> 48 -> 32",
            f"{_DEMO_PRUNE},variant=progressive,finetune_epochs={DEMO_FINETUNE_EPOCHS // 2}",
            _DEMO_FROM_DENSE, splits=("100",), smoke_spec=f"{_DEMO_PRUNE_SMOKE},variant=progressive",
            smoke_model_options=False),
    ),
))

# Names the CLI accepts besides single tables: several tables run in order.
PAPER_TABLES: tuple[str, ...] = ("I", "II", "III", "IV", "V")
GRIDS: Mapping[str, tuple[str, ...]] = {
    "all": PAPER_TABLES,
    "demo": ("demo-teachers", "demo"),  # teachers first: the demo table's KD stores need them
}
