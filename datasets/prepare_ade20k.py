#!/usr/bin/env python
"""Prepare ADE20K for TextKD: write `annotations_detectron2/{training,validation}/*.png` (value - 1, 0
-> 255). Idempotent: finished files are skipped. Ends with an integrity report.

    python datasets/prepare_ade20k.py [--root $DETECTRON2_DATASETS] [--workers N]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from textkd.data.datasets.ade20k import ade20k_conversions, convert_ade20k_label
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = (
    "train",
    "val",
)


def prepare_ade20k(root: str, workers: int | None = None) -> list[SplitReport]:
    """Write the prepared label maps of every split under ``root``; one report per split."""
    return prepare_splits(ade20k_conversions, convert_ade20k_label, SPLITS, root, workers)


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_ade20k, argv)


if __name__ == "__main__":
    sys.exit(main())
