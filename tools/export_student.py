#!/usr/bin/env python
"""Export the deployable student of a distillation checkpoint.

The output holds only the student's weights (``segmentor.*``): no teacher, adapters, projectors
or text buffers. The teacher is neither built nor read (``MODEL.DISTILL.TEACHER.*`` may be empty).
It loads into the single-model config of the same student::

    python tools/export_student.py --config-file configs/.../deeplabv3_r18_cwd_tcd_trd.yaml \
        --weights output/model_final.pth --output student.pth
    python tools/train_net.py --config-file <same yaml> --eval-only \
        MODEL.META_ARCHITECTURE TextKDSemanticSegmentor MODEL.WEIGHTS student.pth
"""

import argparse
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "TextKD")
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--weights", required=True, help="distillation (or single-model) checkpoint")
    ap.add_argument("--output", required=True)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)

    from textkd.engine import (
        TextKDCheckpointer,
        build_eval_model,
        check_config,
        export_student,
        load_config,
    )
    from textkd.modeling.weights import CheckpointFileError, check_checkpoint_file
    from textkd.validate import ConfigError

    try:
        cfg = load_config(args.config_file, args.opts)
        cfg.MODEL.DEVICE = "cpu"
        check_config(cfg, "export")
        check_checkpoint_file(args.weights, "checkpoint", "--weights")
        # a distillation config: the student alone (no teacher is built or read)
        model = build_eval_model(cfg)
        TextKDCheckpointer(model).load(args.weights, checkpointables=[])
    except (ConfigError, CheckpointFileError, OSError) as e:
        print(f"export_student.py: error: {e}", file=sys.stderr)
        return 1
    state = export_student(model, args.output)
    n = sum(v.numel() for v in state.values())
    print(f"wrote {args.output}: {len(state)} tensors, {n / 1e6:.2f}M values (student only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
