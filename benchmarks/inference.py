"""Inference latency: multi-branch Rep-Mobile vs its fused deploy form vs plain CP-Mobile.

Reparameterisation (`asc_jax.reparam.fuse`) should make the deployed Rep-Mobile exactly as
fast as CP-Mobile (same architecture: one 3x3 depthwise conv per block, BN folded) and faster
than the multi-branch training form run in eval mode. This reports it; it asserts nothing.

Model only (log-mel input, (B, 256, 63)), the jitted `asc_jax.inference.forward` (over 8-row slices
on CPU, `asc_jax.microbatch`, as every inference function built to run), eval mode. The
forms are timed in interleaved rounds so that load changes on a shared machine hit all of them alike.

    python -m benchmarks.inference            # batch 1 and 64
    python -m benchmarks.inference --quick
"""
from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from asc_jax import inference
from asc_jax.audio.features import MelConfig
from asc_jax.models import build_model
from asc_jax.reparam import fuse
from benchmarks import common

COLUMNS = ("form", "batch", "params", "compile_s", "best_ms", "median_ms", "cpu_ms", "ms_per_clip", "clips_per_s",
           "vs_cp_mobile_deploy", "cpu_vs_cp_mobile_deploy", "max_logit_diff", "peak_host_mb", "peak_device_mb")


def _forms(seed: int) -> dict[str, nnx.Module]:
    rep = build_model("rep_mobile", rngs=nnx.Rngs(seed))
    cp = build_model("cp_mobile", rngs=nnx.Rngs(seed))
    return {
        "rep_mobile multi-branch (train form, eval mode)": rep,
        "rep_mobile fused (deploy)": fuse(rep, lambda: build_model("rep_mobile", rngs=nnx.Rngs(0), deploy=True)),
        "cp_mobile (BN, eval mode)": cp,
        "cp_mobile deploy (BN folded)": fuse(cp, lambda: build_model("cp_mobile", rngs=nnx.Rngs(0), deploy=True)),
    }


def _predictor(model: nnx.Module):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    fn = inference.jitted_forward(graphdef)
    return fn, (params, rest), sum(x.size for x in jax.tree.leaves(params))


def measure(batch: int, rounds: int, min_seconds: float, seed: int) -> list[dict]:
    mel = MelConfig()
    x = np.random.default_rng(seed).normal(size=(batch, mel.n_mels, mel.n_frames(mel.sample_rate)))
    x = jax.device_put(x.astype(np.float32))
    rows, calls, times, cpu_times = {}, {}, {}, {}
    with common.PeakMemory() as mem:
        for name, model in _forms(seed).items():
            predict, state, n_params = _predictor(model)
            t0 = time.perf_counter()
            compiled = predict.lower(state, x).compile()
            rows[name] = {"form": name, "batch": batch, "params": n_params,
                          "compile_s": time.perf_counter() - t0}
            calls[name] = (lambda c=compiled, s=state: jax.block_until_ready(c(s, x)))
            rows[name]["logits"] = np.asarray(calls[name]())
            times[name], cpu_times[name] = [], []
        for _ in range(rounds):
            for name, call in calls.items():
                timing = common.time_calls(call, iters=3, warmup=0, min_seconds=min_seconds)
                times[name] += timing.times
                cpu_times[name] += timing.cpu_times
    reference = rows["rep_mobile multi-branch (train form, eval mode)"]["logits"]
    cp_reference = rows["cp_mobile (BN, eval mode)"]["logits"]
    cp_deploy = min(times["cp_mobile deploy (BN folded)"])
    cp_deploy_cpu = float(np.median(cpu_times["cp_mobile deploy (BN folded)"]))
    out = []
    for name, row in rows.items():
        best, median = min(times[name]), float(np.median(times[name]))
        cpu = float(np.median(cpu_times[name]))
        ref = cp_reference if name.startswith("cp_mobile") else reference
        out.append({**{k: v for k, v in row.items() if k != "logits"},
                    "best_ms": 1000 * best, "median_ms": 1000 * median, "ms_per_clip": 1000 * best / batch,
                    "clips_per_s": batch / best, "vs_cp_mobile_deploy": f"{best / cp_deploy:.2f}x",
                    "cpu_ms": 1000 * cpu, "cpu_vs_cp_mobile_deploy": f"{cpu / cp_deploy_cpu:.2f}x",
                    "max_logit_diff": float(np.abs(row["logits"] - ref).max()), "n_timed": len(times[name]),
                    **mem.columns()})
    return out


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5, --quick 2)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    min_seconds = 0.2 if args.quick else 1.0
    rows = [row for b in args.batch_sizes for row in measure(b, rounds, min_seconds, args.seed)]
    notes = ["Wall time of one jitted forward pass on a device-resident log-mel batch, best and median "
             "over all timed calls; ms_per_clip, clips_per_s and vs_cp_mobile_deploy use the best (the "
             "least disturbed by other load on a shared machine). vs_cp_mobile_deploy = time / time of "
             "CP-Mobile with folded BN at the same batch (1.00x = as fast); cpu_ms / cpu_vs_cp_mobile_deploy: "
             "the same with the median CPU time of the process (all threads), which other jobs' load disturbs "
             "less. max_logit_diff: against the same "
             "network's BN form (fusion is exact up to float rounding). Peak memory is per batch size, "
             "all four forms together."]
    return common.report("inference", rows, args, columns=COLUMNS, notes=notes)


if __name__ == "__main__":
    main()
