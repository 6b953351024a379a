"""The `<label>.meta.yaml` of a DCASE2025 Task 1 submission: its fields, filled from the run.

The keys follow the organisers' DCASE2025 Task 1 meta template (as participants' published
meta files reproduce it; the template itself was not available offline): `submission` (label,
name, abbreviation, authors), `system` (inference_code, source_code, `description` with
input_sampling_rate, acoustic_features, data_augmentation, machine_learning_method,
external_data_usage, complexity_management, pipeline, framework, device_information,
num_models_at_inference, model_weight_sharing; `complexity` with total_model_size (bytes),
total_parameters, macs; `external_datasets`), and `results.development_dataset` with
`device_specific` and `general` blocks of overall / class_wise / device_wise accuracy (percent)
and logloss. Two keys are added: `system.description.training_data` (the split trained on; the
challenge requires the 25% split) and `system.complexity.precision` (what total_model_size was
counted at).

Where each value comes from (`build_meta`), in this order of precedence:

* measured, always from the run: the label; `system.complexity` (the largest member's values in
  the complexity JSON: `asc_jax.dcase2025.check_complexity`); num_models_at_inference; the input
  sampling rate (the frontend's); the development-set results, where the run recorded them:
  - a device set: `device_specific` from its manifest's meta["eval"]["metrics"] (an
    `evaluate.compute_metrics` dict, written by the device-specific evaluation), `general` from
    meta["eval"]["base_metrics"] (the same for the base model alone on all devices), else the
    base member's model.json "eval" (overall accuracy only);
  - a single model: `general` from its train.py workdir's summary.json ("deploy_eval", else
    "eval"), else its model.json "eval"; `device_specific` is the same (every device uses it);
* declared, from `--meta-template` (a meta.yaml in the same layout: authors, names, the
  description in your words): every value there that is not a placeholder wins over what is
  derived;
* derived from the run where the template says nothing: the description fields, from the model
  names, frontend and form of the members and, where found, the run's training config
  (config.json of the single model's workdir, or the set's meta["config"]): augmentations,
  distillation (kd.store), pruning, pretrained init (model.init_from), the training split;
* placeholders: strings starting with "TODO", where nothing is known (author names, URLs,
  external data when the config is not at hand). The validator lists each as a warning.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from asc_jax import device_set as ds
from asc_jax.checkpoint import read_spec
from asc_jax.submission import yaml_lite

PLACEHOLDER = "TODO"
CNN_MODELS = ("rep_mobile", "cp_mobile", "dcase2024_baseline", "cp_resnet", "bc_resnet", "tf_sepnet",
              "mobilenet", "resnet34", "ecapa_tdnn")
TRANSFORMER_MODELS = ("passt",)
AUGMENTATION_TAGS = {"roll": "time rolling", "freq_mask": "frequency masking", "mixstyle": "freq-mixstyle",
                     "time_mask": "time masking", "dir": "dir augmentation"}
FEATURE_TAGS = {"logmel": "log-mel energies", "dcase2024": "log-mel energies", "cpjku": "log-mel energies",
                "passt": "log-mel energies"}
REQUIRED_SPLIT = "25"  # DCASE2025 Task 1 trains on the DCASE2024 25% subset


def todo(what: str) -> str:
    return f"{PLACEHOLDER}: {what}"


def is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PLACEHOLDER)


def _results_placeholder() -> dict[str, Any]:
    return {"overall": {"logloss": None, "accuracy": todo("macro-average class-wise accuracy (percent)")},
            "class_wise": todo("accuracy per class"), "device_wise": todo("accuracy per device")}


def default_meta() -> dict[str, Any]:
    """The template with placeholders where the run cannot know the value."""
    return {
        "submission": {
            "label": todo("Lastname_Inst_task1_N"),
            "name": todo("system name for the results tables"),
            "abbreviation": todo("short name, at most 10 characters"),
            "authors": [{
                "lastname": todo("last name"), "firstname": todo("first name"),
                "email": todo("contact email"), "corresponding": True,
                "affiliation": {"abbreviation": todo("institute abbreviation"),
                                "institute": todo("institute"), "department": todo("department"),
                                "location": todo("city, country")},
            }],
        },
        "system": {
            "inference_code": todo("URL of the inference code"),
            "source_code": todo("URL of the full source code (optional: !!null)"),
            "description": {
                "input_sampling_rate": todo("e.g. 32kHz"),
                "acoustic_features": todo("e.g. log-mel energies"),
                "data_augmentation": todo("e.g. freq-mixstyle, time rolling, frequency masking"),
                "machine_learning_method": todo("e.g. CNN"),
                "external_data_usage": todo("e.g. pre-trained model, or !!null"),
                "complexity_management": todo("e.g. knowledge distillation, pruning, weight quantization"),
                "pipeline": todo("training stages"),
                "framework": "jax/flax",
                "device_information": todo("how device ids are used at inference"),
                "num_models_at_inference": todo("1 + number of device-specific models"),
                "model_weight_sharing": todo("fully shared, partially shared or fully device-specific"),
                "training_data": todo("development-set split trained on (DCASE2025: 25%)"),
            },
            "complexity": {"total_model_size": todo("bytes"), "total_parameters": todo("count"),
                           "macs": todo("MACs (torchinfo)"), "precision": todo("fp32, fp16 or int8")},
            "external_datasets": [{"name": todo("dataset or pre-trained model"), "url": todo("URL"),
                                   "total_audio_length": None}],
        },
        "results": {"development_dataset": {"device_specific": _results_placeholder(),
                                            "general": _results_placeholder()}},
    }


# Guidance written above the keys (the template's instructions, in short).
COMMENTS = {
    "submission": "Submission information",
    "submission.label": "Lastname of the corresponding author, institute abbreviation, task, index 1-4",
    "submission.abbreviation": "At most 10 characters",
    "submission.authors": "Authors in order; exactly one is marked corresponding",
    "system": "System information (general tags; !!null where a field does not apply)",
    "system.description": "Written from the run where it could be derived; edit freely",
    "system.complexity": "The most complex device-specific model (measured: asc_jax.dcase2025.check_complexity);\n"
                         "total_model_size = parameters x bytes per parameter at `precision`",
    "system.external_datasets": "External datasets and pre-trained models used (name, url, total_audio_length)",
    "results": "Development-set test split; accuracies in percent; overall accuracy = mean of class-wise accuracies",
}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values (mappings merged key by key; anything else replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def placeholders(meta: Any, path: str = "") -> list[str]:
    """Dotted paths (list items as [i]) of every placeholder value."""
    if isinstance(meta, Mapping):
        return [p for k, v in meta.items() for p in placeholders(v, f"{path}.{k}" if path else str(k))]
    if isinstance(meta, list):
        return [p for i, v in enumerate(meta) for p in placeholders(v, f"{path}[{i}]")]
    return [path] if is_placeholder(meta) else []


def results_block(metrics: Mapping[str, Any] | None, class_names: Sequence[str]) -> dict[str, Any] | None:
    """A results block (percent, 2 decimals) from a `compute_metrics` dict, or from a model.json
    "eval" entry with only overall numbers; None without metrics."""
    if not metrics or "macro_accuracy" not in metrics:
        return None

    def pct(x: Any) -> float | None:
        return None if x is None or x != x else round(100.0 * float(x), 2)

    block: dict[str, Any] = {"overall": {"logloss": metrics.get("logloss"), "accuracy": pct(metrics["macro_accuracy"])}}
    classes = metrics.get("class_accuracy")
    block["class_wise"] = ({c: {"accuracy": pct(classes.get(c)), "logloss": None} for c in class_names}
                           if classes else todo("accuracy per class"))
    devices = metrics.get("device_accuracy")
    block["device_wise"] = ({d: {"accuracy": pct(a), "logloss": None} for d, a in devices.items()}
                            if devices else todo("accuracy per device"))
    return block


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _workdir_file(model_dir: Path, name: str) -> Any:
    """`name` (config.json, summary.json) of the train.py workdir a saved model sits in."""
    for directory in (model_dir, model_dir.parent):
        found = _read_json(directory / name) if (directory / name).is_file() else None
        if isinstance(found, dict):
            return found
    return None


def run_facts(device_set: ds.DeviceModelSet, is_set: bool, specs: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, Any]:
    """What the checkpoint tells about the run: {"config", "device_specific", "general"}.

    Args:
      device_set: the set (a single model: a set with only its base).
      is_set: whether it is a real device set (device_set.json).
      specs: {member: model.json} of its members.
    """
    base_eval = specs[ds.BASE].get("eval")
    if is_set:
        evals = device_set.meta.get("eval") or {}
        config = device_set.meta.get("config")
        general = evals.get("base_metrics") or base_eval
        device_specific = evals.get("metrics")
    else:
        config = _workdir_file(device_set.base, "config.json")
        summary = _workdir_file(device_set.base, "summary.json") or {}
        general = summary.get("deploy_eval") or summary.get("eval") or base_eval
        device_specific = general
    return {"config": config if isinstance(config, dict) else None,
            "device_specific": device_specific, "general": general}


def derived_description(*, specs: Mapping[str, Mapping[str, Any]], n_devices: int, sample_rate: int,
                        precision: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The description fields that follow from the members and (if found) the training config."""
    names = sorted({s["model"]["name"] for s in specs.values()})
    kinds = sorted({"Transformer" if n in TRANSFORMER_MODELS else "CNN" for n in names
                    if n in TRANSFORMER_MODELS or n in CNN_MODELS})
    frontends = sorted({FEATURE_TAGS.get((s.get("frontend") or {}).get("name", "logmel"), "") for s in specs.values()})
    out: dict[str, Any] = {
        "input_sampling_rate": f"{sample_rate / 1000:g}kHz",
        "num_models_at_inference": 1 + n_devices,
        "framework": "jax/flax",
        "device_information": "per-device end-to-end fine-tuning" if n_devices else "not used",
        "model_weight_sharing": "fully device-specific" if n_devices else "fully shared",
    }
    if all(frontends):
        out["acoustic_features"] = ", ".join(frontends)
    if all(n in CNN_MODELS + TRANSFORMER_MODELS for n in names):
        out["machine_learning_method"] = ", ".join(kinds)
    management = []
    pipeline = []
    if config is not None:
        augment = config.get("augment") or {}
        tags = [AUGMENTATION_TAGS.get(k, k) for k, v in augment.items() if v is not None]
        out["data_augmentation"] = ", ".join(tags) if tags else None
        kd = (config.get("kd") or {}).get("store")
        init_from = (config.get("model") or {}).get("init_from")
        if kd:
            management.append("knowledge distillation")
            pipeline += ["train teachers", "precompute teacher logits",
                         "train general student model with knowledge distillation"]
        else:
            pipeline.append("train general model")
        if config.get("prune"):
            management.append("pruning")
            pipeline.append("progressive pruning and finetuning")
        if not kd and not init_from:
            out["external_data_usage"] = None
        split = str((config.get("data") or {}).get("train_split", ""))
        if split:
            out["training_data"] = f"TAU Urban Acoustic Scenes 2022 Mobile development set, {split}% split"
    if any(n in ("rep_mobile",) for n in names):
        management.append("network design (structural re-parameterization)")
    if precision == "int8":
        management.append("weight quantization")
        pipeline.append("int8 quantization")
    elif precision in ("fp16", "bf16"):
        management.append("precision_16")
    if n_devices:
        pipeline.append("device-specific end-to-end fine-tuning")
    if management:
        out["complexity_management"] = ", ".join(management)
    if config is not None:
        out["pipeline"] = ", ".join(pipeline)
    return out


def build_meta(*, label: str, device_set: ds.DeviceModelSet, is_set: bool, sample_rate: int,
               complexity_json: Mapping[str, Any], template: Mapping[str, Any] | None = None,
               name: str | None = None, abbreviation: str | None = None) -> dict[str, Any]:
    """The meta.yaml content (see the module docstring for where each value comes from).

    Args:
      complexity_json: `dcase2025.check_complexity` of the model.
      template: a meta.yaml read with `yaml_lite.load` (declared values).
      name, abbreviation: override the template's.
    """
    specs = {key: read_spec(path) for key, path in device_set.members().items()}
    facts = run_facts(device_set, is_set, specs)
    per_device = complexity_json["per_device"]
    largest = max(per_device.values(), key=lambda d: (d["Params"], d["MACs"]))
    precision = largest["precision"]
    derived = derived_description(specs=specs, n_devices=len(device_set.devices), sample_rate=sample_rate,
                                  precision=precision, config=facts["config"])

    meta = default_meta()
    meta["system"]["description"].update(derived)
    if facts["config"] is not None and derived.get("external_data_usage", "") is None:
        meta["system"]["external_datasets"] = []  # the config shows neither teachers nor a pretrained init
    meta = deep_merge(meta, _declared(template or {}))

    meta["submission"]["label"] = label
    if name:
        meta["submission"]["name"] = name
    if abbreviation:
        meta["submission"]["abbreviation"] = abbreviation
    description = meta["system"]["description"]
    for key in ("input_sampling_rate", "num_models_at_inference"):
        description[key] = derived[key]
    meta["system"]["complexity"] = {"total_model_size": complexity_json["max_Params"],
                                    "total_parameters": max(d["parameters"] for d in per_device.values()),
                                    "macs": complexity_json["max_MACs"], "precision": precision}
    dev = meta["results"]["development_dataset"]
    for key in ("device_specific", "general"):
        block = results_block(facts[key], device_set.class_names)
        if block is not None:
            dev[key] = block
    return meta


def _declared(template: Mapping[str, Any]) -> dict[str, Any]:
    """The template without its placeholders (they must not hide derived values)."""
    out: dict[str, Any] = {}
    for key, value in template.items():
        if isinstance(value, Mapping):
            out[key] = _declared(value)
        elif not is_placeholder(value):
            out[key] = value
    return out


def write_meta(path: str | Path, meta: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.write_text(yaml_lite.dump(meta, COMMENTS), encoding="utf-8")
    return path


def read_meta(path: str | Path) -> Any:
    """A meta.yaml (`yaml_lite.load`); YamlError / OSError name the file."""
    path = Path(path)
    try:
        return yaml_lite.load(path.read_text(encoding="utf-8"))
    except yaml_lite.YamlError as err:
        raise yaml_lite.YamlError(f"{path}: {err}") from None
