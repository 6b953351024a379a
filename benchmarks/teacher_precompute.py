"""PaSST teacher-logit precompute throughput (clips/s), compile time reported separately.

The teacher function is what a teacher-logit store runs per batch: replay the stored waveform
roll, PaSST's own log-mel frontend (128 mels, hop 320), replay the stored frequency mask
(converted to 128 bins), PaSST forward in eval mode -> 10 logits. Two measurements per size:

  * teacher forward: the jitted function alone on a device-resident batch;
  * end to end: `asc_jax.distill.precompute` over several batches with one view (augmentation
    sampling, host transfers, the logit store written to a temporary directory).

Sizes: `passt_s` is the real PaSST-S layout (12 blocks, 768 wide, 85M parameters) with a 10-class
head; `small` is a 4-block, 192-wide PaSST for quick comparisons. Parameters are random (the
cost does not depend on their values).

    python -m benchmarks.teacher_precompute                      # small and passt_s, batch 16
    python -m benchmarks.teacher_precompute --quick              # batch 4
    python -m benchmarks.teacher_precompute --sizes passt_s --batch-size 32
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from asc_jax import distill, inference
from asc_jax.audio import augment
from asc_jax.audio.passt_frontend import PaSSTFrontendConfig, passt_logmel
from asc_jax.data.tau import CLASSES
from asc_jax.models import build_model
from benchmarks import common

SIZES = {
    "small": dict(embed_dim=192, depth=4, num_heads=3),
    "passt_s": {},
}
COLUMNS = ("size", "params_m", "batch", "tokens", "build_s", "compile_s", "forward_ms", "forward_cpu_ms",
           "forward_clips_per_s", "end_to_end_clips_per_s", "peak_host_mb", "peak_device_mb")
# What a store samples per clip: a roll and a frequency mask (MixStyle couples the batch and is
# applied fresh during student training, so stores never hold it).
STORE_AUG = augment.AugmentConfig(roll=augment.RollConfig(), freq_mask=augment.FreqMaskConfig(), mixstyle=None)


def make_teacher(model: nnx.Module, frontend: PaSSTFrontendConfig):
    """The jitted `inference.forward` of a PaSST with its frontend and the store's replays, as
    `teachers.make_apply` builds it, with the weights `(params, rest)` as an argument."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def replayed(wave, aug_params):
        wave = augment.apply_augment(wave, aug_params, STORE_AUG)
        return augment.apply_augment(passt_logmel(wave, frontend), aug_params, STORE_AUG)

    return jax.jit(inference.forward(graphdef, replayed)), (params, rest)


def measure(size: str, batch: int, n_batches: int, iters: int, seed: int) -> dict:
    frontend = PaSSTFrontendConfig()
    rng = np.random.default_rng(seed)
    waves = rng.normal(0, 0.1, (n_batches * batch, frontend.sample_rate)).astype(np.float32)
    files = [f"audio/clip{i}.wav" for i in range(len(waves))]
    sample_aug = augment.example_sampler(STORE_AUG)
    with common.PeakMemory() as mem:
        t0 = time.perf_counter()
        model = build_model("passt", rngs=nnx.Rngs(seed), n_classes=len(CLASSES), **SIZES[size])
        teacher, state = make_teacher(model, frontend)
        n_params = sum(x.size for x in jax.tree.leaves(state[0]))
        t1 = time.perf_counter()
        wave = jax.device_put(waves[:batch])
        aug_params = sample_aug(distill.view_keys(seed, np.arange(batch), 0))  # also warms the sampler
        compiled = teacher.lower(state, wave, aug_params).compile()
        t2 = time.perf_counter()
        forward = common.time_calls(lambda: jax.block_until_ready(compiled(state, wave, aug_params)),
                                    iters=iters, warmup=1)
        with tempfile.TemporaryDirectory() as tmp:
            t3 = time.perf_counter()
            distill.precompute(
                Path(tmp) / "store", teachers={f"passt-{size}": lambda w, p: compiled(state, w, p)},
                batches=[(files[i:i + batch], waves[i:i + batch]) for i in range(0, len(files), batch)],
                n_views=1, sample_aug=sample_aug, seed=seed, class_names=CLASSES,
                meta={"augment": augment.config_to_dict(STORE_AUG), "frontend": dataclasses.asdict(frontend),
                      "benchmark": True})
            end_to_end = time.perf_counter() - t3
    cfg = model.config
    f_patches = (cfg.n_mels - cfg.patch_size) // cfg.fstride + 1
    t_patches = (frontend.n_frames(frontend.sample_rate) - cfg.patch_size) // cfg.tstride + 1
    return {"size": size, "params_m": n_params / 1e6, "batch": batch, "tokens": f_patches * t_patches + 2,
            "build_s": t1 - t0, "compile_s": t2 - t1, "forward_ms": 1000 * forward.median,
            "forward_cpu_ms": 1000 * forward.cpu_median,
            "forward_clips_per_s": batch / forward.median, "end_to_end_clips_per_s": len(files) / end_to_end,
            "forward_times_s": list(forward.times), **mem.columns()}


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "passt_s"])
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (--quick: 4)")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches of the end-to-end precompute (default 4, --quick 2)")
    parser.add_argument("--iters", type=int, default=None, help="timed forward calls (default 5, --quick 2)")
    args = parser.parse_args(argv)
    batch = args.batch_size or (4 if args.quick else 16)
    n_batches = args.batches or (2 if args.quick else 4)
    iters = args.iters or (2 if args.quick else 5)
    rows = [measure(size, batch, n_batches, iters, args.seed) for size in args.sizes]
    notes = ["1-s clips at 32 kHz (100 frames x 128 mels -> 12x9 patches + 2 tokens). "
             "forward_ms / forward_cpu_ms: median wall / CPU time of the jitted teacher function after a "
             f"warm-up call; end_to_end: distill.precompute over {n_batches} batches, 1 view, store written "
             "(teacher compile excluded)."]
    return common.report("teacher_precompute", rows, args, columns=COLUMNS, notes=notes)


if __name__ == "__main__":
    main()
