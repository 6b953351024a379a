"""asc_jax against a PyTorch peer (eager and torch.compile), timed interleaved in one process.

Both sides do the same work from the same weights (benchmarks/torch_reference.py, checked by
tests/test_torch_reference.py):

  * train step, batch 128: 1-s waveforms -> log-mel (256 x 63) -> frequency mask (torchaudio
    FrequencyMasking, mask_param 48) -> CP-Mobile or Rep-Mobile (4 depthwise branches) in train
    mode -> cross-entropy -> Adam. asc_jax: `steps.make_train_step` (one jitted program, which
    also computes the logged metrics); PyTorch: `torch_reference.TrainStep`.
  * deploy inference, batch 1 and 64: the fused deploy model (Rep-Mobile after
    `asc_jax.reparam.fuse`, i.e. CP-Mobile with BN folded) on a log-mel batch (`--inference-input
    wave` adds the frontend). asc_jax: the jitted `asc_jax.inference.forward` (over 8-row slices on
    CPU, `asc_jax.microbatch`, as prediction runs it); PyTorch: the same network under
    `torch.inference_mode()`.

Implementations are timed in interleaved rounds (each round runs every implementation in turn),
so that load changes on a shared machine hit all of them alike; compare ratios, not absolute
numbers. torch.compile (inductor, which needs a C++ compiler on CPU) is tried and a failure is
reported in the table instead of ending the run.

Compile times: torch.compile's come from inductor's disk cache after the first run of a machine;
asc_jax's train step is timed cold (compile_s, a fresh persistent-cache folder per run) and as a
rerun reads it back (compile_warm_s: trace + lower + cache read, as `train.py` does with
`asc_jax.setup_compilation_cache`).

    python -m benchmarks.compare_torch                  # train batch 128, inference batch 1 and 64
    python -m benchmarks.compare_torch --quick          # train batch 32, one round
    python -m benchmarks.compare_torch --no-torch-compile --models cp_mobile
    python -m benchmarks.compare_torch --skip-train --inference-batch-sizes 1 8 64
"""
from __future__ import annotations

import copy
import functools
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import numpy as np
import optax
import torch
from flax import nnx

from asc_jax import inference, parallel
from asc_jax.audio import augment
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import logmel
from asc_jax.models import build_model, with_default_lowering
from asc_jax.reparam import fuse
from asc_jax.surgery import load_into, module_tree
from asc_jax.train import steps
from asc_jax.train.state import create_train_state
from benchmarks import common
from benchmarks import torch_reference as tr

IMPLS = ("asc_jax", "torch eager", "torch.compile")
TRAIN_COLUMNS = ("task", "model", "impl", "batch", "params", "compile_s", "compile_warm_s", "step_ms",
                 "best_step_ms", "step_cpu_ms", "clips_per_s", "vs_torch_eager", "vs_torch_eager_cp_mobile",
                 "best_vs_torch_eager_cp_mobile", "n_timed", "status")
INFER_COLUMNS = ("task", "model", "impl", "batch", "input", "params", "compile_s", "best_ms", "median_ms",
                 "cpu_ms", "ms_per_clip", "vs_torch_eager", "cpu_vs_torch_eager", "n_timed", "status")

README = Path(__file__).resolve().parent / "README.md"  # --update-readme writes its section


def _failure(exc: BaseException) -> str:
    return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


class Candidate:
    """One implementation of one task: `setup()` compiles (timed), `call()` runs one step."""

    def __init__(self, impl: str, setup, recompile=None):
        self.impl, self._setup = impl, setup
        self.recompile = recompile  # asc_jax: trace, lower and compile afresh, timed (disk cache)
        self.warm_compile_s: float | None = None
        self.call = None
        self.first_s: float | None = None
        self.status = "ok"
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def prepare(self) -> None:
        """Runs the setup and the first call (where compilation happens), timed as first_s."""
        t0 = time.perf_counter()
        try:
            self.call = self._setup()
            self.call()
        except Exception as exc:  # torch.compile without a working toolchain, for instance
            self.status, self.call = _failure(exc), None
            traceback.print_exc()
        self.first_s = time.perf_counter() - t0

    @property
    def compile_s(self) -> float | None:
        """Time to the first result beyond one steady-state call: the compilation overhead."""
        if not self.times:
            return self.first_s if self.status != "ok" else None
        return max(self.first_s - statistics.median(self.times), 0.0)

    def time(self, iters: int, min_seconds: float = 0.0) -> None:
        if self.call is None:
            return
        try:
            timing = common.time_calls(self.call, iters=iters, warmup=0, min_seconds=min_seconds)
        except Exception as exc:
            self.status, self.call = _failure(exc), None
            traceback.print_exc()
            return
        self.times += timing.times
        self.cpu_times += timing.cpu_times


# ----------------------------------------------------------------------------------------------
# Train step
# ----------------------------------------------------------------------------------------------
def _asc_jax_model(name: str, torch_model: torch.nn.Module, deploy: bool = False):
    """The asc_jax module holding `torch_model`'s weights (built abstractly: no eager init)."""
    options = with_default_lowering(name, {"deploy": deploy} if deploy else {})
    return load_into(lambda: build_model(name, rngs=nnx.Rngs(0), **options), tr.to_asc_jax_tree(torch_model))


def train_candidates(name: str, batch: int, lr: float, seed: int, use_compile: bool,
                     mesh=None) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    batches = [{"audio": rng.normal(0, 0.1, (batch, MelConfig().sample_rate)).astype(np.float32),
                "label": rng.integers(0, 10, batch).astype(np.int32)} for _ in range(2)]
    torch.manual_seed(seed)
    reference = tr.MODELS[name]()

    def asc_jax_setup(mesh=None):
        """The train step on one device, or with `mesh` per device under shard_map
        (`parallel.shard_step`, as train.py runs it with parallel.step="shard_map")."""
        model = _asc_jax_model(name, reference)
        tx = optax.adam(lr)
        graphdef, state = create_train_state(model, tx)
        aug = augment.AugmentConfig(roll=None, freq_mask=augment.FreqMaskConfig(), mixstyle=None)
        step_args = (graphdef, tx, logmel(MelConfig()), aug, steps.classification_loss, jax.random.key(seed))
        inputs = batches
        if mesh is None:
            build = functools.partial(steps.make_train_step, *step_args)
        else:
            def build():
                return jax.jit(steps.sharded_train_step_fn(mesh, *step_args), donate_argnums=0)
            state = parallel.put_state(state, mesh)
            inputs = [parallel.put_batch(b, mesh) for b in batches]
        compiled = build().lower(state, inputs[0]).compile()
        holder = {"state": state, "i": 0}
        if mesh is None:
            lowered_args[name] = (build, state, batches[0])

        def call():
            holder["state"], metrics = compiled(holder["state"], inputs[holder["i"] % 2])
            holder["i"] += 1
            jax.block_until_ready(metrics)
        return call

    def torch_setup(compile_: bool):
        def setup():
            step = tr.TrainStep(copy.deepcopy(reference), lr, compile=compile_, seed=seed)
            data = [(torch.from_numpy(b["audio"]), torch.from_numpy(b["label"]).long()) for b in batches]
            counter = {"i": 0}

            def call():
                step(*data[counter["i"] % 2])
                counter["i"] += 1
            return call
        return setup

    def asc_jax_recompile() -> float:
        """A rerun's compile: in-memory caches cleared, the step traced and lowered afresh, the
        executable read back from the persistent cache the first compile wrote (as train.py's
        `setup_compilation_cache`; torch.compile's compile_s is its disk cache's too)."""
        build, state, batch = lowered_args.pop(name)
        jax.clear_caches()
        t0 = time.perf_counter()
        build().lower(state, batch).compile()
        return time.perf_counter() - t0

    lowered_args = {}
    out = [Candidate("asc_jax", asc_jax_setup, recompile=asc_jax_recompile)]
    if mesh is not None:
        out.append(Candidate(f"asc_jax shard_map x{mesh.size}", functools.partial(asc_jax_setup, mesh)))
    out.append(Candidate("torch eager", torch_setup(False)))
    if use_compile:
        out.append(Candidate("torch.compile", torch_setup(True)))
    for c in out:
        c.params = tr.n_params(reference)
    return out


def run_train(models, batch, rounds, steps_per_round, lr, seed, use_compile, mesh=None) -> list[dict]:
    candidates = {(m, c.impl): c for m in models
                  for c in train_candidates(m, batch, lr, seed, use_compile, mesh)}
    for (model, impl), c in candidates.items():
        print(f"compiling train step: {model} / {impl}", flush=True)
        c.prepare()
        if c.recompile is not None and c.call is not None:
            c.warm_compile_s = c.recompile()
    for r in range(rounds):
        print(f"train round {r + 1}/{rounds}", flush=True)
        for c in candidates.values():
            c.time(steps_per_round)
    rows = []
    eager_cp = candidates.get(("cp_mobile", "torch eager"))
    for (model, impl), c in candidates.items():
        row = {"task": "train", "model": model, "impl": impl, "batch": batch, "params": c.params,
               "compile_s": c.compile_s, "status": c.status, "n_timed": len(c.times)}
        if c.warm_compile_s is not None:
            row["compile_warm_s"] = c.warm_compile_s
        if c.times:
            med = statistics.median(c.times)
            row.update(step_ms=1000 * med, best_step_ms=1000 * min(c.times),
                       step_cpu_ms=1000 * statistics.median(c.cpu_times), clips_per_s=batch / med)
            eager = candidates.get((model, "torch eager"))
            if eager is not None and eager.times:
                row["vs_torch_eager"] = f"{statistics.median(eager.times) / med:.2f}x"
            if eager_cp is not None and eager_cp.times:
                row["vs_torch_eager_cp_mobile"] = f"{statistics.median(eager_cp.times) / med:.2f}x"
                row["best_vs_torch_eager_cp_mobile"] = f"{min(eager_cp.times) / min(c.times):.2f}x"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Deploy inference
# ----------------------------------------------------------------------------------------------
def inference_candidates(batch: int, input_kind: str, seed: int, use_compile: bool,
                         deploy_pair) -> list[Candidate]:
    jax_deploy, torch_deploy = deploy_pair
    rng = np.random.default_rng(seed)
    mel = MelConfig()
    if input_kind == "wave":
        x = rng.normal(0, 0.1, (batch, mel.sample_rate)).astype(np.float32)
    else:
        x = rng.normal(size=(batch, mel.n_mels, mel.n_frames(mel.sample_rate))).astype(np.float32)

    def asc_jax_setup():
        graphdef, state = nnx.split(jax_deploy)
        features = logmel(mel).features if input_kind == "wave" else None
        compiled = inference.jitted_forward(graphdef, features).lower(state, x).compile()
        # The input is passed as NumPy, as prediction receives it: the host->device copy is timed.
        return lambda: jax.block_until_ready(compiled(state, x))

    def torch_setup(compile_: bool):
        def setup():
            model = copy.deepcopy(torch_deploy).eval()
            frontend = tr.LogMel() if input_kind == "wave" else None

            def forward(t):
                if frontend is not None:
                    t = frontend(t)
                return model(t[:, None])
            fn = torch.compile(forward) if compile_ else forward
            tx = torch.from_numpy(x)

            def call():
                with torch.inference_mode():
                    return fn(tx)
            return call
        return setup

    out = [Candidate("asc_jax", asc_jax_setup), Candidate("torch eager", torch_setup(False))]
    if use_compile:
        out.append(Candidate("torch.compile", torch_setup(True)))
    return out


def run_inference(batch_sizes, inputs, rounds, min_seconds, seed, use_compile) -> list[dict]:
    torch.manual_seed(seed)
    train_form = tr.rep_mobile()
    with torch.no_grad():  # non-trivial BN statistics, so that the fold matters
        for m in train_form.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.3)
    jax_train = _asc_jax_model("rep_mobile", train_form)
    options = with_default_lowering("rep_mobile", {"deploy": True})
    jax_deploy = fuse(jax_train, lambda: build_model("rep_mobile", rngs=nnx.Rngs(0), **options))
    torch_deploy = tr.load_asc_jax_tree(tr.rep_mobile(deploy=True), module_tree(jax_deploy)).eval()
    n_params = tr.n_params(torch_deploy)
    rows = []
    for input_kind in inputs:
        for batch in batch_sizes:
            candidates = inference_candidates(batch, input_kind, seed, use_compile, (jax_deploy, torch_deploy))
            for c in candidates:
                print(f"compiling inference: batch {batch}, {input_kind} / {c.impl}", flush=True)
                c.prepare()
            for _ in range(rounds):
                for c in candidates:
                    c.time(3, min_seconds)
            eager = next(c for c in candidates if c.impl == "torch eager")
            for c in candidates:
                row = {"task": "deploy inference", "model": "rep_mobile fused", "impl": c.impl,
                       "batch": batch, "input": input_kind, "params": n_params, "compile_s": c.compile_s,
                       "status": c.status, "n_timed": len(c.times)}
                if c.times:
                    best, cpu = min(c.times), statistics.median(c.cpu_times)
                    row.update(best_ms=1000 * best, median_ms=1000 * statistics.median(c.times),
                               cpu_ms=1000 * cpu, ms_per_clip=1000 * best / batch)
                    if eager.times:
                        row["vs_torch_eager"] = f"{min(eager.times) / best:.2f}x"
                        row["cpu_vs_torch_eager"] = f"{statistics.median(eager.cpu_times) / cpu:.2f}x"
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Targets (the issue's) and main
# ----------------------------------------------------------------------------------------------
def _ratio(rows, **match) -> float | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            key = "vs_torch_eager_cp_mobile" if match.get("task") == "train" else "vs_torch_eager"
            return float(row[key][:-1]) if key in row else None
    return None


def targets(train_rows, infer_rows, batch_sizes) -> list[dict]:
    """The issue's targets, as ratios from this run (>= target: met)."""
    out = []

    def add(what, got, target):
        out.append({"target": what, "required": f">= {target:g}x" if target else "< 10 s",
                    "measured": "n/a" if got is None else (f"{got:.2f}x" if target else f"{got:.1f} s"),
                    "met": "n/a" if got is None else ("yes" if (got >= target if target else got < 10) else "no")})

    if train_rows:
        for impl in sorted({row["impl"] for row in train_rows if row["impl"].startswith("asc_jax")}):
            add(f"train: {impl} cp_mobile vs torch eager cp_mobile",
                _ratio(train_rows, task="train", model="cp_mobile", impl=impl), 1.5)
            add(f"train: {impl} rep_mobile (4 branches) vs torch eager cp_mobile",
                _ratio(train_rows, task="train", model="rep_mobile", impl=impl), 1.0)
        for row in train_rows:
            if row["impl"] == "asc_jax":
                add(f"train: asc_jax {row['model']} compile (trace + lower + XLA compile)",
                    row["compile_s"], 0)
                add(f"train: asc_jax {row['model']} compile from the disk cache (trace + lower + read), "
                    "as torch.compile's", row.get("compile_warm_s"), 0)
    for batch, target in ((1, 3.0), (64, 2.0)):
        if batch in batch_sizes and infer_rows:
            add(f"deploy inference batch {batch}: asc_jax vs torch eager",
                _ratio(infer_rows, task="deploy inference", impl="asc_jax", batch=batch, input="mel"), target)
    return out


def thread_settings(torch_threads: int) -> str:
    return (f"PyTorch {torch.__version__}: torch.set_num_threads({torch_threads}) "
            f"(intra-op; get_num_threads() = {torch.get_num_threads()}), interop threads "
            f"{torch.get_num_interop_threads()}, {torch.__config__.parallel_info().splitlines()[-1].strip()}. "
            f"JAX {jax.__version__}, backend {jax.default_backend()}: XLA:CPU's default intra-op thread "
            f"pool (one thread per core, {len(os.sched_getaffinity(0))} usable cores); XLA_FLAGS="
            f"'{os.environ.get('XLA_FLAGS', '')}'.")


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cp_mobile", "rep_mobile"], choices=sorted(tr.MODELS))
    parser.add_argument("--batch-size", type=int, default=None, help="train batch (default 128, --quick 32)")
    parser.add_argument("--inference-batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--inference-input", choices=("mel", "wave", "both"), default="mel",
                        help="deploy inference on log-mels (model only) or waveforms (frontend + model)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, --quick 1)")
    parser.add_argument("--steps-per-round", type=int, default=None,
                        help="train steps per implementation and round (default 3, --quick 2)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (both sides)")
    parser.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: the usable cores)")
    parser.add_argument("--no-torch-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--cpu-devices", type=int, default=len(os.sched_getaffinity(0)),
                        help="XLA:CPU devices for the shard_map train rows (parallel.step='shard_map', "
                             "one device per core by default; 1: no such rows). Ignored off CPU")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--update-readme", action="store_true",
                        help="write the machine, versions, targets and table into benchmarks/README.md")
    args = parser.parse_args(argv)
    # Before anything starts JAX's backend: the CPU devices the shard_map rows split the batch over.
    if args.cpu_devices > 1:
        parallel.set_cpu_devices(args.cpu_devices)
    torch.set_num_threads(args.torch_threads)
    # A fresh persistent compilation cache: compile_s is a cold compile, compile_warm_s reads it back.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="asc_jax_compare_xla_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    batch = args.batch_size or (32 if args.quick else 128)
    rounds = args.rounds or (1 if args.quick else 3)
    steps_per_round = args.steps_per_round or (2 if args.quick else 3)
    use_compile = not args.no_torch_compile
    inputs = ("mel", "wave") if args.inference_input == "both" else (args.inference_input,)
    t0 = time.perf_counter()
    mesh = None
    if args.cpu_devices > 1 and jax.default_backend() == "cpu" and batch % args.cpu_devices == 0:
        mesh = parallel.make_mesh(args.cpu_devices)
    train_rows = [] if args.skip_train else run_train(args.models, batch, rounds, steps_per_round, args.lr,
                                                      args.seed, use_compile, mesh)
    infer_rows = [] if args.skip_inference else run_inference(
        args.inference_batch_sizes, inputs, rounds, 0.2 if args.quick else 1.0, args.seed, use_compile)
    target_rows = targets(train_rows, infer_rows, args.inference_batch_sizes)
    notes = [
        thread_settings(args.torch_threads),
        "Train: step_ms / step_cpu_ms are the median wall / process-CPU time (all threads) of the timed "
        "steps, best_step_ms the fastest (least disturbed by other load); vs_torch_eager = torch eager "
        "median step time / this median step time for the same model (higher is faster), "
        "vs_torch_eager_cp_mobile the same against PyTorch eager CP-Mobile, best_vs_... with the best times. compile_s: time to "
        "the first result (asc_jax: trace, lower, XLA compile, first step; torch.compile: dynamo + "
        "inductor on the first forward and backward) minus one steady-state call. compile_warm_s "
        "(asc_jax): a rerun's compile, with JAX's in-memory caches cleared, traced and lowered afresh and "
        "the executable read from the persistent compilation cache the first compile wrote (a fresh "
        "temporary folder per run, so compile_s is cold), as train.py runs with `setup_compilation_cache`.",
        "torch.compile keeps inductor's compiled kernels in an on-disk cache (/tmp/torchinductor_$USER): "
        "its compile_s is large only on the first run of a machine.",
        "Inference: best / median wall time of one call over all timed calls (input on the host, as "
        "prediction gets it); vs_torch_eager uses the best (least disturbed), cpu_vs_torch_eager the "
        "median CPU time.",
        f"Whole run {time.perf_counter() - t0:.0f} s; load average at the end "
        f"{[round(x, 2) for x in os.getloadavg()]} on {len(os.sched_getaffinity(0))} usable cores.",
        "Targets (the issue's ratios from this run):\n\n" + common.markdown_table(target_rows),
    ]
    result = common.report("compare_torch", [*train_rows, *infer_rows], args,
                           columns=TRAIN_COLUMNS + tuple(c for c in INFER_COLUMNS if c not in TRAIN_COLUMNS),
                           notes=notes)
    if args.update_readme:
        common.replace_section(README, "compare_torch", readme_section(result, target_rows, argv))
        print(f"updated {README}")
    return result



def readme_section(result: dict, target_rows: list[dict], argv) -> str:
    """The README's record of a run: command, date, machine and versions, targets, the table."""
    m = result["machine"]
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out-dir" in args:  # where the JSON went does not change the numbers
        del args[args.index("--out-dir"):args.index("--out-dir") + 2]
    command = " ".join(["python -m benchmarks.compare_torch", *args])
    return "\n\n".join([
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')}: {m['cpu']}, {m['usable_cores']} usable cores, "
        f"load average at the end {m['load_average_1_5_15']}; Python {m['python']}, jax {m['jax']}, "
        f"PyTorch {torch.__version__}. Ratios > 1: asc_jax faster; train from medians, inference from best times.",
        common.markdown_table(target_rows), result["table"]])


if __name__ == "__main__":
    main()
