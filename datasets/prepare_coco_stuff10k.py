#!/usr/bin/env python
"""Prepare COCO-Stuff-10K for TextKD: write `cocostuff-10k/annotations_detectron2/*.png` from the
`.mat` files (MATLAB v5 or v7.3) of the ids in `imageLists/{train,test}.txt`: `S - 1` mapped to the
171 contiguous train ids, 0 (unlabeled) -> 255. Idempotent: finished files are skipped. Ends with an
integrity report.

    python datasets/prepare_coco_stuff10k.py [--root $DETECTRON2_DATASETS] [--workers N]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from textkd.data.datasets.coco_stuff import cocostuff10k_conversions, convert_cocostuff10k_label
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = (
    "train",
    "test",
)


def prepare_coco_stuff10k(root: str, workers: int | None = None) -> list[SplitReport]:
    """Write the prepared label maps of every split under ``root``; one report per split."""
    return prepare_splits(
        cocostuff10k_conversions, convert_cocostuff10k_label, SPLITS, root, workers
    )


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_coco_stuff10k, argv)


if __name__ == "__main__":
    sys.exit(main())
