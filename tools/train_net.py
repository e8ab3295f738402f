#!/usr/bin/env python
"""Train or evaluate a TextKD model (single model, LAD teacher or distilled student).

The detectron2 command line: ``--config-file``, ``--eval-only``, ``--resume``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url`` and trailing ``KEY VALUE`` overrides::

    python tools/train_net.py --config-file configs/Synthetic/deeplabv3_r50_teacher.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8 --resume

Before anything runs, the config is checked (``textkd.validate``: evaluation without weights,
negative loss weights, unused keys, BN with one image per GPU, unreadable checkpoint files) and
the main process locks ``OUTPUT_DIR`` (``textkd.run_lock``); a refused run exits with status 1 and
one message. ``--eval-only`` of a distillation config evaluates the student alone (no teacher).
"""

import logging
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

from textkd.engine import (  # noqa: E402
    TextKDCheckpointer,
    Trainer,
    build_eval_model,
    release_output_lock,
    setup,
)
from textkd.models.weights import CheckpointFileError  # noqa: E402
from textkd.run_lock import OutputDirError, OutputDirInUse  # noqa: E402
from textkd.validate import ConfigError  # noqa: E402

# errors that say in words what is wrong and what to do: printed without a traceback
USER_ERRORS = (ConfigError, CheckpointFileError, OutputDirError, OutputDirInUse)


def main(args):
    cfg = setup(args)
    try:
        if args.eval_only:
            # a distillation config evaluates its student alone: no teacher is built or read
            model = build_eval_model(cfg)
            if not cfg.MODEL.WEIGHTS and not args.resume:
                logging.getLogger("textkd").warning(
                    "evaluating a randomly initialised model (TEXTKD.ALLOW_RANDOM_WEIGHTS True)"
                )
            TextKDCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=args.resume
            )
            res = Trainer.test(cfg, model)
            verify_results(cfg, res)
            return res
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
    finally:
        release_output_lock()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except USER_ERRORS as e:
        sys.exit(f"train_net.py: error: {e}")
