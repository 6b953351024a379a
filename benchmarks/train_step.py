"""Training throughput of the jitted train step (clips/s), compile time reported separately.

The step is `asc_jax.train.steps.make_train_step` exactly as `train_and_evaluate` builds it:
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

`--compare-xla-convs` adds a row where DepthwiseConv/PointwiseConv run as plain `nnx.Conv`
(XLA's grouped-convolution lowering) instead of the taps/matmul forms `asc_jax.models.layers`
uses on CPU, to measure what those forms buy.
"""
from __future__ import annotations

import contextlib
import json
import time

import jax
import numpy as np
import optax
from flax import nnx

from asc_jax.audio import augment
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import FRONTENDS, Frontend, logmel
from asc_jax.models import build_model, layers
from asc_jax.train import steps
from asc_jax.train.state import create_train_state
from benchmarks import common

COLUMNS = ("model", "conv_lowering", "batch", "params", "build_s", "trace_lower_s", "compile_s",
           "step_ms", "step_cpu_ms", "clips_per_s", "peak_host_mb", "peak_device_mb")


@contextlib.contextmanager
def xla_conv_lowering():
    """Temporarily run DepthwiseConv/PointwiseConv through nnx.Conv (XLA's conv lowering)."""
    saved = layers.DepthwiseConv.__call__, layers.PointwiseConv.__call__
    layers.DepthwiseConv.__call__ = layers.PointwiseConv.__call__ = nnx.Conv.__call__
    try:
        yield
    finally:
        layers.DepthwiseConv.__call__, layers.PointwiseConv.__call__ = saved


PASST_SIZES = {"small": {"embed_dim": 192, "depth": 4, "num_heads": 3}, "passt_s": {}}
PASST_RECIPE = {"n_classes": 10, "s_patchout_f": 6}  # configs/passt_tau.py


def measure(model_name: str, options: dict, batch_size: int, n_steps: int, seed: int,
            frontend: Frontend = logmel(MelConfig()), lowering: str = "auto") -> dict:
    """Builds, compiles and times the train step; returns one table row."""
    # The roll runs on the host (grain); the band is drawn at the frontend's resolution.
    aug = augment.AugmentConfig(roll=None, freq_mask=augment.FreqMaskConfig(n_mels=frontend.n_mels))
    n_samples = frontend.sample_rate  # 1-s clips, as in DCASE2024 Task 1
    rng = np.random.default_rng(seed)
    batches = [{"audio": rng.normal(0, 0.1, (batch_size, n_samples)).astype(np.float32),
                "label": rng.integers(0, 10, batch_size).astype(np.int32)} for _ in range(2)]
    with common.PeakMemory() as mem:
        t0 = time.perf_counter()
        model = build_model(model_name, rngs=nnx.Rngs(params=seed, default=seed + 1), **options)
        tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.01, 10, 1000))
        graphdef, state = create_train_state(model, tx)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        step = steps.make_train_step(graphdef, tx, frontend, aug, steps.classification_loss,
                                     jax.random.key(seed))
        t1 = time.perf_counter()
        lowered = step.lower(state, batches[0])
        t2 = time.perf_counter()
        compiled = lowered.compile()
        t3 = time.perf_counter()
        i = 0

        def one_step():
            nonlocal state, i
            state, metrics = compiled(state, batches[i % 2])
            i += 1
            jax.block_until_ready(metrics)

        timing = common.time_calls(one_step, iters=n_steps, warmup=1)
    return {"model": model_name, "conv_lowering": lowering, "batch": batch_size, "params": n_params,
            "build_s": t1 - t0, "trace_lower_s": t2 - t1, "compile_s": t3 - t2,
            "step_ms": 1000 * timing.median, "step_cpu_ms": 1000 * timing.cpu_median,
            "clips_per_s": batch_size / timing.median,
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
    args = parser.parse_args(argv)
    batch = args.batch_size or (32 if args.quick else 128)
    n_steps = args.steps or (2 if args.quick else 10)
    rows = [measure(args.model, args.model_options, batch, n_steps, args.seed)]
    if args.compare_xla_convs:
        with xla_conv_lowering():
            rows.append(measure(args.model, args.model_options, batch, n_steps, args.seed, lowering="xla"))
    size = args.passt if args.passt != "auto" else ("small" if jax.default_backend() == "cpu" else "passt_s")
    if size != "none":
        row = measure("passt", {**PASST_RECIPE, **PASST_SIZES[size], **args.passt_options}, batch, n_steps,
                      args.seed, frontend=FRONTENDS.get("passt")({}), lowering="n/a")
        rows.append({**row, "model": f"passt ({size})"})
    mel = MelConfig()
    notes = [f"1-s clips at {mel.sample_rate} Hz, log-mel {mel.n_mels}x{mel.n_frames(mel.sample_rate)} on "
             "device, freq-mask + Freq-MixStyle, Adam; step_ms is the median wall time of the timed steps "
             "after one warm-up step, step_cpu_ms the median CPU time of this process (all threads) in them; "
             "compile time is not included in clips_per_s. The PaSST row runs PaSST's frontend (128 "
             "mels x 100 frames), its frequency mask and patchout (6 of 12 rows), as configs/passt_tau.py."]
    return common.report("train_step", rows, args, columns=COLUMNS, notes=notes)


if __name__ == "__main__":
    main()
