"""What a DCASE2025 Task 1 submission package is made of: the label, its file names and the
evaluation set it answers.

A package is one folder named by its label, holding

    <label>.output.csv       predictions: filename, scene_label, one probability column per class
    <label>.meta.yaml        system description, complexity, development-set results
    <label>.complexity.json  MACs and parameter bytes per device (test_complexity.py's format)

The label is `Lastname_Inst_task1_N`: the corresponding author's last name, the institute's
abbreviation, the task and the submission index (1-4; DCASE allows four per team).

The evaluation set is read from `<eval root>/evaluation_setup/fold1_test.csv` (tab-separated,
columns filename and device_id, as the DCASE2025 evaluation set ships and the organisers'
evaluate_submission.py reads it). A root without it but with a TAU `meta.csv` (the development
set's layout, e.g. to rehearse on the development data) is read from there: every clip of
meta.csv, the device from its `source_label` column, else from the file name.
"""
from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

from asc_jax.predict import device_from_name

SUFFIXES = {"output": ".output.csv", "meta": ".meta.yaml", "complexity": ".complexity.json"}
LABEL_PATTERN = re.compile(r"[A-Za-z][A-Za-z-]*_[A-Za-z0-9-]+_task1_[1-4]")
EVAL_SETUP = Path("evaluation_setup") / "fold1_test.csv"


def label_problem(label: str) -> str | None:
    """Why `label` is not a valid DCASE2025 Task 1 label, or None."""
    if LABEL_PATTERN.fullmatch(label):
        return None
    return (f"label {label!r} is not of the form Lastname_Inst_task1_N (last name, institute "
            "abbreviation, 'task1', submission index 1-4; letters, digits and '-' only)")


def package_files(directory: str | Path, label: str) -> dict[str, Path]:
    """{"output", "meta", "complexity"}: the package's file paths."""
    return {kind: Path(directory) / f"{label}{suffix}" for kind, suffix in SUFFIXES.items()}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The clips to predict, in the order of the file listing them.

    Attributes:
      source: that file.
      filenames: as listed (relative to the root), as output.csv must name them.
      device_ids: the device of each clip (None where none is given).
    """

    root: Path
    source: Path
    filenames: list[str]
    device_ids: list[str | None]

    def paths(self) -> list[Path]:
        return [self.root / name for name in self.filenames]


def read_eval_set(root: str | Path) -> EvalSet:
    """The evaluation set under `root` (see the module docstring).

    Raises:
      FileNotFoundError: neither evaluation_setup/fold1_test.csv nor meta.csv is there.
      ValueError: naming the file: columns missing, an empty listing, or a clip listed twice.
    """
    root = Path(root)
    setup, meta = root / EVAL_SETUP, root / "meta.csv"
    if setup.is_file():
        source, device_column = setup, "device_id"
    elif meta.is_file():
        source, device_column = meta, "source_label"
    else:
        raise FileNotFoundError(f"{root}: no {EVAL_SETUP} (the DCASE2025 evaluation set's listing) "
                                "and no meta.csv: not an evaluation set root")
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = reader.fieldnames or []
        required = ["filename", device_column] if source == setup else ["filename"]
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; found {columns} (tab-separated)")
        filenames, devices, seen = [], [], {}
        for line, row in enumerate(reader, start=2):
            name = (row["filename"] or "").strip()
            if not name:
                raise ValueError(f"{source} line {line}: empty filename")
            if name in seen:
                raise ValueError(f"{source} line {line}: {name} is listed already on line {seen[name]}")
            seen[name] = line
            filenames.append(name)
            device = (row.get(device_column) or "").strip() if device_column in columns else ""
            devices.append(device or (device_from_name(name) if source == meta else None))
    if not filenames:
        raise ValueError(f"{source}: lists no clips")
    return EvalSet(root, source, filenames, devices)
