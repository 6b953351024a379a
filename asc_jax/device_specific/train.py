"""Stage 2 of DCASE2025 two-stage training: one fine-tune of the stage-1 model per recording device.

Every device's run is an ordinary `train_and_evaluate` in `<workdir>/<device>/`, from a config
made by `device_config`: the stage-2 recipe of the config file (configs/device_tau.py), the
model of the stage-1 run (its name and options, from its model.json: a pruned, sliced model keeps
its widths), initialised from the stage-1 training form (`model.init_from`), and the training
split restricted to the device's clips (`data.devices`). The eval split stays whole, so each
device's eval/final.json holds every device's accuracy, its own among them.

Resume: a device whose summary.json says finished is skipped (after its config.json is checked
against the config it would get now: a different --base, recipe or split is refused, naming the
fields), an unfinished one resumes by itself. Afterwards the set is assembled:
`<workdir>/set` = the stage-1 deploy model as the base plus each device's deploy model
(`asc_jax.device_set.write_device_set`), with provenance in the manifest's meta, and evaluated
(`evaluation.evaluate_set`) unless asked not to.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from asc_jax.checkpoint import model_form, read_spec
from asc_jax.config import Config, to_dict
from asc_jax.data import sources, tau
from asc_jax.device_set import BASE, UNKNOWN, write_device_set
from asc_jax.device_specific.evaluation import evaluate_and_record
from asc_jax.train.loop import check_resumable, train_and_evaluate

log = logging.getLogger(__name__)

SET_DIR = "set"  # the assembled device set, under the stage-2 workdir
# Backend-dependent model options: the stage-2 run picks its own (`models.with_default_lowering`),
# as a resumed run may; they change how a layer computes, not its weights.
_BACKEND_OPTIONS = ("conv_lowering",)


def base_training_form(base: str | Path) -> Path:
    """The saved training form of a stage-1 model: a train.py workdir's `model/`, or that
    directory itself.

    Raises:
      FileNotFoundError: naming `base`, if neither holds a model.json.
      ValueError: a fused deploy model or an int8 one (fine-tuning starts from the training form).
    """
    base = Path(base).absolute()
    for candidate in (base / "model", base):
        if (candidate / "model.json").is_file():
            spec = read_spec(candidate)
            if spec["model"].get("deploy") or model_form(spec) != "float":
                raise ValueError(f"{candidate} is a {model_form(spec)} deploy model; stage 2 fine-tunes the "
                                 "float training form: pass the stage-1 train.py workdir (its model/)")
            return candidate
    raise FileNotFoundError(f"{base}: no model.json there nor under model/ (expected the stage-1 train.py "
                            "workdir)")


def _base_config(base: str | Path) -> dict[str, Any] | None:
    """The stage-1 run's config.json (a workdir's, or the one above a model/ directory), if any."""
    base = Path(base).absolute()
    for candidate in (base / "config.json", base.parent / "config.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def device_config(config: Config, base: str | Path, device: str) -> Config:
    """The stage-2 config of one device: `config`'s recipe, the stage-1 model (name and options
    from its model.json) initialised from its training form, and the training split restricted to
    `device`'s clips.

    Raises:
      FileNotFoundError, ValueError: `base` holds no float training form (`base_training_form`).
      ValueError: a reserved device id, a `config` that already names a base or devices (this
        function sets them), or a stage-1 run trained on another split than `config`'s (DCASE2025
        allows one split, 25 %, for both stages).
    """
    if device in (BASE, UNKNOWN) or not device:
        raise ValueError(f"device id {device!r} is reserved: unknown devices use the base model")
    if config.model.init_from or config.data.devices:
        raise ValueError(f"the stage-2 config already sets model.init_from={config.model.init_from!r} / "
                         f"data.devices={config.data.devices}; leave both to the base and device given here")
    init = base_training_form(base)
    stored = _base_config(base)
    base_split = None if stored is None else str(stored.get("data", {}).get("train_split"))
    if base_split is not None and base_split != str(config.data.train_split):
        raise ValueError(f"stage 1 ({base}) was trained on split {base_split}, stage 2 would train on split "
                         f"{config.data.train_split}; use the same split for both stages (DCASE2025: 25)")
    spec = read_spec(init)["model"]
    options = {k: v for k, v in spec["options"].items() if k not in _BACKEND_OPTIONS}
    model = dataclasses.replace(config.model, name=spec["name"], options=options, init_from=str(init))
    return dataclasses.replace(config, model=model, data=dataclasses.replace(config.data, devices=(device,)))


def device_variant(config: Config, device: str | None, base: str | None, *, config_name: str) -> Config:
    """What a stage-2 config file returns for its `device=` and `base=` variants: one device's run
    (`device_config`) when both are given, the recipe as it is (for `train_devices`, which sets
    them per device) when neither is.

    Raises:
      ValueError: naming `config_name`, when only one of them is given.
    """
    if (device is None) != (base is None):
        raise ValueError(f"{config_name}: variants device= and base= go together (one device's run), or "
                         "neither (python -m asc_jax.device_specific train sets them per device)")
    return config if device is None else device_config(config, str(base), str(device))


def _finished_summary(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("finished") else None


def _train_clip_counts(config: Config, devices: Sequence[str]) -> dict[str, int]:
    """Clips per device in the training split (metadata only: the runs check the audio).

    Raises:
      ValueError: naming the devices without a clip there (a typo, or an unseen device), before
        any device is trained (a run would refuse it only when its turn came).
    """
    root = sources.dataset_root(config.data.root, generate=config.data.generate,
                                synthetic_params=config.data.synthetic)
    clips = tau.load_split(root, config.data.train_split, verify="none")
    counts = {d: sum(c.device == d for c in clips) for d in devices}
    missing = [d for d, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"no clip of device {', '.join(map(repr, missing))} in training split "
                         f"{config.data.train_split!r} of {root} (its devices: "
                         f"{', '.join(sorted({c.device for c in clips}))})")
    return counts


def train_devices(config: Config, base: str | Path, workdir: str | Path,
                  devices: Sequence[str] = tau.SEEN_DEVICES, *, evaluate: bool = True,
                  batch_size: int = 64) -> dict[str, Any]:
    """Fine-tunes the stage-1 model `base` for every device (resuming / skipping finished ones)
    and assembles the set.

    Args:
      config: the stage-2 recipe (configs/device_tau.py without device/base variants).
      base: the stage-1 train.py workdir.
      workdir: stage-2 workdir: one sub-workdir per device, the set in `set/`.
      devices: the devices to fine-tune for (each must have clips in the training split).
      evaluate: evaluate the assembled set on config.data.eval_split (`evaluation.evaluate_set`)
        and record the result in its manifest's meta["eval"].
      batch_size: clips per forward pass of that evaluation.
    Returns:
      {"finished": True, "set": directory, "devices": {device: summary row}, "eval": ...}; or
      {"finished": False, "device": ..., "step", "total_steps"} when config.max_steps stopped a
      device's run: rerun the same command to continue.
    """
    devices = list(dict.fromkeys(devices))
    if not devices:
        raise ValueError("no devices to fine-tune for")
    workdir = Path(workdir).absolute()
    base = Path(base).absolute()
    configs = {d: device_config(config, base, d) for d in devices}
    for device, cfg in configs.items():  # every refusal before any training
        check_resumable(workdir / device, cfg)
    counts = _train_clip_counts(config, devices)
    summaries = {}
    for device, cfg in configs.items():
        run_dir = workdir / device
        summary = _finished_summary(run_dir)
        if summary is not None:
            log.info("device %s finished earlier (%s): skipped", device, run_dir)
        else:
            log.info("device %s: fine-tuning %s in %s", device, cfg.model.init_from, run_dir)
            summary = train_and_evaluate(cfg, run_dir)
            if not summary.get("finished"):
                return {"finished": False, "device": device, "step": summary["step"],
                        "total_steps": summary["total_steps"]}
        summaries[device] = summary

    rows = {d: {"workdir": str(workdir / d), "train_clips": counts[d],
                "eval_macro_accuracy": s["deploy_eval"]["macro_accuracy"],
                "eval_own_device_accuracy": s["deploy_eval"]["device_accuracy"].get(d)}
            for d, s in summaries.items()}
    meta = {
        "task": "DCASE2025 Task 1: one model per known device, the base for any other",
        "train_split": str(config.data.train_split),
        # The general model's training config (augmentations, KD, pruning), which describes the
        # system (the DCASE meta.yaml writer reads it); each device's own is under stage2.
        "config": _base_config(base),
        "stage1": {"workdir": str(base), "model": str(base_training_form(base))},
        "stage2": {"workdir": str(workdir), "recipe": to_dict(config),
                   "devices": {d: {**rows[d], "config": to_dict(configs[d])} for d in devices}},
    }
    class_names = read_spec(base_training_form(base)).get("class_names", list(tau.CLASSES))
    device_set = write_device_set(workdir / SET_DIR, base, {d: workdir / d for d in devices},
                                  class_names=class_names, meta=meta, overwrite=True)
    result = {"finished": True, "set": str(device_set.directory), "devices": rows}
    if evaluate:
        result["eval"] = evaluate_and_record(device_set, config.data.root, config.data.eval_split,
                                             batch_size=batch_size, on_error=config.data.on_error)
    return result
