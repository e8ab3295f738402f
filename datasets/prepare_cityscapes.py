#!/usr/bin/env python
"""Prepare Cityscapes for TextKD: write ``*_gtFine_labelTrainIds.png`` (19 train ids, 255 ignore) next
to every ``*_gtFine_labelIds.png`` of the train and val splits, using the label table of
cityscapesscripts (what its ``createTrainIdLabelImgs`` produces). Idempotent: finished files are
skipped. Ends with an integrity report.

    python datasets/prepare_cityscapes.py [--root $DETECTRON2_DATASETS] [--workers N]
        [--splits SPLIT ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from textkd.data.datasets.cityscapes import cityscapes_conversions, convert_cityscapes_label
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = ("train", "val")  # test labels are placeholders without annotations


def prepare_cityscapes(
    root: str, workers: int | None = None, splits: Sequence[str] = SPLITS
) -> list[SplitReport]:
    """Prepare every split of ``splits`` that is present under ``root``; one report per split
    (a missing split's report says what to download)."""
    return prepare_splits(
        "cityscapes", cityscapes_conversions, convert_cityscapes_label, splits, root, workers
    )


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_cityscapes, SPLITS, os.path.basename(__file__), argv)


if __name__ == "__main__":
    sys.exit(main())
