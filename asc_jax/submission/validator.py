"""Checks a DCASE2025 Task 1 submission package against the submission rules.

Errors (the package would be rejected or mis-scored), each naming the file, row and column:

* files: the label is not `Lastname_Inst_task1_N`; one of the three files is missing; a file
  in the folder does not start with the label;
* `<label>.output.csv`: not tab-separated; columns missing, unknown or out of order (exactly
  filename, scene_label and the ten DCASE classes in their canonical order); a row with another
  number of fields; an empty, duplicate or (with the evaluation set) unknown filename; a
  scene_label that is not a DCASE class or not the most probable class of its row; a probability
  that is not a number, not finite or outside [0, 1]; probabilities that do not sum to 1 within
  `PROB_TOLERANCE`; with the evaluation set, a row count other than its clip count;
* `<label>.complexity.json`: not test_complexity.py's layout; a device over 30 MMACs or 128 kB
  of parameters (`asc_jax.complexity` limits); max_MACs / max_Params that are not the per-device
  maxima;
* `<label>.meta.yaml`: not readable (the line is named); a required field missing; a label other
  than the package's; an abbreviation over 10 characters; not exactly one corresponding author;
  complexity values that are not counts, exceed the limits or disagree with the complexity JSON.

Warnings (worth a look, not fatal): placeholders left in meta.yaml (values starting "TODO");
a label-prefixed file that is not one of the three; no evaluation set given (row count and
filenames unchecked); complexity measured for fewer than the 13 devices test_complexity.py uses;
accuracies that look like fractions rather than percent; a training split other than 25%.

Row-level problems name the file line (the header is line 1) and are reported for the first
`MAX_ROWS_PER_KIND` rows of each kind, then counted.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

from asc_jax import complexity
from asc_jax.data.tau import CLASSES
from asc_jax.dcase2025 import COMPLEXITY_DEVICE_IDS
from asc_jax.submission import layout, meta_yaml, yaml_lite

# Probabilities must sum to 1 within this. Six-decimal rounding of ten columns (what
# evaluate.write_dcase_output writes) moves a sum by at most 5e-6, float32 softmax by ~1e-6;
# 1e-3 accepts those and coarser writers, and still catches logits or unnormalised scores.
PROB_TOLERANCE = 1e-3
MAX_ROWS_PER_KIND = 5
REQUIRED_META = ("submission.label", "submission.name", "submission.abbreviation", "submission.authors",
                 "system.description", "system.complexity.total_model_size",
                 "system.complexity.total_parameters", "system.complexity.macs", "results.development_dataset")
MAX_ABBREVIATION = 10


@dataclasses.dataclass
class Report:
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        verdict = (f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)" if self.errors
                   else f"valid ({len(self.warnings)} warning(s))")
        return "\n".join([*lines, verdict])


class _RowProblems:
    """Row-level errors, the first MAX_ROWS_PER_KIND of each kind in full, the rest counted."""

    def __init__(self, file: str):
        self.file = file
        self.by_kind: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, kind: str, message: str) -> None:
        self.by_kind[kind].append(message)

    def into(self, report: Report) -> None:
        for kind, messages in self.by_kind.items():
            report.errors.extend(f"{self.file}: {m}" for m in messages[:MAX_ROWS_PER_KIND])
            if len(messages) > MAX_ROWS_PER_KIND:
                report.errors.append(f"{self.file}: ... and {len(messages) - MAX_ROWS_PER_KIND} more "
                                     f"row(s) with {kind}")


def _check_files(directory: Path, label: str, report: Report) -> dict[str, Path]:
    files = layout.package_files(directory, label)
    for kind, path in files.items():
        if not path.is_file():
            report.errors.append(f"{directory}: missing {path.name}")
    expected = {p.name for p in files.values()}
    for entry in sorted(directory.iterdir()):
        if entry.name in expected:
            continue
        if not entry.name.startswith(label):
            report.errors.append(f"{directory}: unexpected {entry.name}: every file of the package "
                                 f"starts with its label {label!r}")
        else:
            report.warnings.append(f"{directory}: {entry.name} is not one of the package's files "
                                   f"({', '.join(sorted(expected))})")
    return files


def _check_output(path: Path, report: Report, eval_set: layout.EvalSet | None) -> None:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        report.errors.append(f"{name}: unreadable ({err})")
        return
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows:
        report.errors.append(f"{name}: empty file (expected a header and one row per clip)")
        return
    header, body = rows[0], rows[1:]
    expected = ["filename", "scene_label", *CLASSES]
    if len(header) == 1 and "," in header[0]:
        report.errors.append(f"{name}: the header has no tabs but commas: the file must be tab-separated")
        return
    missing = [c for c in expected if c not in header]
    unknown = [c for c in header if c not in expected]
    duplicated = sorted(c for c, n in collections.Counter(header).items() if n > 1)
    if missing:
        report.errors.append(f"{name}: missing column(s) {missing}")
    if unknown:
        report.errors.append(f"{name}: unknown column(s) {unknown} (class names must be the DCASE "
                             f"classes {list(CLASSES)})")
    if duplicated:
        report.errors.append(f"{name}: column(s) {duplicated} appear more than once")
    if not missing and not unknown and not duplicated and header != expected:
        report.errors.append(f"{name}: columns out of order: expected {expected}, found {header}")
    index = {c: header.index(c) for c in expected if c in header}
    problems = _RowProblems(name)
    seen: dict[str, int] = {}
    class_columns = [c for c in CLASSES if c in index]
    for row_number, row in enumerate(body, start=2):  # file line numbers: the header is line 1
        where = f"line {row_number}"
        if len(row) != len(header):
            problems.add("a wrong number of fields", f"{where}: {len(row)} fields, the header has {len(header)}")
            continue
        filename = row[index["filename"]].strip() if "filename" in index else ""
        if "filename" in index:
            if not filename:
                problems.add("empty filenames", f"{where}: empty filename")
            elif filename in seen:
                problems.add("duplicate filenames", f"{where}: {filename} is on line {seen[filename]} already")
            else:
                seen[filename] = row_number
        label = row[index["scene_label"]].strip() if "scene_label" in index else None
        if label is not None and label not in CLASSES:
            problems.add("unknown scene labels", f"{where}: scene_label {label!r} is not a DCASE class")
        probs: dict[str, float] = {}
        for c in class_columns:
            raw = row[index[c]].strip()
            try:
                p = float(raw)
            except ValueError:
                problems.add("non-numeric probabilities", f"{where}, column {c}: {raw!r} is not a number")
                continue
            if not math.isfinite(p):
                problems.add("non-finite probabilities", f"{where}, column {c}: {raw} is not finite")
            elif not 0.0 <= p <= 1.0:
                problems.add("probabilities outside [0, 1]", f"{where}, column {c}: {raw} is outside [0, 1]")
            probs[c] = p
        if len(probs) != len(CLASSES) or not all(math.isfinite(p) for p in probs.values()):
            continue
        total = sum(probs.values())
        if abs(total - 1.0) > PROB_TOLERANCE:
            problems.add("probabilities not summing to 1",
                         f"{where}: probabilities sum to {total:.6g} (must be 1 within {PROB_TOLERANCE:g})")
        best = max(probs, key=probs.get)
        if label in probs and probs[label] < probs[best]:
            problems.add("scene labels that are not the argmax",
                         f"{where}: scene_label {label!r} (p={probs[label]:g}) is not the most probable "
                         f"class {best!r} (p={probs[best]:g})")
    if eval_set is not None:
        listed = set(eval_set.filenames)
        for filename, row_number in seen.items():
            if filename not in listed:
                problems.add("clips not in the evaluation set",
                             f"line {row_number}: {filename} is not a clip of the evaluation set ({eval_set.source})")
    problems.into(report)
    if eval_set is not None:
        if len(body) != len(eval_set.filenames):
            report.errors.append(f"{name}: {len(body)} rows, but the evaluation set ({eval_set.source}) has "
                                 f"{len(eval_set.filenames)} clips: one row per clip")
        absent = [f for f in eval_set.filenames if f not in seen]
        if absent and "filename" in index:
            report.errors.append(f"{name}: {len(absent)} clip(s) of the evaluation set have no row "
                                 f"(first: {', '.join(absent[:3])})")
    else:
        report.warnings.append(f"{name}: row count and filenames not checked against the evaluation set "
                               "(give --eval-root)")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_complexity(path: Path, report: Report) -> dict[str, Any] | None:
    name = path.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        report.errors.append(f"{name}: not readable JSON ({err})")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("per_device"), dict) or not data["per_device"]:
        report.errors.append(f"{name}: expected {{'per_device': {{device: {{'MACs', 'Params'}}}}, 'max_MACs', "
                             "'max_Params'}} (test_complexity.py's complexity.json)")
        return None
    good = True
    for device, entry in data["per_device"].items():
        if not isinstance(entry, dict) or not all(_is_count(entry.get(k)) for k in ("MACs", "Params")):
            report.errors.append(f"{name}: device {device}: MACs and Params must be non-negative integers, "
                                 f"got {entry!r}")
            good = False
            continue
        if entry["MACs"] > complexity.DCASE_MAX_MACS:
            report.errors.append(f"{name}: device {device}: {entry['MACs']:,} MACs exceed the limit of "
                                 f"{complexity.DCASE_MAX_MACS:,}")
        if entry["Params"] > complexity.DCASE_MAX_PARAM_BYTES:
            report.errors.append(f"{name}: device {device}: {entry['Params']:,} bytes of parameters exceed "
                                 f"the limit of {complexity.DCASE_MAX_PARAM_BYTES:,}")
    if good:
        for key, field in (("max_MACs", "MACs"), ("max_Params", "Params")):
            largest = max(e[field] for e in data["per_device"].values())
            if data.get(key) != largest:
                report.errors.append(f"{name}: {key} is {data.get(key)!r}, the per-device maximum is {largest}")
    absent = [d for d in COMPLEXITY_DEVICE_IDS if d not in data["per_device"]]
    if absent:
        report.warnings.append(f"{name}: no entry for device(s) {absent} (test_complexity.py measures "
                               f"{', '.join(COMPLEXITY_DEVICE_IDS)})")
    return data if good else None


def _get(meta: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_meta(path: Path, label: str, report: Report, complexity_json: Mapping[str, Any] | None) -> None:
    name = path.name
    try:
        meta = meta_yaml.read_meta(path)
    except (OSError, UnicodeDecodeError, yaml_lite.YamlError) as err:
        report.errors.append(f"{name}: {err}")
        return
    if not isinstance(meta, dict):
        report.errors.append(f"{name}: expected a mapping with submission, system and results")
        return
    for dotted in REQUIRED_META:
        if not _get(meta, dotted)[0]:
            report.errors.append(f"{name}: missing {dotted}")
    for dotted in meta_yaml.placeholders(meta):
        report.warnings.append(f"{name}: {dotted} is a placeholder ({_get_any(meta, dotted)!r}): fill it in")

    found, value = _get(meta, "submission.label")
    if found and value != label:
        report.errors.append(f"{name}: submission.label is {value!r}, the package's label is {label!r}")
    found, value = _get(meta, "submission.abbreviation")
    if found and isinstance(value, str) and not meta_yaml.is_placeholder(value) and len(value) > MAX_ABBREVIATION:
        report.errors.append(f"{name}: submission.abbreviation {value!r} is longer than {MAX_ABBREVIATION} characters")
    found, authors = _get(meta, "submission.authors")
    if found:
        if not isinstance(authors, list) or not authors or not all(isinstance(a, dict) for a in authors):
            report.errors.append(f"{name}: submission.authors must be a non-empty list of authors")
        else:
            corresponding = sum(a.get("corresponding") is True for a in authors)
            if corresponding != 1:
                report.errors.append(f"{name}: submission.authors: exactly one author must have "
                                     f"'corresponding: true', found {corresponding}")
    limits = {"total_model_size": complexity.DCASE_MAX_PARAM_BYTES, "macs": complexity.DCASE_MAX_MACS}
    measured = {"total_model_size": "max_Params", "macs": "max_MACs"}
    for key in ("total_model_size", "total_parameters", "macs"):
        found, value = _get(meta, f"system.complexity.{key}")
        if not found or meta_yaml.is_placeholder(value):
            continue
        if not _is_count(value):
            report.errors.append(f"{name}: system.complexity.{key} must be a non-negative integer, got {value!r}")
            continue
        if key in limits and value > limits[key]:
            report.errors.append(f"{name}: system.complexity.{key} {value:,} exceeds the limit of {limits[key]:,}")
        if key in measured and complexity_json is not None and value != complexity_json.get(measured[key]):
            report.errors.append(f"{name}: system.complexity.{key} is {value}, the complexity JSON's "
                                 f"{measured[key]} is {complexity_json.get(measured[key])}")
    _check_results(meta, name, report)
    found, split = _get(meta, "system.description.training_data")
    if found and isinstance(split, str) and not meta_yaml.is_placeholder(split) \
            and f"{meta_yaml.REQUIRED_SPLIT}%" not in split:
        report.warnings.append(f"{name}: system.description.training_data {split!r}: DCASE2025 requires "
                               f"training on the {meta_yaml.REQUIRED_SPLIT}% split")


def _get_any(meta: Any, dotted: str) -> Any:
    """The value at a `placeholders` path (with [i] list steps)."""
    node = meta
    for part in dotted.replace("[", ".[").split("."):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def _check_results(meta: Mapping[str, Any], name: str, report: Report) -> None:
    found, dev = _get(meta, "results.development_dataset")
    if not found or not isinstance(dev, Mapping):
        return
    for block_name, block in dev.items():
        if not isinstance(block, Mapping):
            continue
        accuracies = [(f"{block_name}.overall", (block.get("overall") or {}).get("accuracy"))]
        for part in ("class_wise", "device_wise"):
            entries = block.get(part)
            if isinstance(entries, Mapping):
                accuracies += [(f"{block_name}.{part}.{k}", v.get("accuracy") if isinstance(v, Mapping) else v)
                               for k, v in entries.items()]
        numbers = [(where, a) for where, a in accuracies
                   if isinstance(a, (int, float)) and not isinstance(a, bool)]
        for where, a in numbers:
            if not 0.0 <= a <= 100.0:
                report.errors.append(f"{name}: results.development_dataset.{where}.accuracy {a} is not a "
                                     "percentage in [0, 100]")
        if numbers and all(0.0 <= a <= 1.0 for _, a in numbers):
            report.warnings.append(f"{name}: results.development_dataset.{block_name}: accuracies all <= 1 look "
                                   "like fractions; the template wants percent")


def validate(directory: str | Path, *, label: str | None = None, eval_root: str | Path | None = None,
             eval_set: layout.EvalSet | None = None) -> Report:
    """Every check of the module docstring on the package in `directory`.

    Args:
      label: the package's label; None: the folder's name.
      eval_root: the evaluation set root (`layout.read_eval_set`), for the row and filename checks.
      eval_set: the evaluation set, read already (wins over eval_root).
    """
    directory = Path(directory)
    report = Report()
    if not directory.is_dir():
        report.errors.append(f"{directory}: no such directory")
        return report
    label = label or directory.name
    problem = layout.label_problem(label)
    if problem:
        report.errors.append(f"{directory}: {problem}")
    if eval_set is None and eval_root is not None:
        try:
            eval_set = layout.read_eval_set(eval_root)
        except (FileNotFoundError, ValueError) as err:
            report.errors.append(f"evaluation set: {err}")
    files = _check_files(directory, label, report)
    if files["output"].is_file():
        _check_output(files["output"], report, eval_set)
    complexity_json = _check_complexity(files["complexity"], report) if files["complexity"].is_file() else None
    if files["meta"].is_file():
        _check_meta(files["meta"], label, report, complexity_json)
    return report

