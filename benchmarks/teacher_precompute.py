"""PaSST teacher-logit precompute throughput (clips/s), compile time reported separately.

The teacher function is what a teacher-logit store runs per batch: replay the stored waveform
roll, PaSST's own log-mel frontend (128 mels, hop 320), replay the stored frequency mask
(converted to 128 bins), PaSST forward in eval mode -> 10 logits. Two measurements per size:

  * teacher forward: the jitted function alone on a device-resident batch;
  * end to end: `asc_jax.distill.precompute` over several batches with one view (clips read from
    disk and resampled, augmentation sampling, `inference.predict`'s batching, host transfers, the
    logit store written to a temporary directory). Every precompute builds its teacher function
    afresh: warm-up runs fill a persistent compilation cache that the timed runs load from, and
    the run over one batch is subtracted from the run over all, leaving the rate of the further
    batches.

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
import soundfile as sf
from flax import nnx

from asc_jax import distill, inference
from asc_jax.audio import augment
from asc_jax.audio.frontends import FRONTENDS
from asc_jax.audio.passt_frontend import PaSSTFrontendConfig, passt_logmel
from asc_jax.config import Config, DataConfig
from asc_jax.data.tau import CLASSES, TAU_SAMPLE_RATE
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
    `distill.make_apply` builds it, with the weights `(params, rest)` as an argument."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def replayed(wave, aug_params):
        wave = augment.apply_augment(wave, aug_params, STORE_AUG)
        return augment.apply_augment(passt_logmel(wave, frontend), aug_params, STORE_AUG)

    return inference.jitted_forward(graphdef, replayed), (params, rest)


def write_clips(root: Path, n: int, seed: int) -> Path:
    """n one-second noise clips as a TAU-layout dataset (44.1 kHz float wavs, all in split 100)."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    names = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        names.append((f"audio/{label}-lyon-{i}-{i}-0-a.wav", label, f"lyon-{i}"))
        sf.write(root / names[-1][0], rng.normal(0, 0.1, TAU_SAMPLE_RATE).astype(np.float32),
                 TAU_SAMPLE_RATE, subtype="FLOAT")
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n"
                                   + "".join(f"{f}\t{label}\t{where}\ta\n" for f, label, where in names))
    (root / "split100.csv").write_text("filename\n" + "".join(f"{f}\n" for f, _, _ in names))
    return root


def precompute_seconds(root: Path, teacher: distill.Teacher, batch: int, seed: int) -> float:
    """Wall time of `distill.precompute` over the clips under `root`, one view."""
    config = Config(seed=seed, data=DataConfig(root=str(root), generate=False, train_split="100"),
                    augment=STORE_AUG)
    t0 = time.perf_counter()
    distill.precompute(root / "store", config=config, teachers=[teacher], n_views=1, batch_size=batch,
                       overwrite=True, progress=False)
    return time.perf_counter() - t0


def measure(size: str, batch: int, n_batches: int, iters: int, seed: int) -> dict:
    frontend = PaSSTFrontendConfig()
    rng = np.random.default_rng(seed)
    waves = rng.normal(0, 0.1, (batch, frontend.sample_rate)).astype(np.float32)
    sample_aug = augment.example_sampler(STORE_AUG, frontend.sample_rate)
    with common.PeakMemory() as mem:
        t0 = time.perf_counter()
        model = build_model("passt", rngs=nnx.Rngs(seed), n_classes=len(CLASSES), **SIZES[size])
        teacher_fn, state = make_teacher(model, frontend)
        n_params = sum(x.size for x in jax.tree.leaves(state[0]))
        t1 = time.perf_counter()
        wave = jax.device_put(waves)
        aug_params = sample_aug(distill.view_keys(seed, np.arange(batch), 0))  # also warms the sampler
        compiled = teacher_fn.lower(state, wave, aug_params).compile()
        t2 = time.perf_counter()
        forward = common.time_calls(lambda: jax.block_until_ready(compiled(state, wave, aug_params)),
                                    iters=iters, warmup=1)
        teacher = distill.Teacher(f"passt-{size}", Path("benchmark"), {"model": {"name": "passt"}},
                                  FRONTENDS.get("passt")(dataclasses.asdict(frontend)), model)
        with tempfile.TemporaryDirectory() as tmp:
            one = write_clips(Path(tmp) / "one", batch, seed)
            every = write_clips(Path(tmp) / "all", n_batches * batch, seed)
            for root in (one, every):  # warm-up: the teacher and the samplers compile into the cache
                precompute_seconds(root, teacher, batch, seed)
            end_to_end = (precompute_seconds(every, teacher, batch, seed)
                          - precompute_seconds(one, teacher, batch, seed))
    cfg = model.config
    f_patches = (cfg.n_mels - cfg.patch_size) // cfg.fstride + 1
    t_patches = (frontend.n_frames(frontend.sample_rate) - cfg.patch_size) // cfg.tstride + 1
    return {"size": size, "params_m": n_params / 1e6, "batch": batch, "tokens": f_patches * t_patches + 2,
            "build_s": t1 - t0, "compile_s": t2 - t1, "forward_ms": 1000 * forward.median,
            "forward_cpu_ms": 1000 * forward.cpu_median,
            "forward_clips_per_s": batch / forward.median,
            "end_to_end_clips_per_s": (n_batches - 1) * batch / end_to_end,
            "forward_times_s": list(forward.times), **mem.columns()}


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "passt_s"])
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (--quick: 4)")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches of the end-to-end precompute, >= 2 (default 4, --quick 2)")
    parser.add_argument("--iters", type=int, default=None, help="timed forward calls (default 5, --quick 2)")
    args = parser.parse_args(argv)
    batch = args.batch_size or (4 if args.quick else 16)
    n_batches = args.batches or (2 if args.quick else 4)
    if n_batches < 2:
        parser.error("--batches must be >= 2 (the run over one batch is subtracted)")
    iters = args.iters or (2 if args.quick else 5)
    with tempfile.TemporaryDirectory() as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        rows = [measure(size, batch, n_batches, iters, args.seed) for size in args.sizes]
    notes = ["1-s clips at 32 kHz (100 frames x 128 mels -> 12x9 patches + 2 tokens). "
             "forward_ms / forward_cpu_ms: median wall / CPU time of the jitted teacher function after a "
             f"warm-up call; end_to_end: distill.precompute over {n_batches} batches of clips read from disk "
             "(44.1 kHz, resampled), 1 view, store written, minus the same over 1 batch (compiled "
             "programs loaded from the cache of warm-up runs)."]
    return common.report("teacher_precompute", rows, args, columns=COLUMNS, notes=notes)


if __name__ == "__main__":
    main()
