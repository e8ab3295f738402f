#!/usr/bin/env python
"""Prepare ADE20K for TextKD: write `annotations_detectron2/{training,validation}/*.png` (value - 1, 0
-> 255). Idempotent: finished files are skipped. Ends with an integrity report.

    python datasets/prepare_ade20k.py [--root $DETECTRON2_DATASETS] [--workers N]
        [--splits SPLIT ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from textkd.data.datasets.ade20k import ade20k_conversions, convert_ade20k_label
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = (
    "train",
    "val",
)


def prepare_ade20k(
    root: str, workers: int | None = None, splits: Sequence[str] = SPLITS
) -> list[SplitReport]:
    """Prepare every split of ``splits`` that is present under ``root``; one report per split
    (a missing split's report says what to download)."""
    return prepare_splits("ade20k", ade20k_conversions, convert_ade20k_label, splits, root, workers)


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_ade20k, SPLITS, os.path.basename(__file__), argv)


if __name__ == "__main__":
    sys.exit(main())
