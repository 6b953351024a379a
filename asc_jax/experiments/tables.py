"""The paper's experiment grids as data: a registry of tables, each a list of rows.

A row is a system of the table: a display label, a config spec (what `train.py --config` takes,
without the split, which the runner appends as `split=N`) and `--set` overrides; both may contain
`{split}` and `{table_dir}` (`<workdir>/<table>`), filled in per run. The runner crosses rows
with splits and seeds; nothing here runs anything.

Smoke mode (`--smoke`) swaps in tiny budgets so the whole grid runs on the embedded synthetic set
in CI: `SMOKE_OVERRIDES` for every run, minimal model widths from `SMOKE_MODEL_OPTIONS` where the
table allows them (looked up by the model the row's config builds), and a row's `smoke_spec`
where budgets are variant arguments of its config (pruning: epochs per finetuning round).
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


@dataclasses.dataclass(frozen=True)
class Table:
    name: str  # "I", "II", ...: the CLI argument and the results directory.
    title: str  # Heading of results.md.
    rows: tuple[Row, ...]
    splits: tuple[str, ...] | None = None  # Fixed splits; None = the CLI's --splits.
    complexity: bool = True  # Params/MACs columns (where rows differ in size).
    smoke_model_options: bool = True  # Apply SMOKE_MODEL_OPTIONS in smoke mode.
    teacher_stores: bool = False  # Build its per-split KD teacher stores before the runs (prepare.py).

    def __post_init__(self):
        keys = [r.key for r in self.rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {self.name}: duplicate row keys {keys}")


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
    teacher_stores=True,
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
    smoke_model_options=False,  # pruning targets fix the widths
    rows=tuple(
        Row(variant, label, f"configs/prune_tau.py:variant={variant}",
            # One epoch for the dense phase and for each finetuning round.
            smoke_spec=f"configs/prune_tau.py:variant={variant},epochs=1,finetune_epochs=1")
        for variant, label in (("direct32", "direct, width 32"), ("direct64", "direct, width 64"),
                               ("direct96", "direct, width 96"), ("single64to32", "pruned 64 -> 32"),
                               ("single96to32", "pruned 96 -> 32"),
                               ("progressive96", "progressively pruned 96 -> 64 -> 32"))),
))
