"""Writes a DCASE2025 Task 1 submission package from a trained model and the evaluation set.

`write_submission` loads the device model set (or single saved model) with the challenge API
(`asc_jax.dcase2025`), predicts every clip of the evaluation set with the model of its device,
and writes into `<out>/<label>/` (`layout`):

* `<label>.output.csv`: the softmax of each clip's logits, as the organisers' evaluate_submission.py
  computes it, in the canonical DCASE class order (`evaluate.write_dcase_output`: six decimals,
  scene_label = argmax), rows in the evaluation listing's order, filenames as listed there;
* `<label>.complexity.json`: `dcase2025.check_complexity` for the 13 devices of test_complexity.py;
* `<label>.meta.yaml`: `meta_yaml.build_meta` (measured values, a template's declarations,
  derived descriptions, placeholders).

It then runs the validator on the folder, with the evaluation set, and raises `InvalidPackage`
(carrying the report) if any check fails; the files stay in place for inspection.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from asc_jax import dcase2025, evaluate
from asc_jax.data.tau import CLASSES
from asc_jax.predict import Routing, routing_of
from asc_jax.submission import layout, meta_yaml, validator


class InvalidPackage(ValueError):
    """The written package fails the validator; `report` says why."""

    def __init__(self, directory: Path, report: validator.Report):
        super().__init__(f"{directory}: the package fails the submission checks:\n{report.format()}")
        self.directory = directory
        self.report = report


@dataclasses.dataclass(frozen=True)
class Written:
    directory: Path
    files: dict[str, Path]
    routing: Routing | None  # None for a single model
    report: validator.Report


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (what evaluate_submission.py applies to `predict`'s logits)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def canonical_columns(class_names: list[str]) -> np.ndarray:
    """Indices that put a model's class order into the DCASE order.

    Raises:
      ValueError: the model predicts other classes than the DCASE ten.
    """
    if sorted(class_names) != sorted(CLASSES):
        raise ValueError(f"the model predicts classes {class_names}, not the DCASE classes {list(CLASSES)}")
    return np.array([class_names.index(c) for c in CLASSES])


def write_submission(checkpoint: str | Path, eval_root: str | Path, label: str, out: str | Path, *,
                     template: str | Path | None = None, name: str | None = None,
                     abbreviation: str | None = None, batch_size: int = 64, overwrite: bool = False,
                     use_cuda: bool = True) -> Written:
    """Predicts the evaluation set and writes the package (module docstring).

    Args:
      checkpoint: device model set or saved model directory (or train.py workdir).
      eval_root: evaluation set root (`layout.read_eval_set`).
      label: `Lastname_Inst_task1_N`.
      out: the package goes to out/<label>/.
      template: a meta.yaml with the declared fields (authors, names, description).
      overwrite: replace an existing out/<label>/.
      use_cuda: as in `dcase2025.predict`.
    Raises:
      ValueError: a bad label or template, a model of other classes; FileExistsError; the
        errors of `layout.read_eval_set` and `dcase2025.load_model`; tau.ClipError naming an
        unreadable clip; InvalidPackage if the result fails the checks.
    """
    problem = layout.label_problem(label)
    if problem:
        raise ValueError(problem)
    declared = meta_yaml.read_meta(template) if template is not None else None
    if declared is not None and not isinstance(declared, dict):
        raise ValueError(f"{template}: a meta template must be a mapping (submission, system, results)")
    directory = Path(out) / label
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass --overwrite to replace it")
    eval_set = layout.read_eval_set(eval_root)

    with dcase2025.backend(use_cuda):
        model = dcase2025.load_model(checkpoint, batch_size=batch_size)
        columns = canonical_columns(list(model.class_names))
        logits = dcase2025.predict_loaded(model, eval_set.paths(), eval_set.device_ids)
        probs = softmax(np.stack(logits))[:, columns] if logits else np.zeros((0, len(CLASSES)))
        complexity_json = dcase2025.check_complexity(model)

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    files = layout.package_files(directory, label)
    evaluate.write_dcase_output(files["output"], eval_set.filenames, probs, CLASSES)
    files["complexity"].write_text(json.dumps(complexity_json, indent=2) + "\n")
    meta = meta_yaml.build_meta(label=label, device_set=model.device_set, is_set=model.is_set,
                                sample_rate=model.sample_rate, complexity_json=complexity_json,
                                template=declared, name=name, abbreviation=abbreviation)
    meta_yaml.write_meta(files["meta"], meta)

    report = validator.validate(directory, label=label, eval_set=eval_set)
    if not report.ok:
        raise InvalidPackage(directory, report)
    routing = routing_of(model.device_set, eval_set.device_ids) if model.is_set else None
    return Written(directory, files, routing, report)
