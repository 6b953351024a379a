"""Convert a PyTorch checkpoint (PaSST or another teacher) into an Orbax weight checkpoint.

Examples:
  python convert_weights.py --arch passt --torch-ckpt passt-s-f128-p16-s10-ap.476-swa.pt \
      --out workdirs/passt_ap476
  python convert_weights.py --arch passt --variant passt_s_kd_p16_128_ap486 \
      --torch-ckpt passt-s-kd-ap.486.pt --out workdirs/passt_kd_tau --num-classes 10
  python convert_weights.py --arch cp_resnet --torch-ckpt teacher.ckpt --prefix net. \
      --key-map cp_resnet_keys.json --num-classes 10 --out workdirs/cp_resnet

The result restores with `asc_jax.checkpoint.load_model(out)`. All logic lives in `asc_jax.convert`.
"""
from __future__ import annotations

import argparse
import json
import logging

from asc_jax import setup_logging
from asc_jax.convert import KeyMap, convert_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="model registry name, e.g. passt")
    parser.add_argument("--torch-ckpt", required=True, help="torch checkpoint (or .npz state dict)")
    parser.add_argument("--out", required=True, help="new Orbax checkpoint directory")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the converted model; a differently shaped checkpoint "
                             "classifier is replaced by a freshly initialised one")
    parser.add_argument("--variant", default=None, help="model variant (PaSST: released layout)")
    parser.add_argument("--key-map", default=None,
                        help="JSON key map (renames / transforms / ignore / head) overriding the "
                             "one registered for --arch")
    parser.add_argument("--prefix", default="", help="only load keys under this prefix (e.g. net.)")
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of model config overrides")
    parser.add_argument("--seed", type=int, default=0, help="seed for a replaced head")
    args = parser.parse_args(argv)
    setup_logging("%(message)s")
    convert_checkpoint(
        args.arch, args.torch_ckpt, args.out, n_classes=args.num_classes, variant=args.variant,
        key_map=KeyMap.from_json(args.key_map) if args.key_map else None, prefix=args.prefix,
        model_kwargs=json.loads(args.model_kwargs), seed=args.seed)
    logging.info("saved %s weights to %s", args.arch, args.out)


if __name__ == "__main__":
    main()
