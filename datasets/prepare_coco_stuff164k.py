#!/usr/bin/env python
"""Prepare COCO-Stuff-164K for TextKD: write `coco/stuffthingmaps_detectron2/{train2017,val2017}/*.png`
(182 COCO-Stuff values -> 171 contiguous train ids, the 11 never-used thing ids -> 255). The 182-way
protocol reads the raw `stuffthingmaps` and needs no preparation. Idempotent: finished files are
skipped. Ends with an integrity report.

    python datasets/prepare_coco_stuff164k.py [--root $DETECTRON2_DATASETS] [--workers N]
        [--splits SPLIT ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from textkd.data.datasets.coco_stuff import (
    coco_stuff_164k_conversions,
    convert_coco_stuff_164k_label,
)
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = (
    "train",
    "val",
)


def prepare_coco_stuff164k(
    root: str, workers: int | None = None, splits: Sequence[str] = SPLITS
) -> list[SplitReport]:
    """Prepare every split of ``splits`` that is present under ``root``; one report per split
    (a missing split's report says what to download)."""
    return prepare_splits(
        "coco_stuff_164k",
        coco_stuff_164k_conversions,
        convert_coco_stuff_164k_label,
        splits,
        root,
        workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_coco_stuff164k, SPLITS, os.path.basename(__file__), argv)


if __name__ == "__main__":
    sys.exit(main())
