#!/usr/bin/env python
"""Prepare COCO-Stuff-10K for TextKD: write `cocostuff-10k/annotations_detectron2/*.png` from the
`.mat` files (MATLAB v5 or v7.3) of the ids in `imageLists/{train,test}.txt`: `S - 1` mapped to the
171 contiguous train ids, 0 (unlabeled) -> 255. Idempotent: finished files are skipped. Ends with an
integrity report.

    python datasets/prepare_coco_stuff10k.py [--root $DETECTRON2_DATASETS] [--workers N]
        [--splits SPLIT ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from textkd.data.datasets.coco_stuff import cocostuff10k_conversions, convert_cocostuff10k_label
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = (
    "train",
    "test",
)


def prepare_coco_stuff10k(
    root: str, workers: int | None = None, splits: Sequence[str] = SPLITS
) -> list[SplitReport]:
    """Prepare every split of ``splits`` that is present under ``root``; one report per split
    (a missing split's report says what to download)."""
    return prepare_splits(
        "coco_stuff_10k",
        cocostuff10k_conversions,
        convert_cocostuff10k_label,
        splits,
        root,
        workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_coco_stuff10k, SPLITS, os.path.basename(__file__), argv)


if __name__ == "__main__":
    sys.exit(main())
