"""Command line: ``python -m asc_jax.distill precompute | import``, writing a teacher-logit store.

  python -m asc_jax.distill precompute --config configs/kd_tau.py:split=25 \
      [--set data.root=/path/to/TAU22 ...] \
      --teacher runs/passt_s25_1 --teacher s2=runs/passt_s25_2/deploy --teacher runs/cpr_s25 \
      --views 8 [--seed 0] [--out stores/split25] [--batch-size 64]

``--config`` / ``--set`` are the student's, exactly as given to ``train.py``: the store samples
the student's ``config.augment`` (without Freq-MixStyle, which the student applies fresh), holds
the clips of its ``data.train_split`` under ``data.root`` (bad clips handled as
``data.on_error`` says), and is written to its ``kd.store`` unless ``--out`` says otherwise; the
seed defaults to the config's. The student refuses a store whose augmentation differs from its
own (``distill.StoreExtras``). See ``asc_jax.distill.precompute``.

  python -m asc_jax.distill import --logits ensemble_logits.pt --filenames meta.csv \
      --classes airport,bus,... --name cpjku_ensemble \
      (--config configs/kd_tau.py:split=25 [--set ...] | --split split25.csv [--meta meta.csv]) \
      [--out stores/split25] [--key NAME] [--reduce mean] [--probabilities]

imports logits computed elsewhere (a torch .pt, a .npy/.npz, or a CSV with a filename column and
one column per class) for the clips of the student's training split (``--config``, as above) or
of a split csv, into a store of one teacher that replays no augmentation. See
``asc_jax.distill.importing``.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Sequence

from asc_jax import setup_logging
from asc_jax.config import load_config, override
from asc_jax.distill import importing
from asc_jax.distill.precompute import precompute
from asc_jax.distill.store import TeacherStore

log = logging.getLogger(__name__)


def parse_teacher_arg(arg: str) -> tuple[str | None, str]:
    """``"DIR"`` -> (None, DIR); ``"TAG=DIR"`` -> (TAG, DIR)."""
    tag, sep, path = arg.partition("=")
    return (tag, path) if sep and tag and "/" not in tag else (None, arg)


def _add_import_parser(sub) -> None:
    p = sub.add_parser("import", help="import teacher logits computed elsewhere (PyTorch, numpy, CSV) "
                                      "into a teacher-logit store")
    p.add_argument("--logits", required=True, metavar="FILE",
                   help=".pt/.pth (a tensor or a dict of tensors), .npy/.npz of shape (N, C) or (N, V, C), "
                        "or a .csv/.tsv with a filename column and one column per class")
    p.add_argument("--filenames", default=None, metavar="FILE",
                   help="for an array: the clips of its rows, in order (one name per line, or a CSV/TSV "
                        "with a filename column: meta.csv, a split csv)")
    p.add_argument("--classes", default=None, metavar="NAME,NAME,...",
                   help="the array's class order by name ('dataset': the dataset's own order); for a "
                        "table, picks its class columns (default: all but filename)")
    p.add_argument("--name", required=True, help="the teacher's name in the store (e.g. cpjku_ensemble)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", metavar="configs/x.py[:variant]",
                        help="the student's config: the store holds the clips of its data.train_split "
                             "under data.root; its kd.store is the default --out")
    target.add_argument("--split", metavar="FILE", help="a split csv: the store holds its clips")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the student's config overrides, as given to train.py (with --config)")
    p.add_argument("--meta", default=None, metavar="FILE",
                   help="with --split: the dataset's meta.csv (default: beside the split file)")
    p.add_argument("--key", default=None, help="the dict / .npz entry holding the logits")
    p.add_argument("--reduce", choices=["mean"], default=None,
                   help="average (N, V, C) logits over V (required for V > 1: views cannot be replayed)")
    p.add_argument("--probabilities", action="store_true",
                   help="the values are probabilities (softmax outputs): import their log")
    p.add_argument("--out", default=None, help="store directory (default: the config's kd.store)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")


def _run_import(args: argparse.Namespace, argv: Sequence[str]) -> TeacherStore:
    if args.set and not args.config:
        raise ValueError("--set overrides the student's config: give --config")
    if args.meta and not args.split:
        raise ValueError("--meta goes with --split (with --config, meta.csv is under data.root)")
    out = args.out
    if args.config:
        config = load_config(args.config)
        for assignment in args.set:
            config = override(config, assignment)
        target = importing.target_from_config(config)
        out = out or config.kd.store
    else:
        target = importing.target_from_split(args.split, args.meta)
    if not out:
        raise ValueError("no store directory: pass --out (or a --config whose kd.store is set)")
    return importing.import_logits(
        out, logits=args.logits, target=target, name=args.name, filenames=args.filenames,
        classes=importing.parse_classes(args.classes), key=args.key, reduce=args.reduce,
        probabilities=args.probabilities, overwrite=args.overwrite,
        command=shlex.join(["python", "-m", "asc_jax.distill", *argv]))


def main(argv: Sequence[str] | None = None) -> TeacherStore:
    """Runs the command line (`argv`: its arguments, default sys.argv); returns the written store."""
    parser = argparse.ArgumentParser(prog="python -m asc_jax.distill",
                                     description="Teacher-logit stores for knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("precompute", help="run teachers over the student's training split and write "
                                          "a teacher-logit store")
    p.add_argument("--config", required=True, metavar="configs/x.py[:variant]",
                   help="the student's config, as given to train.py: its augment (without "
                        "Freq-MixStyle) is sampled, its data.root / data.train_split are read, "
                        "its kd.store is the default --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the student's config overrides, as given to train.py (e.g. data.root=...)")
    p.add_argument("--teacher", action="append", required=True, metavar="[TAG=]DIR",
                   help="saved model dir or train.py workdir; named <arch>-<TAG> (TAG defaults to "
                        "the directory's name). Repeat for an ensemble.")
    p.add_argument("--views", type=int, required=True, help="augmented views per clip")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the sampled augmentations (default: the config's seed)")
    p.add_argument("--out", default=None, help="store directory (default: the config's kd.store)")
    p.add_argument("--batch-size", type=int, default=64, help="clips per teacher call")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _add_import_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    setup_logging("%(message)s")
    if args.command == "import":
        store = _run_import(args, argv)
        log.info("wrote %s: %d clips of teacher %s (imported, 1 view, no augmentation replayed)",
                 store.path, len(store), store.teacher_names[0])
        return store
    config = load_config(args.config)
    for assignment in args.set:
        config = override(config, assignment)
    store = precompute(
        args.out, config=config, teachers=[parse_teacher_arg(t) for t in args.teacher],
        n_views=args.views, seed=args.seed, batch_size=args.batch_size, overwrite=args.overwrite,
        progress=sys.stderr.isatty())
    log.info("wrote %s: %d clips x %d views x teachers %s", store.path, len(store), store.n_views,
             ", ".join(store.teacher_names))
    return store
