"""Where the train step's time goes: a `jax.profiler` trace of the compiled step, op time summed
by the code that emitted each XLA op and by the op's kind.

    python -m benchmarks.profile_step                        # CP-Mobile, batch 128, 3 traced steps
    python -m benchmarks.profile_step --model rep_mobile --top 20
    python -m benchmarks.profile_step --quick                # batch 32, 2 steps

The step is `benchmarks.train_step`'s (the training run's step on this backend: log-mel,
frequency mask, Freq-MixStyle, the model with its default conv lowering, cross-entropy, Adam).
Each executed op of the trace is matched, by name, to its instruction in the optimized HLO
module, whose metadata gives the JAX op path (`transpose(jvp(...))` = the backward pass) and the
innermost Python frame that emitted it (e.g. `asc_jax/models/layers.py:depthwise_taps`; flax's
and optax's frames under their package names). Three tables:

* by source: forward / backward / update x the emitting function, ms per step and share;
* by kind: the fusion kind (XLA's loop fusions, YNNPACK fusions, ...) or the opcode (fft, copy);
* the top ops.

Times are summed over all threads, so on a multi-core CPU they exceed the step's wall time
(shown as the trace's wall per step); shares are of the summed op time. Control-flow ops (the
chunk loops of the custom VJPs are `while` loops) contain their body's ops, which are counted
themselves, so the containers are left out of the sums. The profiler slows each op a little;
compare shares, and time the step with `benchmarks.train_step`.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from asc_jax.audio.features import MelConfig
from benchmarks import common
from benchmarks.train_step import build_step, host_batches

CONTAINER_OPCODES = frozenset({"while", "call", "conditional", "async-start", "async-done"})


@dataclasses.dataclass(frozen=True)
class HloOp:
    kind: str  # fusion kind ("loop", "ynn", ...) or opcode ("fft", "copy", ...)
    direction: str  # "forward", "backward", "update" (the optimizer) or "other" (no JAX op)
    source: str  # innermost emitting frame, "path/file.py:function"
    container: bool  # a control-flow op whose body's ops are profiled themselves


def _table(text: str, name: str) -> dict[int, str]:
    """One of the module's numbered tables (`FileNames`, `FunctionNames`, ...), id -> line."""
    match = re.search(rf"^{name}\n((?:\d+ .*\n)+)", text, re.MULTILINE)
    if not match:
        return {}
    return {int(line.split(" ", 1)[0]): line.split(" ", 1)[1] for line in match.group(1).splitlines()}


def _short_path(path: str) -> str:
    """The part of a source path that names it: from the package (asc_jax, flax, optax, jax)."""
    parts = Path(path.strip('"')).parts
    for i, part in enumerate(parts):
        if part in ("asc_jax", "benchmarks", "flax", "optax", "jax"):
            return "/".join(parts[i:])
    return parts[-1] if parts else path


def _frame_sources(text: str) -> dict[int, str]:
    """stack_frame_id -> "file:function" of the frame's own location (the innermost frame)."""
    files = {i: _short_path(v) for i, v in _table(text, "FileNames").items()}
    functions = {i: v.strip('"') for i, v in _table(text, "FunctionNames").items()}
    locations = {}
    for i, v in _table(text, "FileLocations").items():
        fields = dict(re.findall(r"(\w+)=(\d+)", v))
        locations[i] = f"{files.get(int(fields['file_name_id']), '?')}:{functions.get(int(fields['function_name_id']), '?')}"
    sources = {}
    for i, v in _table(text, "StackFrames").items():
        fields = dict(re.findall(r"(\w+)=(\d+)", v))
        sources[i] = locations.get(int(fields["file_location_id"]), "?")
    return sources


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(", re.MULTILINE)


def parse_hlo(text: str) -> dict[str, HloOp]:
    """Instruction name -> HloOp for every instruction of an optimized HLO module's text
    (instruction names are unique within a module, across its computations)."""
    sources = _frame_sources(text)
    ops = {}
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        kind = opcode
        if opcode == "fusion":
            backend = re.search(r'"kind":"__(\w+?)_fusion"', line)
            fusion_kind = re.search(r"kind=k(\w+)", line)
            kind = f"{backend.group(1)} fusion" if backend else f"{(fusion_kind.group(1) if fusion_kind else '').lower()} fusion"
        elif opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line)
            kind = f"custom-call {target.group(1)}" if target else opcode
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        frame = re.search(r"stack_frame_id=(\d+)", line)
        source = sources.get(int(frame.group(1)), "?") if frame else "(no source)"
        if not op_name:
            direction = "other"  # parameters, constants and XLA's own bookkeeping
        elif "transpose(" in op_name:
            direction = "backward"
        elif source.startswith("optax/") or op_name.startswith("state."):
            direction = "update"
        else:
            direction = "forward"
        ops[name] = HloOp(kind, direction, source, opcode in CONTAINER_OPCODES)
    return ops


def op_times(trace_dir: str, module: str) -> tuple[dict[str, float], int]:
    """Summed duration in ms per HLO op of `module`, over all threads of the trace, and the number
    of module executions seen (calls of the jitted function)."""
    files = sorted(Path(trace_dir).rglob("*.xplane.pb"))
    if not files:
        raise FileNotFoundError(f"jax.profiler wrote no *.xplane.pb under {trace_dir}")
    times: dict[str, float] = collections.defaultdict(float)
    runs = set()
    for plane in jax.profiler.ProfileData.from_file(str(files[-1])).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if stats.get("hlo_module") != module or "hlo_op" not in stats:
                    continue
                times[stats["hlo_op"]] += event.duration_ns / 1e6
                runs.add(stats.get("run_id"))
    return dict(times), len(runs)


def summarize(times: dict[str, float], ops: dict[str, HloOp], n_steps: int, top: int):
    """(rows by source, rows by kind, top op rows), ms per step; containers left out."""
    counted = {name: t / n_steps for name, t in times.items()
               if not (name in ops and ops[name].container)}
    total = sum(counted.values()) or 1.0
    unknown = HloOp("?", "?", "(not in the HLO text)", False)
    by_source, by_kind = collections.defaultdict(float), collections.defaultdict(float)
    for name, t in counted.items():
        op = ops.get(name, unknown)
        by_source[(op.direction, op.source)] += t
        by_kind[op.kind] += t

    def rows(groups, keys):
        ordered = sorted(groups.items(), key=lambda kv: -kv[1])
        return [{**dict(zip(keys, k if isinstance(k, tuple) else (k,))), "ms_per_step": t,
                 "share": f"{100 * t / total:.1f} %"} for k, t in ordered[:top]]

    top_ops = [{"op": name, "kind": ops.get(name, unknown).kind, "direction": ops.get(name, unknown).direction,
                "source": ops.get(name, unknown).source, "ms_per_step": t, "share": f"{100 * t / total:.1f} %"}
               for name, t in sorted(counted.items(), key=lambda kv: -kv[1])[:top]]
    return rows(by_source, ("direction", "source")), rows(by_kind, ("kind",)), top_ops, total


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cp_mobile", help="registered model name")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 32)")
    parser.add_argument("--steps", type=int, default=None, help="traced steps (default 3, --quick: 2)")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    parser.add_argument("--trace-dir", default=None, help="keep the trace here (default: a temporary folder)")
    args = parser.parse_args(argv)
    batch = args.batch_size or (32 if args.quick else 128)
    n_steps = args.steps or (2 if args.quick else 3)
    options, state, step_fn = build_step(args.model, {}, args.seed)
    batches = host_batches(np.random.default_rng(args.seed), batch, MelConfig().sample_rate)  # build_step's frontend
    run = jax.jit(step_fn, donate_argnums=0)
    compiled = run.lower(state, batches[0]).compile()
    ops = parse_hlo(compiled.as_text())
    state, metrics = compiled(state, batches[1])  # warm-up: first-call allocations stay out of the trace
    jax.block_until_ready(metrics)
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="asc_jax_profile_")
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for i in range(n_steps):
            state, metrics = compiled(state, batches[i % 2])
            jax.block_until_ready(metrics)
    wall_ms = 1000 * (time.perf_counter() - t0) / n_steps
    module = re.match(r"HloModule (\S+?),", compiled.as_text()).group(1)
    times, n_runs = op_times(trace_dir, module)
    if n_runs != n_steps:
        raise RuntimeError(f"the trace holds {n_runs} executions of {module}, expected {n_steps}")
    by_source, by_kind, top_ops, total = summarize(times, ops, n_steps, args.top)
    title = (f"{args.model} ({options.get('conv_lowering', 'n/a')} lowering), batch {batch}, "
             f"{n_steps} traced steps: {total:,.0f} ms of op time per step (all threads), "
             f"{wall_ms:,.0f} ms wall per step under the profiler; {len(times)} distinct ops")
    tables = [("by source (forward / backward / update x emitting function)", by_source,
               ("direction", "source", "ms_per_step", "share")),
              ("by kind", by_kind, ("kind", "ms_per_step", "share")),
              ("top ops", top_ops, ("op", "kind", "direction", "source", "ms_per_step", "share"))]
    notes = [title] + [f"#### {name}\n\n{common.markdown_table(rows, cols)}" for name, rows, cols in tables]
    print(f"trace: {trace_dir}")
    return common.report("profile_step", [{"model": args.model, "batch": batch, "steps": n_steps,
                                           "op_ms_per_step": total, "wall_ms_per_step": wall_ms}],
                         args, notes=notes)


if __name__ == "__main__":
    main()
