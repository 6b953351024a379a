"""Train and evaluate an asc-jax model.

    python train.py --config configs/demo.py[:variant] --workdir runs/demo [--set optim.lr=0.005 ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""
import argparse
from asc_jax import setup_compilation_cache, setup_logging

from asc_jax.config import load_config, override
from asc_jax.train import run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/<file>.py[:key=value,...]")
    parser.add_argument("--workdir", required=True, help="run directory (checkpoints, logs, reports)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by dotted path, e.g. optim.lr=0.005")
    args = parser.parse_args(argv)
    setup_logging()
    setup_compilation_cache()  # reruns and resumes read their compiled programs back
    config = load_config(args.config)
    for assignment in args.set:
        config = override(config, assignment)
    run(config, args.workdir)  # pruning configs: dense training, then prune + finetune phases


if __name__ == "__main__":
    main()
