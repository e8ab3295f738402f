#!/usr/bin/env python
"""Convert a checkpoint of another codebase into one TextKD loads, and print the config to use.

Sources (``--source auto`` guesses from the key names):

* ``cirkd``: a CIRKD DeepLabV3 / PSPNet on a dilated ResNetV1b (e.g. the released
  ``deeplabv3_resnet101_citys_best_model.pth`` teacher) -> a full model checkpoint
  ``{"model": {"segmentor.*": ...}}`` for ``MODEL.WEIGHTS`` or ``MODEL.DISTILL.TEACHER.WEIGHTS``.
* ``cirkd-backbone``: a CIRKD ImageNet backbone (``resnet18-imagenet.pth``, "v1s" deep stem, or
  ``mobilenetv2-imagenet.pth``, ``features.N`` keys);
* ``torchvision``: ``resnet18/50/101`` or ``mobilenet_v2`` ImageNet weights;
* ``timm``: ``resnet18/50/101``, ``resnet*d``, ``resnet*s``, ``mobilenetv2_100``;
* ``stdc``: STDC-Seg's ImageNet ``STDCNet813M_73.91.tar`` (stdc1) / ``STDCNet1446_76.47.tar``
  (stdc2)
  -> a backbone file for ``MODEL.SEG_BACKBONE.PRETRAINED``.

The converted keys are checked against the TextKD model built with the inferred settings: any
unmatched, missing or mis-shaped key stops the conversion with the keys named (exit status 1);
dropped ImageNet-classifier keys are listed. Nothing is downloaded.

Examples::

    python tools/convert_checkpoint.py deeplabv3_resnet101_citys_best_model.pth \\
        weights/deeplabv3_r101_cirkd_citys.pth
    python tools/convert_checkpoint.py resnet18-f37072fd.pth weights/resnet18_tv.pth \\
        --source torchvision
"""

from __future__ import annotations

import argparse
import logging
import sys

from textkd.models.convert import (
    SOURCE_FORMATS,
    convert_checkpoint,
    load_source_state_dict,
    save_converted,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source", help="checkpoint file to convert")
    p.add_argument("output", help="where to write the TextKD checkpoint (.pth)")
    p.add_argument("--source", dest="source_format", default="auto", choices=SOURCE_FORMATS)
    p.add_argument(
        "--arch",
        default=None,
        help="TextKD backbone arch (default: inferred from the checkpoint's keys and shapes)",
    )
    p.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    p.add_argument("--verbose", action="store_true", help="list every converted key")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        state = load_source_state_dict(args.source)
        converted = convert_checkpoint(state, args.source_format, args.arch)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.source}: {converted.source_format} -> TextKD {converted.kind} "
        f"({len(converted.state_dict)} tensors)"
    )
    if args.verbose:
        for src, dst in converted.key_map.items():
            print(f"  {src} -> {dst}")
    if converted.dropped:
        print(f"dropped {len(converted.dropped)} source keys:")
        for key, why in converted.dropped.items():
            print(f"  {key}  ({why})")
    if converted.filled:
        print(f"filled {len(converted.filled)} missing BN counters (num_batches_tracked = 0)")
    if converted.kind == "backbone":
        converted.settings["MODEL.SEG_BACKBONE.PRETRAINED"] = args.output
    if args.dry_run:
        print("dry run: nothing written")
    else:
        save_converted(converted, args.output, source_path=args.source)
        print(f"wrote {args.output}")
    if converted.kind == "segmentor":
        print(
            "\nuse it as MODEL.WEIGHTS (or MODEL.DISTILL.TEACHER.WEIGHTS of a student config) "
            "with these settings:"
        )
    else:
        print("\nuse it in a config with these settings (the pixel statistics of the source):")
    print(converted.config_yaml())
    print("\nas command-line overrides / MODEL.DISTILL.TEACHER.OPTS:")
    print(" ".join(converted.config_opts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
