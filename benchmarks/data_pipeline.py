"""Data-pipeline throughput (grain, 0 and N worker processes) vs what the train step consumes.

Runs `asc_jax.data.pipeline.train_dataset` (shuffle, roll, batch; the audio cache on, as in
training) over the embedded synthetic TAU-layout dataset, generated on first use at
`--data-root` (44.1 kHz 16-bit wav files, resampled to 32 kHz when read). Two phases:

  * cold: the first epoch, every clip decoded and resampled (the first batch, which includes
    starting the workers, is reported separately);
  * warm: the second epoch, clips served from the in-memory cache. Each worker process keeps its
    own cache and sees other clips each epoch, so with workers the second epoch is only partly
    warm.

The train step's consumption rate comes from `results/train_step.json` (run
`benchmarks.train_step` first; `run_all` does) or `--step-clips-per-s`. headroom > 1 means the
pipeline outruns the step.

    python -m benchmarks.data_pipeline                 # 3000 training clips, batch 128
    python -m benchmarks.data_pipeline --quick         # 300 training clips, batch 32
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from asc_jax.data import pipeline, sources, synthetic, tau
from benchmarks import common

COLUMNS = ("workers", "phase", "batch", "batches", "seconds", "clips_per_s", "ms_per_batch",
           "step_clips_per_s", "headroom", "peak_host_mb")


def _step_rate(args, batch: int) -> tuple[float | None, str]:
    if args.step_clips_per_s:
        return args.step_clips_per_s, "given on the command line"
    path = args.out_dir / "train_step.json"
    if not path.is_file():
        return None, "unknown (run benchmarks.train_step first)"
    row = json.loads(path.read_text())["rows"][0]
    return float(row["clips_per_s"]), f"{row['model']} at batch {row['batch']} from {path.name}"


def measure(source: sources.ClipSource, batch: int, workers: int, seed: int) -> list[dict]:
    steps_per_epoch = len(source) // batch
    with common.PeakMemory() as mem:
        t0 = time.perf_counter()
        iterator = iter(pipeline.train_dataset(source, batch_size=batch, seed=seed, worker_count=workers))
        next(iterator)
        t_first = time.perf_counter()
        for _ in range(steps_per_epoch - 1):
            next(iterator)
        t_cold = time.perf_counter()
        for _ in range(steps_per_epoch):
            next(iterator)
        t_warm = time.perf_counter()
        del iterator  # stops the worker processes
    memory = mem.columns()["peak_host_mb"]
    phases = [("first batch (startup)", 1, t_first - t0), ("cold epoch", steps_per_epoch - 1, t_cold - t_first),
              ("warm epoch", steps_per_epoch, t_warm - t_cold)]
    return [{"workers": workers, "phase": phase, "batch": batch, "batches": n, "seconds": s,
             "clips_per_s": n * batch / s, "ms_per_batch": 1000 * s / n, "peak_host_mb": memory}
            for phase, n, s in phases if n > 0]


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("data/benchmark_synthetic"),
                        help="synthetic dataset directory (generated if missing)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 32)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the multi-process run (default: usable cores)")
    parser.add_argument("--step-clips-per-s", type=float, default=None,
                        help="train-step consumption rate (default: from results/train_step.json)")
    args = parser.parse_args(argv)
    batch = args.batch_size or (32 if args.quick else 128)
    workers = args.workers or len(os.sched_getaffinity(0))
    # --quick: 5 clips per (class, device) -> 300 training clips; default 50 -> 3000.
    per_class_device = 5 if args.quick else 50
    root = args.data_root if not args.quick else args.data_root.with_name(args.data_root.name + "_quick")
    t0 = time.perf_counter()
    synthetic.ensure_dataset(root, n_train_per_class_device=per_class_device, n_test_per_class_device=5)
    dataset_s = time.perf_counter() - t0
    clips = tau.load_split(root, "100")
    rows = []
    for n in (0, workers):
        # A fresh source per run: the cache must start empty for the cold phase.
        rows += measure(sources.ClipSource(clips, root, cache=True), batch, n, args.seed)
    step_rate, step_source = _step_rate(args, batch)
    for row in rows:
        row["step_clips_per_s"] = step_rate if step_rate is not None else "n/a"
        steady = step_rate and not row["phase"].startswith("first")
        row["headroom"] = f"{row['clips_per_s'] / step_rate:.1f}x" if steady else "n/a"
    notes = [f"{len(clips)} training clips (1 s, 44.1 kHz wav -> 32 kHz) at {root} "
             f"(ready in {dataset_s:.1f} s); read threads per process: 2. Train-step rate: {step_source}. "
             "headroom = pipeline clips/s / train-step clips/s. Peak host memory includes the worker processes."]
    return common.report("data_pipeline", rows, args, columns=COLUMNS, notes=notes)


if __name__ == "__main__":
    main()
