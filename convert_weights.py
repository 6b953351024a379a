"""Convert a PyTorch checkpoint (PaSST, the CPJKU CNNs or another model) into an asc_jax saved model.

Examples:
  python convert_weights.py --arch passt --torch-ckpt passt-s-f128-p16-s10-ap.476-swa.pt \
      --out workdirs/passt_ap476
  python convert_weights.py --arch passt --variant passt_s_kd_p16_128_ap486 \
      --torch-ckpt passt-s-kd-ap.486.pt --out workdirs/passt_kd_tau --num-classes 10
  # CPJKU DCASE2023 CP-Mobile, from its Lightning checkpoint (network under "model.", the mel
  # module's buffers skipped); widths, blocks and GRN are read from the shapes:
  python convert_weights.py --arch cp_mobile --torch-ckpt cp_mobile.ckpt --out workdirs/cp_mobile
  # The DCASE2024 Task 1 baseline (frontend "dcase2024"), with the class names recorded:
  python convert_weights.py --arch dcase2024_baseline --torch-ckpt baseline.ckpt \
      --out workdirs/baseline --classes airport,bus,metro,metro_station,park,public_square,\
shopping_mall,street_pedestrian,street_traffic,tram
  # CP-ResNet from a plain state dict; options the shapes cannot show come as flags:
  python convert_weights.py --arch cp_resnet --torch-ckpt cp_resnet.pt --out workdirs/cp_resnet \
      --model-kwargs '{"pools": [[0, 1, 2, 4], [], []]}'
  # A CP-Mobile trained with other block strides (strides are not visible in the weights):
  python convert_weights.py --arch cp_mobile --torch-ckpt m.ckpt --out workdirs/m \
      --strides '{"b2": [2, 2], "b3": [1, 2], "b4": [2, 1]}'

A model with a fused form (the CNNs) is written as a train.py workdir: OUT/model (training form:
model.init_from, pruning) and OUT/deploy (fused: predict, quantize, export); `asc_jax.inference.
load(OUT)` picks deploy/. PaSST is written to OUT. All logic lives in `asc_jax.convert`.
"""
from __future__ import annotations

import argparse
import json
import logging

from asc_jax import setup_logging
from asc_jax.convert import KeyMap, convert_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True,
                        help="model registry name, e.g. passt, cp_mobile, dcase2024_baseline, cp_resnet")
    parser.add_argument("--torch-ckpt", required=True,
                        help="torch checkpoint (Lightning .ckpt or state dict .pt) or .npz state dict")
    parser.add_argument("--out", required=True, help="new saved-model directory")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the converted model; a differently shaped checkpoint "
                             "classifier is replaced by a freshly initialised one")
    parser.add_argument("--variant", default=None, help="model variant (PaSST: released layout)")
    parser.add_argument("--key-map", default=None,
                        help="JSON key map (renumber / renames / transforms / ignore / head) "
                             "overriding the one registered for --arch")
    parser.add_argument("--prefix", default=None,
                        help="only load keys under this prefix (default: the Lightning module's "
                             "network attribute when the checkpoint has such keys: model. for "
                             "cp_mobile / dcase2024_baseline, net. for cp_resnet; else none)")
    parser.add_argument("--model-kwargs", default="{}",
                        help="JSON dict of model options; they override what is inferred from "
                             "the checkpoint's shapes")
    parser.add_argument("--strides", default=None,
                        help='JSON block strides of the mobile CNNs, e.g. {"b2": [2, 2], "b4": [2, 1]} '
                             "(not visible in the weights; default: the architecture's)")
    parser.add_argument("--frontend", default=None,
                        help="frontend recorded in model.json (asc_jax.audio.frontends; default: "
                             "cpjku for cp_mobile / cp_resnet, dcase2024 for dcase2024_baseline)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated names of the logits, recorded as class_names")
    parser.add_argument("--seed", type=int, default=0, help="seed for a replaced head")
    args = parser.parse_args(argv)
    setup_logging("%(message)s")
    model_kwargs = json.loads(args.model_kwargs)
    if args.strides is not None:
        if "strides" in model_kwargs:
            parser.error("strides given twice: --strides and --model-kwargs")
        model_kwargs["strides"] = json.loads(args.strides)
    convert_checkpoint(
        args.arch, args.torch_ckpt, args.out, n_classes=args.num_classes, variant=args.variant,
        key_map=KeyMap.from_json(args.key_map) if args.key_map else None, prefix=args.prefix,
        model_kwargs=model_kwargs, frontend=args.frontend,
        class_names=args.classes.split(",") if args.classes else None, seed=args.seed)
    logging.info("saved %s weights to %s", args.arch, args.out)


if __name__ == "__main__":
    main()
