"""Runs every benchmark, each in its own process, and collects their tables.

Separate processes keep the peak-memory figures per benchmark and stop one benchmark's
compiled programs and caches from slowing the next. The train step runs first so the
data-pipeline benchmark can compare against its rate.

    python -m benchmarks.run_all --quick                    # about 5-10 minutes on 2 CPU cores
    python -m benchmarks.run_all --quick --update-readme    # and write the tables into README.md
    python -m benchmarks.run_all --only frontend inference
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common

BENCHMARKS = ("train_step", "inference", "frontend", "data_pipeline", "teacher_precompute")
README = Path(__file__).resolve().parent / "README.md"


def run(name: str, quick: bool, out_dir: Path) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out-dir", str(out_dir)] + (["--quick"] if quick else [])
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=root, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"benchmark {name} failed with exit code {proc.returncode}")
    return json.loads((out_dir / f"{name}.json").read_text()), wall


def machine_section(start: dict, end: dict, quick: bool, walls: dict[str, float]) -> str:
    lines = [
        f"Measured with `python -m benchmarks.run_all{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}:",
        "",
        f"* CPU: {start['cpu']}, {start['cpu_cores']} cores ({start['usable_cores']} usable), "
        f"{start['memory_gb']} GB RAM; backend `{start['backend']}`, devices {', '.join(start['devices'])}",
        f"* Python {start['python']}, jax {start['jax']}, jaxlib {start['jaxlib']}"
        + (f", XLA_FLAGS=`{start['xla_flags']}`" if start["xla_flags"] else ""),
        f"* Load average (1/5/15 min) at start {start['load_average_1_5_15']}, at end "
        f"{end['load_average_1_5_15']}"
        + (" — the machine was shared with other jobs, so absolute numbers are pessimistic and noisy; "
           "ratios measured within one script (interleaved where noted) are more reliable."
           if max(start["load_average_1_5_15"][0], end["load_average_1_5_15"][0]) > 0.5 * start["usable_cores"]
           else " (otherwise idle)."),
        "* Wall time per script (including compiles and, for data_pipeline, dataset generation): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()),
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--update-readme", action="store_true",
                        help=f"replace the results section of {README.name} with these tables")
    args = parser.parse_args(argv)
    start = common.machine_info()
    results, walls = {}, {}
    for name in args.only:
        results[name], walls[name] = run(name, args.quick, args.out_dir)
    end = common.machine_info()
    sections = [machine_section(start, end, args.quick, walls)]
    for name, res in results.items():
        sections.append("\n\n".join([f"#### {name}", res["table"], *res["notes"]]))
    text = "\n\n".join(sections)
    (args.out_dir / "summary.md").write_text(text + "\n")
    print("\n" + text)
    if args.update_readme:
        common.replace_section(README, "results", text)
        print(f"\nupdated {README}")


if __name__ == "__main__":
    main()
