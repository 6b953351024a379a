"""Progressive structured pruning as a sequence of ordinary training runs ("phases").

    python train.py --config configs/prune_tau.py:split=25,variant=progressive96 --workdir runs/p96

`config.prune` (a PruneConfig) turns a run into phases, each a plain `train_and_evaluate` in its
own sub-workdir:

  phase0_dense       train the wide model (config.model) for optim.epochs; when model.init_from
                     already holds a trained wide model it is not trained again (0 epochs: it is
                     only evaluated, fused and saved, so the table has its row);
  phase{r}_w{width}  load the previous phase's `model/` (training form), keep the most important
                     channels of every group (PruneConfig.method) down to the widths of round r,
                     slice them out (`prune.slice_model`: a genuinely narrower model), save it to
                     `init/`, then finetune it for prune.finetune_epochs with a fresh optimizer
                     on the round's own schedule (peak prune.finetune_lr after
                     prune.finetune_warmup_epochs, cosine to 0 at the round's last step; batch,
                     Adam and clipping settings of config.optim; model.options = the narrow
                     widths, model.init_from = init/; config.kd kept).

Finetuning the sliced model rather than a masked wide one is what makes this exact for
Rep-Mobile: GRN mixes all channels of a stream, so a masked model is not the sliced one.
The widths of every round are planned once, on the wide model (`prune.plan`: a target given as
reference-model overrides such as base_channels=32, or a sparsity; linear over the rounds), and
every later phase only narrows its predecessor to them.

Resume: a phase whose summary.json says finished is skipped; an unfinished one resumes by itself
(train_and_evaluate resumes from its workdir). The last phase's models are copied to
`workdir/model` and `workdir/deploy` (the result) and `workdir/summary.json` collects every
phase's eval accuracy, widths, params and MACs (training and fused deploy form).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
from flax import nnx

from asc_jax import prune
from asc_jax.checkpoint import load_model, save_model
from asc_jax.config import Config
from asc_jax.models import build_model
from asc_jax.train.loop import check_resumable, record_config, train_and_evaluate

log = logging.getLogger(__name__)

DENSE_PHASE = "phase0_dense"


@dataclasses.dataclass(frozen=True)
class Phase:
    index: int  # 0 for the dense phase, r for pruning round r.
    name: str  # Sub-workdir, e.g. "phase1_w64".
    width: int  # Width of the main residual stream after this phase (the label in `name`).
    epochs: int  # Training (phase 0) or finetuning epochs.
    # Target width of every channel group after the round; None for the dense phase.
    widths: Mapping[str, int] | None = None


def _abstract_model(config: Config) -> nnx.Module:
    return nnx.eval_shape(lambda: config.model.build(nnx.Rngs(0)))


def _label_group(groups: tuple[prune.ChannelGroup, ...]) -> prune.ChannelGroup:
    """The prunable group read by the most kernels: the main residual stream (for Rep-Mobile the
    stem output, whose width is base_channels). First in execution order on ties.

    A kernel reads a group where the group holds one of its axes that is not a producing
    (output) axis: the in-rows of every block that reads the stream.
    """
    def readers(g: prune.ChannelGroup) -> int:
        return sum(path[-1] == "kernel" and (path, axis) not in g.producers for path, axis in g.members)

    return max((g for g in groups if g.prunable), key=readers)


def plan_phases(config: Config) -> tuple[Phase, ...]:
    """The phases of `config` (config.prune must be set), planned abstractly on the wide model.

    Raises:
      ValueError: if config.prune is not set or its target prunes nothing (e.g. model.options
        fix explicit widths that the target's base_channels does not override).
    """
    cfg = config.prune
    if cfg is None:
        raise ValueError("config.prune is not set: nothing to prune (use train_and_evaluate)")
    options = dict(config.model.options)
    schedule = prune.plan(cfg, _abstract_model(config), build_reference=lambda o: build_model(
        config.model.name, rngs=nnx.Rngs(0), **{**options, **o}))
    if all(schedule.widths[-1][g.name] == g.size for g in schedule.groups):
        raise ValueError(f"the pruning target {dict(cfg.target) or cfg.sparsity} leaves every channel "
                         f"group of {config.model.name} {options} at its width: nothing to prune")
    label = _label_group(schedule.groups)
    phases = [Phase(0, DENSE_PHASE, label.size, 0 if config.model.init_from else config.optim.epochs)]
    for r, widths in enumerate(schedule.widths, start=1):
        phases.append(Phase(r, f"phase{r}_w{widths[label.name]}", widths[label.name],
                            cfg.finetune_epochs, dict(widths)))
    return tuple(phases)


def narrow_options(options: Mapping[str, Any], config: Any, narrow: Any) -> dict[str, Any]:
    """Model options that build `narrow` (a config) from a model built with `options` (giving
    `config`): the fields slicing changed (explicit widths) override the original options."""
    changed = {f.name: getattr(narrow, f.name) for f in dataclasses.fields(narrow)
               if getattr(narrow, f.name) != getattr(config, f.name)}
    return {**dict(options), **changed}


def prune_round(model: nnx.Module, name: str, options: Mapping[str, Any], widths: Mapping[str, int],
                method: str = "l1", input_shape: tuple[int, ...] = prune.DEFAULT_INPUT_SHAPE
                ) -> tuple[nnx.Module, dict[str, Any]]:
    """Slices `model` (training form, built as `name` with `options`) down to `widths`.

    Args:
      model: the model to prune; its channel groups are traced afresh (names are stable across
        widths, so widths planned on the wide model apply to any narrower predecessor).
      name, options: how `model` was built (registered model name and its options).
      widths: target width per channel-group name (at most the current widths).
      method: channel importance (prune.IMPORTANCE).
    Returns:
      (narrow model carrying the kept weights, the options that build it).
    """
    groups = prune.channel_groups(model, input_shape)
    masks = prune.compute_masks(model, groups, widths, method)

    def build(narrow_config):
        return build_model(name, rngs=nnx.Rngs(0), **narrow_options(options, model.config, narrow_config))

    sliced = prune.slice_model(model, groups, masks, build, input_shape)
    new_options = narrow_options(options, model.config, sliced.config)
    if sliced.model.config != sliced.config:
        raise ValueError(f"options {new_options} do not rebuild the sliced config {sliced.config}")
    return sliced.model, new_options


def _read_summary(workdir: Path) -> dict | None:
    path = workdir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _prepare_init(previous: Path, init_dir: Path, phase: Phase, cfg: prune.PruneConfig) -> dict[str, Any]:
    """Prunes the previous phase's model into `init_dir` and returns the options that build it.

    Redone when an unfinished phase resumes: pruning a finished model is deterministic (L1 or BN
    scores, stable ordering), and rewriting beats trusting an init an interruption may have cut.
    """
    model, spec = load_model(previous / "model")
    name, options = spec["model"]["name"], spec["model"]["options"]
    narrow, new_options = prune_round(model, name, options, phase.widths, cfg.method, cfg.input_shape)
    save_model(init_dir, narrow, name=name, options=new_options, pruned_from=str(previous / "model"),
               widths=dict(phase.widths), method=cfg.method,
               **{k: spec[k] for k in ("frontend", "mel", "class_names") if k in spec})
    log.info("%s: pruned %s to %s", phase.name, previous.name, new_options)
    # As JSON gives them back, so that a resumed phase sees the config it started with.
    return json.loads((init_dir / "model.json").read_text())["model"]["options"]


def phase_config(config: Config, phase: Phase, options: Mapping[str, Any] | None = None,
                 init_from: str | Path | None = None) -> Config:
    """The ordinary training config of one phase (no `prune`; its own epochs, model and init).

    The dense phase trains on config.optim's recipe. A finetuning phase (index > 0) starts a
    fresh optimizer on the round's recipe from config.prune: warmup_cosine with peak
    finetune_lr after finetune_warmup_epochs, so that the round decays to 0 at its last step
    (the next round prunes a settled model, and the last phase's model is the result). Only the
    schedule is the round's own: batch size, Adam betas, weight decay and clipping stay.
    """
    model, optim = config.model, dataclasses.replace(config.optim, epochs=phase.epochs)
    if phase.index > 0:
        model = dataclasses.replace(model, options=dict(options), init_from=str(init_from))
        optim = dataclasses.replace(optim, lr=config.prune.finetune_lr, lr_schedule="warmup_cosine",
                                    warmup_epochs=config.prune.finetune_warmup_epochs)
    return dataclasses.replace(config, prune=None, model=model, optim=optim)


def _row(phase: Phase, summary: Mapping[str, Any]) -> dict[str, Any]:
    forms = summary["complexity"]
    return {"phase": phase.index, "name": phase.name, "width": phase.width, "epochs": phase.epochs,
            "widths": None if phase.widths is None else dict(phase.widths),
            "macro_accuracy": summary["eval"]["macro_accuracy"], "accuracy": summary["eval"]["accuracy"],
            "deploy_macro_accuracy": summary["deploy_eval"]["macro_accuracy"],
            "complexity": {form: {"params": forms[form]["params"], "macs": forms[form]["macs"]}
                           for form in ("train_form", "deploy_form")}}


def summary_table(rows: list[Mapping[str, Any]]) -> str:
    """One line per phase: width, epochs, eval macro accuracy, params and MACs of both forms."""
    head = (f"{'phase':<14}{'width':>6}{'epochs':>7}{'macro acc':>10}{'params':>11}{'MACs':>13}"
            f"{'deploy params':>15}{'deploy MACs':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        train, deploy = r["complexity"]["train_form"], r["complexity"]["deploy_form"]
        lines.append(f"{r['name']:<14}{r['width']:>6}{r['epochs']:>7}{r['macro_accuracy']:>10.4f}"
                     f"{train['params']:>11,}{train['macs']:>13,}{deploy['params']:>15,}{deploy['macs']:>13,}")
    return "\n".join(lines)


def train_and_prune(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Runs every phase of `config` in `workdir` (resuming / skipping finished ones).

    Returns:
      {"finished": True, "phases": [one row per phase], "result": deploy dir, ...}, also written
      to workdir/summary.json; or {"finished": False, "phase": name, ...} when a phase stopped
      early (config.max_steps): rerun the same command to continue.
    """
    phases = plan_phases(config)  # first: a config that cannot be planned leaves no trace
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Finished phases are skipped without looking at their configs, so the whole run's config
    # must match the one it started with.
    check_resumable(workdir, config)
    record_config(workdir, config)
    rows = []
    for phase in phases:
        phase_dir = workdir / phase.name
        summary = _read_summary(phase_dir)
        if summary is not None and summary.get("finished"):
            log.info("%s finished earlier: skipped", phase.name)
        else:
            if phase.index == 0:
                phase_cfg = phase_config(config, phase)
            else:
                init_dir = phase_dir / "init"
                options = _prepare_init(workdir / phases[phase.index - 1].name, init_dir, phase, config.prune)
                phase_cfg = phase_config(config, phase, options, init_dir)
            summary = train_and_evaluate(phase_cfg, phase_dir)
            if not summary.get("finished"):
                return {"finished": False, "phase": phase.name, "step": summary["step"],
                        "total_steps": summary["total_steps"]}
        rows.append(_row(phase, summary))

    result = {"finished": True, "result": str(workdir / "deploy"), "phases": rows}
    if jax.process_index() == 0:  # one writer when several hosts share the workdir
        last = workdir / phases[-1].name
        for form in ("model", "deploy"):
            shutil.rmtree(workdir / form, ignore_errors=True)
            shutil.copytree(last / form, workdir / form)
        (workdir / "summary.json").write_text(json.dumps(result, indent=2))
        print(summary_table(rows))
    return result
