"""Quantize a saved deploy model and measure it: the `python -m asc_jax.quantize` command.

    python -m asc_jax.quantize --checkpoint <workdir>/deploy --data-root DATA --out <workdir>/deploy_int8
        [--qat [--qat-epochs 5 --qat-lr 1e-4 --qat-batch-size 64 --train-split 100 --no-qat-augment
                --qat-out DIR]]

PTQ, and with --qat also QAT finetuning on the training split; prints (and with --out saves, as
quantization.json) float vs PTQ vs QAT accuracy and the DCASE memory report. The PTQ model is
saved to --out, the QAT model to --qat-out (default: <out>_qat).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

from asc_jax import evaluate, inference
from asc_jax.audio.augment import AugmentConfig
from asc_jax.audio.frontends import Frontend
from asc_jax.complexity import MemoryReport, memory_report
from asc_jax.data import sources, tau
from asc_jax.quantize.calibration import calibrate
from asc_jax.quantize.config import CALIBRATIONS, QATConfig, QuantConfig
from asc_jax.quantize.convert import convert_qat, quantize, save_quantized
from asc_jax.quantize.qat import finetune_qat


def calibration_clips(data_root: str | Path, split: str, *, n: int = 256, seed: int = 0,
                      device: str | None = None) -> list[tau.Clip]:
    """Up to `n` clips of a split (a seeded draw, in meta.csv order), only `device`'s if given
    (a device-specific model is calibrated on its own device's clips).

    Raises:
      ValueError: the split holds no clip of `device`.
    """
    clips = tau.load_split(data_root, split)
    if device is not None:
        clips = [c for c in clips if c.device == device]
        if not clips:
            raise ValueError(f"no clip of device {device!r} in split {split!r} to calibrate its model on")
    pick = np.sort(np.random.default_rng(seed).choice(len(clips), min(n, len(clips)), replace=False))
    return [clips[i] for i in pick]


def clip_features(clips: Sequence[tau.Clip], data_root: str | Path, frontend: Frontend, *,
                  batch_size: int = 64) -> np.ndarray:
    """The frontend's features of `clips` (read at its rate with its resampler), for `calibrate`."""
    source = sources.ClipSource(list(clips), data_root, sr=frontend.sample_rate, resampler=frontend.resampler,
                                cache=False)
    return inference.predict(jax.jit(frontend.features), source, batch_size)


def calibration_mels(data_root: str | Path, split: str, frontend: Frontend, *, n: int = 256, seed: int = 0,
                     batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """Features (the model's frontend) of `calibration_clips`, for `calibrate`."""
    clips = calibration_clips(data_root, split, n=n, seed=seed, device=device)
    return clip_features(clips, data_root, frontend, batch_size=batch_size)


def _headline(result: Mapping[str, Any], form: str) -> dict[str, Any]:
    """The entries of `result` that the saved `form` ("int8" = PTQ, or "qat") model.json carries."""
    agreement = result["top1_agreement"] if form == "int8" else result["qat_finetune"]["top1_agreement"]
    return {"method": "ptq" if form == "int8" else "qat", "split": result["split"], "top1_agreement": agreement,
            **{f"float_{k}": result["float"][k] for k in ("accuracy", "macro_accuracy")},
            **{f"int8_{k}": result[form][k] for k in ("accuracy", "macro_accuracy")}}


def evaluate_quantized(model_dir: str | Path, data_root: str | Path, split: str = "test", *,
                       calib_split: str = "100", n_calib: int = 256, cfg: QuantConfig = QuantConfig(),
                       batch_size: int = 64, seed: int = 0, out: str | Path | None = None,
                       qat: QATConfig | None = None, qat_out: str | Path | None = None) -> dict[str, Any]:
    """Quantizes a saved deploy model (PTQ, and optionally QAT) and measures accuracy on a split.

    Args:
      model_dir: a saved float deploy model (e.g. <workdir>/deploy).
      data_root: TAU-layout dataset root.
      split: evaluation split ("test" or a training split name).
      calib_split: split the calibration clips are drawn from (keep it disjoint from `split`).
      n_calib: calibration clips.
      cfg: quantization settings.
      batch_size: clips per forward pass.
      seed: calibration draw, and QAT's shuffling and augmentations.
      out: if set, the PTQ int8 model is saved there (`save_quantized`) with `quantization.json`.
      qat: if set, the float model is also finetuned with fake quantization (`finetune_qat`,
        from the PTQ ranges, on qat.train_split) and converted to int8.
      qat_out: if set (with `qat`), the QAT int8 model is saved there with `quantization.json`.
    Returns:
      {"float", "int8" (PTQ): compute_metrics dicts, "top1_agreement", "max_abs_logit_diff" (PTQ
       vs float), "memory": MemoryReport.as_dict(), "config", "split", "calib_split", "n_calib"};
      with `qat` also "qat" (compute_metrics of the QAT int8 model) and "qat_finetune": {"config",
      "n_train", "steps", "loss", "accuracy" (per-epoch training means), "top1_agreement",
      "max_abs_logit_diff" (vs float), "max_abs_diff_to_fake_quant" (int8 vs the finetuned
      fake-quant model: the conversion's error)}.
    """
    saved = inference.load(model_dir, form="float")
    model, spec, frontend = saved.model, saved.spec, saved.frontend
    if not spec["model"].get("deploy"):
        raise ValueError(f"{model_dir} is not a deploy model; quantize the fused <workdir>/deploy model")
    class_names = spec.get("class_names", list(tau.CLASSES))
    mels = calibration_mels(data_root, calib_split, frontend, n=n_calib, seed=seed, batch_size=batch_size)
    ranges = calibrate(model, mels, cfg, batch_size=batch_size) if cfg.act_bits is not None else None
    models = {"int8": quantize(model, ranges, cfg)}
    fns = {"float": saved.fn, "int8": inference.model_fn(models["int8"], frontend.features)}
    if qat is not None:
        train = sources.load_split_source(data_root, qat.train_split, sr=frontend.sample_rate,
                                          resampler=frontend.resampler)
        fake_quant, history = finetune_qat(model, ranges, train.source, frontend, cfg, qat, seed=seed)
        models["qat"] = convert_qat(fake_quant)
        fns["qat"] = inference.model_fn(models["qat"], frontend.features)
        fns["fake_quant"] = inference.model_fn(fake_quant, frontend.features)

    clips = tau.load_split(data_root, split)
    source = sources.ClipSource(clips, data_root, sr=frontend.sample_rate,
                                 resampler=frontend.resampler, cache=False)
    logits = inference.predict(lambda audio: {form: fn(audio) for form, fn in fns.items()}, source, batch_size)
    labels, devices = np.array([c.label for c in clips]), [c.device for c in clips]

    def agreement(form: str) -> dict[str, float]:
        return {"top1_agreement": float(np.mean(logits["float"].argmax(-1) == logits[form].argmax(-1))),
                "max_abs_logit_diff": float(np.abs(logits["float"] - logits[form]).max())}

    result = {
        "split": str(split), "calib_split": str(calib_split), "n_calib": int(len(mels)),
        "config": dataclasses.asdict(cfg),
        "float": evaluate.compute_metrics(logits["float"], labels, devices, class_names),
        "int8": evaluate.compute_metrics(logits["int8"], labels, devices, class_names),
        **agreement("int8"),
        "memory": memory_report(models["int8"]).as_dict(),
    }
    if qat is not None:
        result["qat"] = evaluate.compute_metrics(logits["qat"], labels, devices, class_names)
        result["qat_finetune"] = {
            "config": dataclasses.asdict(qat), "n_train": len(train.source), **history, **agreement("qat"),
            "max_abs_diff_to_fake_quant": float(np.abs(logits["qat"] - logits["fake_quant"]).max())}
    for form, directory in (("int8", out), ("qat", qat_out if qat is not None else None)):
        if directory is not None:
            save_quantized(directory, models[form], spec, cfg, quant_eval=_headline(result, form))
            (Path(directory) / "quantization.json").write_text(json.dumps(result, indent=2))
    return result


def summary(result: Mapping[str, Any]) -> str:
    """Text table of an `evaluate_quantized` result."""
    mem = MemoryReport(**{f.name: result["memory"][f.name] for f in dataclasses.fields(MemoryReport)})
    lines = [mem.table(), "",
             f"split {result['split']} ({result['float']['n']} clips), calibrated on {result['n_calib']} "
             f"clips of split {result['calib_split']}"]
    qat = result.get("qat_finetune")
    if qat is not None:
        lines.append(f"QAT: {qat['steps']} steps ({qat['config']['epochs']} epochs of split "
                     f"{qat['config']['train_split']}, {qat['n_train']} clips, lr {qat['config']['lr']:g}), "
                     f"training loss {qat['loss'][0]:.4f} -> {qat['loss'][-1]:.4f}")
    lines.append(f"{'':10}{'accuracy':>10}{'macro':>10}")
    forms = [("float", "float"), ("int8 PTQ", "int8")] + ([("int8 QAT", "qat")] if qat is not None else [])
    for label, form in forms:
        lines.append(f"{label:10}{result[form]['accuracy']:>10.4f}{result[form]['macro_accuracy']:>10.4f}")
    lines.append(f"top-1 agreement {result['top1_agreement']:.4f}, "
                 f"max |logit diff| {result['max_abs_logit_diff']:.4f} (PTQ vs float)")
    if qat is not None:
        lines.append(f"top-1 agreement {qat['top1_agreement']:.4f}, max |logit diff| "
                     f"{qat['max_abs_logit_diff']:.4f} (QAT vs float); QAT int8 vs fake-quant max |logit diff| "
                     f"{qat['max_abs_diff_to_fake_quant']:.2g}")
    return "\n".join(lines)


def _bits(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asc_jax.quantize",
                                     description="Int8 post-training quantization (and, with --qat, "
                                                 "quantization-aware finetuning) of a saved deploy model, with "
                                                 "float vs int8 accuracy and the DCASE memory report.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="saved deploy model dir (<workdir>/deploy)")
    parser.add_argument("--data-root", required=True, type=Path, help="TAU-layout dataset root")
    parser.add_argument("--split", default="test", help="evaluation split (default: test)")
    parser.add_argument("--calib-split", default="100",
                        help="split the calibration clips come from (default: 100)")
    parser.add_argument("--n-calib", type=int, default=256, help="calibration clips (default: 256)")
    parser.add_argument("--weight-bits", type=int, default=8)
    parser.add_argument("--act-bits", type=_bits, default=8, help="bits of conv inputs, or 'none' (weight-only)")
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="minmax")
    parser.add_argument("--percentile", type=float, default=99.99)
    parser.add_argument("--batch-size", type=int, default=64, help="clips per evaluation forward pass")
    parser.add_argument("--seed", type=int, default=0, help="calibration draw, QAT shuffling and augmentation")
    parser.add_argument("--out", type=Path, default=None,
                        help="save the PTQ int8 model and quantization.json (the report) here")
    qat_defaults = QATConfig()
    qat = parser.add_argument_group("quantization-aware finetuning (QAT)")
    qat.add_argument("--qat", action="store_true",
                     help="also finetune the float model with fake quantization (from the PTQ ranges) on "
                          "--train-split with the training step and augmentations, then convert it to int8")
    qat.add_argument("--qat-epochs", type=int, default=qat_defaults.epochs,
                     help=f"epochs over the training split (default: {qat_defaults.epochs})")
    qat.add_argument("--qat-lr", type=float, default=qat_defaults.lr,
                     help=f"peak Adam learning rate, cosine-decayed to 0 (default: {qat_defaults.lr:g})")
    qat.add_argument("--qat-batch-size", type=int, default=qat_defaults.batch_size,
                     help=f"clips per QAT step (default: {qat_defaults.batch_size})")
    qat.add_argument("--train-split", default=qat_defaults.train_split,
                     help=f"split QAT finetunes on (default: {qat_defaults.train_split})")
    qat.add_argument("--qat-augment", action=argparse.BooleanOptionalAction, default=True,
                     help="finetune with training's augmentations (waveform roll, frequency mask, "
                          "Freq-MixStyle; default) or without")
    qat.add_argument("--qat-out", type=Path, default=None,
                     help="save the QAT int8 model and quantization.json here (default: <out>_qat)")
    args = parser.parse_args(None if argv is None else list(argv))
    cfg = QuantConfig(args.weight_bits, args.act_bits, args.calibration, args.percentile)
    qat_cfg = qat_out = None
    if args.qat:
        augment = AugmentConfig() if args.qat_augment else AugmentConfig(roll=None, freq_mask=None, mixstyle=None)
        qat_cfg = QATConfig(args.qat_epochs, args.qat_lr, args.qat_batch_size, str(args.train_split), augment)
        qat_out = args.qat_out or (None if args.out is None else args.out.with_name(args.out.name + "_qat"))
    elif args.qat_out is not None:
        parser.error("--qat-out needs --qat")
    result = evaluate_quantized(args.checkpoint, args.data_root, args.split, calib_split=args.calib_split,
                                n_calib=args.n_calib, cfg=cfg, batch_size=args.batch_size, seed=args.seed,
                                out=args.out, qat=qat_cfg, qat_out=qat_out)
    print(summary(result))
    if args.out is not None:
        print(f"PTQ int8 model saved to {args.out}")
    if qat_out is not None:
        print(f"QAT int8 model saved to {qat_out}")
    return 0
