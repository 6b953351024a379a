"""Log-mel throughput: the jitted JAX frontend vs librosa on the same batch.

Both compute the default `MelConfig` (32 kHz, n_fft 4096, window 3072, hop 512, 256 Slaney
mels, log(x + 1e-5)) on 1-s clips. librosa runs on the host in NumPy (one batched call, which
its STFT supports); the JAX one is what the train step runs on device. The table also reports
the largest difference between the two, as a check that the same thing was computed.

    python -m benchmarks.frontend             # batch 128
    python -m benchmarks.frontend --quick     # batch 32
"""
from __future__ import annotations

import time

import jax
import librosa
import numpy as np

from asc_jax.audio.features import MelConfig, log_mel
from benchmarks import common

COLUMNS = ("frontend", "batch", "compile_s", "best_ms", "median_ms", "cpu_ms", "ms_per_clip", "clips_per_s",
           "speedup_vs_librosa", "max_abs_diff", "peak_host_mb", "peak_device_mb")


def librosa_log_mel(wave: np.ndarray, cfg: MelConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels, fmin=cfg.f_min,
        fmax=cfg.f_max, htk=cfg.htk, norm=cfg.norm)
    return np.log(mel + cfg.log_floor)


def measure(batch: int, iters: int, min_seconds: float, seed: int) -> list[dict]:
    cfg = MelConfig()
    wave = np.random.default_rng(seed).normal(0, 0.1, (batch, cfg.sample_rate)).astype(np.float32)
    rows = []
    with common.PeakMemory() as mem:
        reference = librosa_log_mel(wave, cfg)
        lib = common.time_calls(lambda: librosa_log_mel(wave, cfg), iters=iters, warmup=0,
                                min_seconds=min_seconds)
    rows.append({"frontend": "librosa (NumPy, host)", "batch": batch, "compile_s": 0.0, "timing": lib,
                 "max_abs_diff": 0.0, **mem.columns()})
    fn = jax.jit(lambda w: log_mel(w, cfg))
    with common.PeakMemory() as mem:
        t0 = time.perf_counter()
        compiled = fn.lower(wave).compile()
        compile_s = time.perf_counter() - t0
        # Host -> device transfer included: in training the waveforms arrive from the host too.
        ours = np.asarray(compiled(wave))
        jx = common.time_calls(lambda: jax.block_until_ready(compiled(wave)), iters=iters, warmup=0,
                               min_seconds=min_seconds)
    rows.append({"frontend": "asc_jax log_mel (jit)", "batch": batch, "compile_s": compile_s, "timing": jx,
                 "max_abs_diff": float(np.abs(ours - reference).max()), **mem.columns()})
    for row in rows:
        timing = row.pop("timing")
        row.update(best_ms=1000 * timing.best, median_ms=1000 * timing.median, cpu_ms=1000 * timing.cpu_median,
                   ms_per_clip=1000 * timing.best / batch, clips_per_s=batch / timing.best,
                   speedup_vs_librosa=f"{lib.best / timing.best:.2f}x")
    return rows


def main(argv=None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 32)")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (default 10, --quick 3)")
    args = parser.parse_args(argv)
    batch = args.batch_size or (32 if args.quick else 128)
    iters = args.iters or (3 if args.quick else 10)
    rows = measure(batch, iters, 0.5 if args.quick else 2.0, args.seed)
    notes = ["1-s clips at 32 kHz -> 256x63 log-mel. Best/median wall time per batch; ms_per_clip and "
             "clips_per_s from the best; cpu_ms: median CPU time of the process (all threads; librosa uses one, "
             "XLA several); the JAX time includes the host-to-device copy of the waveforms. "
             "max_abs_diff: largest log-mel difference to librosa (both float32; FFT implementations and "
             "summation order differ)."]
    return common.report("frontend", rows, args, columns=COLUMNS, notes=notes)


if __name__ == "__main__":
    main()
