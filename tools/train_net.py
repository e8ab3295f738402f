#!/usr/bin/env python
"""Train or evaluate a TextKD model (single model, LAD teacher or distilled student).

The detectron2 command line: ``--config-file``, ``--eval-only``, ``--resume``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url`` and trailing ``KEY VALUE`` overrides::

    python tools/train_net.py --config-file configs/Synthetic/deeplabv3_r50_teacher.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8 --resume
"""

import os
import sys

try:
    import detectron2  # noqa: F401
except ImportError:
    sys.exit(
        "detectron2 is not installed. Install it the official way, e.g.\n"
        "  python -m pip install --no-build-isolation "
        "'git+https://github.com/facebookresearch/detectron2.git'\n"
        "(see README.md, 'Install')."
    )

from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "TextKD")
)

from textkd.engine import TextKDCheckpointer, Trainer, setup  # noqa: E402


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        TextKDCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            raise NotImplementedError("test-time augmentation is not part of the protocol")
        verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
