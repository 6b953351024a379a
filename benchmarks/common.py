"""Shared helpers of the benchmark scripts: timing, memory, machine description, output.

Every script prints a Markdown table and writes `<out-dir>/<name>.json` (rows + machine +
arguments) and `<out-dir>/<name>.md` (the table), default out-dir `benchmarks/results/`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import psutil

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repetitions (about a minute on 2 CPU cores)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the JSON/Markdown go")
    parser.add_argument("--seed", type=int, default=0, help="seeds inputs and parameters")
    return parser


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock and process CPU seconds of repeated calls (after warm-up).

    On a shared machine wall time grows with other jobs' load while CPU time (all threads of this
    process, so it can exceed wall time) stays close to the work done: report both.
    """

    times: tuple[float, ...]
    cpu_times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times)

    @property
    def best(self) -> float:
        return min(self.times)


def time_calls(fn: Callable[[], Any], *, iters: int, warmup: int = 1, min_seconds: float = 0.0,
               max_iters: int = 1000) -> Timing:
    """Times `fn()` (which must block until its result is ready) `iters` times or more.

    Runs at least `iters` calls and keeps going until `min_seconds` have passed (for very fast
    functions), but never more than `max_iters`.
    """
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    start = time.perf_counter()
    while len(times) < iters or (time.perf_counter() - start < min_seconds and len(times) < max_iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return Timing(tuple(times), tuple(cpu_times))


def blocking(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` followed by `jax.block_until_ready` on its result (JAX dispatch is asynchronous)."""
    def call(*args, **kwargs):
        return jax.block_until_ready(fn(*args, **kwargs))
    return call


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------
def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a worker that just exited
            pass
    return total


class PeakMemory:
    """Peak resident memory of this process *and its children* while the block runs.

    Sampled every `interval` seconds by a thread (so it sees grain worker processes, which
    `getrusage` of this process does not). Also records device memory where the backend reports
    it (`Device.memory_stats()`; XLA:CPU reports nothing, shown as n/a).
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_bytes = 0
        self.device_peak_bytes: int | None = None
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self):
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _tree_rss(self._proc))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak_bytes = _tree_rss(self._proc)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, _tree_rss(self._proc))
        self.device_peak_bytes = device_peak_bytes()

    def columns(self) -> dict[str, Any]:
        return {"peak_host_mb": round(self.peak_bytes / 2**20, 1),
                "peak_device_mb": "n/a" if self.device_peak_bytes is None
                else round(self.device_peak_bytes / 2**20, 1)}


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first local device, or None where the backend does not say."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def process_peak_rss_mb() -> float:
    """Lifetime peak RSS of this process (getrusage; kB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ----------------------------------------------------------------------------------------------
# Machine and output
# ----------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers depend on, including how busy the machine was (load average)."""
    import jaxlib

    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        uptime = ""
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "uptime": uptime,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, rows: Sequence[dict[str, Any]], args: argparse.Namespace, *,
           columns: Sequence[str] | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Prints the table (and notes) and writes `<name>.json` / `<name>.md` to args.out_dir."""
    table = markdown_table(rows, columns)
    text = "\n\n".join([f"### {name}", table, *notes])
    print(text, flush=True)
    result = {"name": name, "rows": list(rows), "notes": list(notes), "machine": machine_info(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "process_peak_rss_mb": process_peak_rss_mb(), "table": table}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    (args.out_dir / f"{name}.md").write_text(text + "\n")
    return result


def replace_section(path: Path, name: str, text: str) -> None:
    """Replaces what lies between `<!-- {name}:start -->` and `<!-- {name}:end -->` in `path`.

    Raises:
      ValueError: the file lacks the markers.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = path.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{path} lacks the {start} ... {end} markers")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")

