"""`python -m asc_jax.submission`: write a DCASE2025 Task 1 submission package, or check one.

    python -m asc_jax.submission --checkpoint runs/device_set --eval-root DATA/eval \
        --label Lastname_Inst_task1_1 --out submission/ [--meta-template my.meta.yaml] \
        [--name "..."] [--abbreviation ...] [--batch-size 64] [--overwrite] [--cpu]
    python -m asc_jax.submission --check submission/Lastname_Inst_task1_1 [--eval-root DATA/eval]

Writing predicts the evaluation set, writes out/<label>/ (`writer`), prints the routing summary
and the validator's warnings, and fails (exit status 1) if the written package does not pass the
checks. `--check` runs the validator alone (`validator`; the label is the folder's name unless
`--label` is given). Exit status: 0 valid (warnings allowed), 1 errors, 2 command-line errors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

from asc_jax.checkpoint import CorruptModelError
from asc_jax.data import tau
from asc_jax.submission import validator, writer
from asc_jax.submission.yaml_lite import YamlError


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asc_jax.submission",
        description="Write a DCASE2025 Task 1 submission package (output.csv, meta.yaml, complexity JSON) "
                    "and check it; or check an existing one with --check.")
    parser.add_argument("--check", type=Path, default=None, metavar="DIR",
                        help="only validate the package in DIR")
    parser.add_argument("--checkpoint", type=Path, help="device model set or saved model directory")
    parser.add_argument("--eval-root", type=Path,
                        help="evaluation set root (evaluation_setup/fold1_test.csv, else meta.csv)")
    parser.add_argument("--label", help="submission label Lastname_Inst_task1_N (with --check: default the "
                                        "folder name)")
    parser.add_argument("--out", type=Path, help="the package is written to OUT/<label>/")
    parser.add_argument("--meta-template", type=Path, default=None,
                        help="meta.yaml with the declared fields (authors, names, description)")
    parser.add_argument("--name", default=None, help="submission name for the results tables")
    parser.add_argument("--abbreviation", default=None, help="short submission name (at most 10 characters)")
    parser.add_argument("--batch-size", type=int, default=64, help="1-s windows per forward pass (default 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/<label>/")
    parser.add_argument("--cpu", action="store_true", help="compute on the CPU even with an accelerator")
    args = parser.parse_args(None if argv is None else list(argv))

    if args.check is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "out", "meta_template", "name", "abbreviation")
                 if getattr(args, k) is not None]
        if given:
            parser.error(f"--check validates an existing package; not used with it: {', '.join(given)}")
        report = validator.validate(args.check, label=args.label, eval_root=args.eval_root)
        print(report.format())
        return 0 if report.ok else 1

    missing = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "eval_root", "label", "out")
               if getattr(args, k) is None]
    if missing:
        parser.error(f"writing a package needs {', '.join(missing)} (or --check DIR)")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        written = writer.write_submission(
            args.checkpoint, args.eval_root, args.label, args.out, template=args.meta_template,
            name=args.name, abbreviation=args.abbreviation, batch_size=args.batch_size,
            overwrite=args.overwrite, use_cuda=not args.cpu)
    except writer.InvalidPackage as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (CorruptModelError, FileNotFoundError, FileExistsError, ValueError, YamlError, tau.ClipError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if written.routing is not None:
        print(written.routing.summary())
    print(written.report.format())
    for path in written.files.values():
        print(f"wrote {path}")
    return 0
