"""Command line: ``python -m asc_jax.distill precompute``, writing a teacher-logit store.

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
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from asc_jax import setup_logging
from asc_jax.config import load_config, override
from asc_jax.distill.precompute import precompute
from asc_jax.distill.store import TeacherStore

log = logging.getLogger(__name__)


def parse_teacher_arg(arg: str) -> tuple[str | None, str]:
    """``"DIR"`` -> (None, DIR); ``"TAG=DIR"`` -> (TAG, DIR)."""
    tag, sep, path = arg.partition("=")
    return (tag, path) if sep and tag and "/" not in tag else (None, arg)


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
    args = parser.parse_args(argv)
    setup_logging("%(message)s")
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
