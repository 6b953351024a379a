"""DCASE2025 Task 1 submission packages: writing one from a trained model, and checking one.

Modules:
  layout.py     the label, the package's file names, the evaluation set listing
  writer.py     predicts the evaluation set (asc_jax.dcase2025) and writes the package
  meta_yaml.py  the meta.yaml fields and where each value comes from
  yaml_lite.py  the YAML subset meta.yaml is written in (writer + strict reader; no YAML dependency)
  validator.py  the submission rules, as errors and warnings naming file, line and column
  cli.py        python -m asc_jax.submission (write, or --check)
"""
from asc_jax.submission.layout import EvalSet, label_problem, package_files, read_eval_set
from asc_jax.submission.validator import PROB_TOLERANCE, Report, validate
from asc_jax.submission.writer import InvalidPackage, Written, write_submission

__all__ = ["EvalSet", "label_problem", "package_files", "read_eval_set", "PROB_TOLERANCE", "Report",
           "validate", "InvalidPackage", "Written", "write_submission"]
