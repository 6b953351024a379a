"""`python -m asc_jax.device_specific`: DCASE2025 device-specific models, from stage 2 to export.

    # stage 1: the general model, an ordinary run on the 25 % split
    python train.py --config configs/rep_mobile_tau.py:split=25 --workdir runs/s25 --set data.root=DATA
    # stage 2: one fine-tune per training device -> runs/s25_dev/{a,b,...}/, the set in runs/s25_dev/set
    python -m asc_jax.device_specific train --base runs/s25 --config configs/device_tau.py:split=25 \\
        --workdir runs/s25_dev [--devices a,b,c,s1,s2,s3] [--set data.root=DATA ...] [--no-eval]
    python -m asc_jax.device_specific evaluate --set runs/s25_dev/set --data-root DATA [--split test]
    python -m asc_jax.device_specific complexity --set runs/s25_dev/set [--float-precision fp16]
    python -m asc_jax.device_specific quantize --set runs/s25_dev/set --data-root DATA --out runs/s25_dev/set_int8
    python -m asc_jax.device_specific export --set runs/s25_dev/set_int8 --out exports/s25_dev [--format onnx]

`train` resumes: rerun the same command (finished devices are skipped, an interrupted one goes
on from its checkpoint). `complexity` exits with status 1 when any member is over a limit.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable

from asc_jax import setup_compilation_cache, setup_logging
from asc_jax.config import load_config, override
from asc_jax.data import tau
from asc_jax.device_set import read_device_set
from asc_jax.device_specific import deploy, evaluation
from asc_jax.device_specific.train import train_devices

COMPLEXITY_FILE = "complexity.json"


def _devices(text: str) -> list[str]:
    return [d.strip() for d in text.split(",") if d.strip()]


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for assignment in args.set:
        config = override(config, assignment)
    result = train_devices(config, args.base, args.workdir, args.devices, evaluate=not args.no_eval,
                           batch_size=args.batch_size)
    if not result["finished"]:
        print(f"device {result['device']} stopped at step {result['step']} of {result['total_steps']} "
              "(max_steps); rerun the same command to continue")
        return 0
    print(f"device set written to {result['set']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    evaluation.evaluate_and_record(read_device_set(args.set), args.data_root, args.split,
                                   batch_size=args.batch_size, on_error=args.on_error)
    return 0


def _complexity(args: argparse.Namespace) -> int:
    device_set = read_device_set(args.set)
    rows = deploy.set_complexity(device_set, float_precision=args.float_precision)
    summary = deploy.complexity_summary(rows)
    (device_set.directory / COMPLEXITY_FILE).write_text(json.dumps(summary, indent=2))
    print(deploy.complexity_table(rows))
    if not summary["all_within_limits"]:
        over = [r.member for r in rows if not r.within_limits]
        print(f"members over a DCASE limit: {', '.join(over)}")
        return 1
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from asc_jax.quantize import QuantConfig

    cfg = QuantConfig(args.weight_bits, args.act_bits, args.calibration, args.percentile)
    quantized = deploy.quantize_set(read_device_set(args.set), args.data_root, args.out,
                                    calib_split=args.calib_split, n_calib=args.n_calib, cfg=cfg, seed=args.seed,
                                    batch_size=args.batch_size, overwrite=args.overwrite)
    print(f"int8 device set written to {quantized.directory}")
    print(deploy.complexity_table(deploy.set_complexity(quantized)))
    if args.split is not None:
        evaluation.evaluate_and_record(quantized, args.data_root, args.split, batch_size=args.batch_size)
    return 0


def _export(args: argparse.Namespace) -> int:
    index = deploy.export_set(read_device_set(args.set), args.out, formats=args.format,
                              onnx_frontend=args.onnx_frontend, onnx_batch_size=args.onnx_batch_size)
    for member, files in index["members"].items():
        print(f"{member}: {', '.join(files)}")
    print(Path(args.out) / deploy.EXPORT_INDEX)
    return 0


def _bits(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asc_jax.device_specific",
                                description="DCASE2025 device-specific models: stage-2 training, evaluation, "
                                            "complexity, int8 and export of a device model set.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune the stage-1 model per device and assemble the set")
    t.add_argument("--base", required=True, type=Path, help="the stage-1 train.py workdir")
    t.add_argument("--config", required=True, help="stage-2 recipe: configs/device_tau.py[:split=25,...]")
    t.add_argument("--workdir", required=True, type=Path, help="stage-2 workdir (<device>/ runs, set/)")
    t.add_argument("--devices", type=_devices, default=list(tau.SEEN_DEVICES),
                   help=f"comma-separated devices (default: {','.join(tau.SEEN_DEVICES)})")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the stage-2 config, as train.py --set")
    t.add_argument("--no-eval", action="store_true", help="do not evaluate the assembled set")
    t.add_argument("--batch-size", type=int, default=64, help="clips per evaluation forward pass")
    t.set_defaults(run=_train)

    e = sub.add_parser("evaluate", help="overall, known- and unknown-device accuracy of a set and its base")
    e.add_argument("--set", required=True, type=Path, help="device set directory")
    e.add_argument("--data-root", required=True, type=Path, help="TAU-layout dataset root")
    e.add_argument("--split", default="test", help="evaluation split (default: test)")
    e.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad clips (default: raise)")
    e.add_argument("--batch-size", type=int, default=64)
    e.set_defaults(run=_evaluate)

    c = sub.add_parser("complexity", help="params, MACs and memory of every member against the limits")
    c.add_argument("--set", required=True, type=Path, help="device set directory")
    c.add_argument("--float-precision", choices=deploy.FLOAT_PRECISIONS, default="fp32",
                   help="precision float members are deployed at (int8 members: int8)")
    c.set_defaults(run=_complexity)

    q = sub.add_parser("quantize", help="int8 post-training quantization of every member")
    q.add_argument("--set", required=True, type=Path, help="device set of float deploy members")
    q.add_argument("--data-root", required=True, type=Path, help="TAU-layout dataset root")
    q.add_argument("--out", required=True, type=Path, help="the int8 set's directory")
    q.add_argument("--calib-split", default=None,
                   help="calibration split (default: the set's training split); device models calibrate on "
                        "their device's clips of it, the base on all of it")
    q.add_argument("--n-calib", type=int, default=256, help="calibration clips per member (default: 256)")
    q.add_argument("--weight-bits", type=int, default=8)
    q.add_argument("--act-bits", type=_bits, default=8, help="bits of conv inputs, or 'none' (weight-only)")
    q.add_argument("--calibration", choices=("minmax", "percentile"), default="minmax")
    q.add_argument("--percentile", type=float, default=99.99)
    q.add_argument("--seed", type=int, default=0, help="calibration draw")
    q.add_argument("--split", default="test", type=lambda s: None if s.lower() == "none" else s,
                   help="evaluate the int8 set on this split ('none': do not; default: test)")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.set_defaults(run=_quantize)

    x = sub.add_parser("export", help="StableHLO / ONNX export of every member")
    x.add_argument("--set", required=True, type=Path, help="device set directory (float or int8)")
    x.add_argument("--out", required=True, type=Path, help="output directory (<member>/model.*)")
    x.add_argument("--format", nargs="+", choices=("stablehlo", "onnx"), default=["stablehlo"])
    x.add_argument("--onnx-frontend", action="store_true", help="waveform-input ONNX (fixed batch)")
    x.add_argument("--onnx-batch-size", type=int, default=1)
    x.set_defaults(run=_export)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(None if argv is None else list(argv))
    setup_logging()
    setup_compilation_cache()
    return args.run(args)
