"""Training throughput of the jitted train step (clips/s), compile time reported separately.

The step is `asc_jax.train.steps.train_step_fn`, jitted as `train_and_evaluate` runs it:
1-s waveforms (numpy, as grain delivers them) -> on-device log-mel (default MelConfig:
256 mels, n_fft 4096) -> frequency mask + Freq-MixStyle -> model -> cross-entropy -> Adam.
The waveform roll runs on the host in the data pipeline and is not part of the step.

    python -m benchmarks.train_step                 # Rep-Mobile, batch 128
    python -m benchmarks.train_step --quick         # batch 32, 2 timed steps
    python -m benchmarks.train_step --compare-xla-convs   # + row with XLA's own conv lowering
    python -m benchmarks.train_step --passt passt_s       # the PaSST row at PaSST-S size (GPU)

A PaSST row (the teacher fine-tuning step: PaSST's own frontend, frequency patchout 6 of 12 rows,
as configs/passt_tau.py) follows the student rows: a small PaSST (192-wide, 4 blocks) by default
on CPU, PaSST-S (86 M parameters) on an accelerator; `--passt none` leaves it out, and
`--passt-options '{"remat": true, "compute_dtype": "bfloat16"}'` times the memory options.

`--steps-per-dispatch K` adds the GPU pipeline's rows: the training split resident on the device
(`data.on_device`: int16 waveforms, shuffle, roll and gather inside the program) with one step
and with K steps per dispatch (`optim.steps_per_dispatch`, a `lax.scan`), timed per step over
whole dispatches. `--compute-dtype bfloat16` runs every row in the bfloat16 compute mode
(`optim.compute_dtype`). Every row states the extrapolated wall time of the paper's full recipe
(150 epochs of split 100, 139,620 clips) at its throughput, compile excluded.

The model runs with the conv_lowering a training run records on this backend
(`layers.default_lowering`: "taps" on CPU, "xla" on an accelerator), shown in the table.
`--compare-xla-convs` adds a row with `conv_lowering="xla"` (every conv of the model as XLA's
convolution and its autodiff) to measure what the CPU forms buy (models with that option).
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np
import optax
from flax import nnx

from asc_jax.audio import augment
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import FRONTENDS, Frontend, logmel
from asc_jax.models import build_model, with_default_lowering
from asc_jax.models.registry import CONV_LOWERING_MODELS
from asc_jax.train import device_data, dispatch, steps
from asc_jax.train.state import create_train_state
from benchmarks import common

COLUMNS = ("model", "conv_lowering", "data", "dtype", "batch", "params", "build_s", "trace_lower_s", "compile_s",
           "step_ms", "step_cpu_ms", "clips_per_s", "full_recipe_h", "peak_host_mb", "peak_device_mb")
# The paper's recipe: 150 epochs of split 100 (139,620 training clips).
FULL_RECIPE_CLIPS = 150 * 139_620


PASST_SIZES = {"small": {"embed_dim": 192, "depth": 4, "num_heads": 3}, "passt_s": {}}
PASST_RECIPE = {"n_classes": 10, "s_patchout_f": 6}  # configs/passt_tau.py


def build_step(model_name: str, options: dict, seed: int, frontend: Frontend = logmel(MelConfig()),
               compute_dtype: str = "float32"):
    """The model's train state and its (unjitted) train step: the options the step runs with
    (the backend's default conv lowering added, as a training run records it), state, step_fn.
    The roll runs on the host (grain), so the step's augmentation is the frequency mask and
    Freq-MixStyle."""
    aug = augment.AugmentConfig(roll=None, freq_mask=augment.FreqMaskConfig(n_mels=frontend.n_mels))
    options = with_default_lowering(model_name, options)
    model = build_model(model_name, rngs=nnx.Rngs(params=seed, default=seed + 1), **options)
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.01, 10, 1000))
    graphdef, state = create_train_state(model, tx)
    step_fn = steps.train_step_fn(graphdef, tx, frontend, aug, steps.classification_loss,
                                  jax.random.key(seed), compute_dtype=compute_dtype)
    return options, state, step_fn


def host_batches(rng: np.random.Generator, batch_size: int, n_samples: int, n: int = 2) -> list[dict]:
    """`n` numpy batches of noise clips and labels, as grain delivers them (alternated by the
    timing loops, so that no call reuses the previous one's input buffer)."""
    return [{"audio": rng.normal(0, 0.1, (batch_size, n_samples)).astype(np.float32),
             "label": rng.integers(0, 10, batch_size).astype(np.int32)} for _ in range(n)]


def measure(model_name: str, options: dict, batch_size: int, n_steps: int, seed: int,
            frontend: Frontend = logmel(MelConfig()), *, on_device: bool = False,
            steps_per_dispatch: int = 1, compute_dtype: str = "float32") -> dict:
    """Builds, compiles and times the train step; returns one table row.

    Host data (default): two numpy batches alternate, transferred at every step, as grain's are.
    on_device: a split of 8 batches' worth of int16 clips lives on the device and each dispatch
    runs `steps_per_dispatch` steps on batches drawn there (`dispatch.on_device`)."""
    # Host data: the roll ran on the host (grain); on device it is part of the program.
    n_samples = frontend.sample_rate  # 1-s clips, as in DCASE2024 Task 1
    rng = np.random.default_rng(seed)
    k = steps_per_dispatch if on_device else 1
    with common.PeakMemory() as mem:
        t0 = time.perf_counter()
        options, state, step_fn = build_step(model_name, options, seed, frontend, compute_dtype)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        if on_device:
            audio = rng.normal(0, 0.1, (8 * batch_size, n_samples)).astype(np.float32)
            q, scale = device_data.quantize_int16(audio)
            split = jax.device_put(device_data.DeviceSplit(q, scale, rng.integers(0, 10, len(q)).astype(np.int32), {}))
            run = dispatch.on_device(step_fn, key=jax.random.key(seed + 2), batch_size=batch_size,
                                     roll=augment.RollConfig(), sr=frontend.sample_rate)
            inputs = [(split,)] * 2  # k is static: the compiled program takes the rest
            lower = lambda: run.lower(state, split, k)  # noqa: E731
        else:
            batches = host_batches(rng, batch_size, n_samples)
            run = jax.jit(step_fn, donate_argnums=0)
            inputs = [(b,) for b in batches]
            lower = lambda: run.lower(state, batches[0])  # noqa: E731
        t1 = time.perf_counter()
        lowered = lower()
        t2 = time.perf_counter()
        compiled = lowered.compile()
        t3 = time.perf_counter()
        i = 0

        def one_dispatch():
            nonlocal state, i
            args = inputs[i % 2]
            state, metrics = compiled(state, *args)
            i += 1
            jax.block_until_ready(metrics)

        timing = common.time_calls(one_dispatch, iters=max(1, n_steps // k), warmup=1)
    step_s = timing.median / k
    data = f"device, {k}/dispatch" if on_device else "host"
    return {"model": model_name, "conv_lowering": options.get("conv_lowering", "n/a"), "data": data, "dtype": compute_dtype,
            "batch": batch_size, "params": n_params,
            "build_s": t1 - t0, "trace_lower_s": t2 - t1, "compile_s": t3 - t2,
            "step_ms": 1000 * step_s, "step_cpu_ms": 1000 * timing.cpu_median / k,
            "clips_per_s": batch_size / step_s, "full_recipe_h": FULL_RECIPE_CLIPS * step_s / batch_size / 3600,
            "step_times_s": list(timing.times), **mem.columns()}


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rep_mobile", help="registered model name")
    parser.add_argument("--model-options", type=json.loads, default={}, help="JSON config overrides")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10, --quick: 2)")
    parser.add_argument("--compare-xla-convs", action="store_true",
                        help="add a row with XLA's grouped/1x1 conv lowering instead of taps/matmul")
    parser.add_argument("--passt", choices=("auto", "none", *PASST_SIZES), default="auto",
                        help="PaSST row: small, passt_s, none; auto = passt_s on an accelerator, else small")
    parser.add_argument("--passt-options", type=json.loads, default={}, help="JSON PaSST overrides")
    parser.add_argument("--steps-per-dispatch", type=int, default=0,
                        help="add rows with the split on the device, 1 and this many steps per dispatch")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the train step's compute dtype (optim.compute_dtype), every row")
    args = parser.parse_args(argv)
    batch = args.batch_size or (32 if args.quick else 128)
    n_steps = args.steps or (2 if args.quick else 10)
    dtype = {"compute_dtype": args.compute_dtype}
    rows = [measure(args.model, args.model_options, batch, n_steps, args.seed, **dtype)]
    for k in sorted({1, args.steps_per_dispatch}) if args.steps_per_dispatch else ():
        rows.append(measure(args.model, args.model_options, batch, max(n_steps, k), args.seed, on_device=True,
                            steps_per_dispatch=k, **dtype))
    if args.compare_xla_convs and args.model in CONV_LOWERING_MODELS:
        rows.append(measure(args.model, {**args.model_options, "conv_lowering": "xla"}, batch, n_steps, args.seed,
                            **dtype))
    size = args.passt if args.passt != "auto" else ("small" if jax.default_backend() == "cpu" else "passt_s")
    if size != "none":
        row = measure("passt", {**PASST_RECIPE, **PASST_SIZES[size], **args.passt_options}, batch, n_steps,
                      args.seed, frontend=FRONTENDS.get("passt")({}), **dtype)
        rows.append({**row, "model": f"passt ({size})"})
    mel = MelConfig()
    notes = [f"1-s clips at {mel.sample_rate} Hz, log-mel {mel.n_mels}x{mel.n_frames(mel.sample_rate)} on "
             "device, freq-mask + Freq-MixStyle, Adam; step_ms is the median wall time of the timed steps "
             "after one warm-up step, step_cpu_ms the median CPU time of this process (all threads) in them; "
             "compile time is not included in clips_per_s. The PaSST row runs PaSST's frontend (128 "
             "mels x 100 frames), its frequency mask and patchout (6 of 12 rows), as configs/passt_tau.py. "
             "data: host = a numpy batch transferred per step (the grain pipeline's own cost is "
             "benchmarks.data_pipeline); device = the split resident on the device (data.on_device), "
             "k steps per dispatch (optim.steps_per_dispatch), times per step. full_recipe_h: 150 epochs "
             "x 139,620 clips at this throughput, compile excluded."]
    return common.report("train_step", rows, args, columns=COLUMNS, notes=notes)


if __name__ == "__main__":
    main()
