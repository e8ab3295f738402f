#!/usr/bin/env python
"""Prepare CamVid for TextKD: write `{split}annot_detectron2/*.png` (void 11 -> 255, ids 0..10 kept)
for the train, val and test splits. Idempotent: finished files are skipped. Ends with an integrity
report.

    python datasets/prepare_camvid.py [--root $DETECTRON2_DATASETS] [--workers N]
        [--splits SPLIT ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from textkd.data.datasets.camvid import camvid_conversions, convert_camvid_label
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = (
    "train",
    "val",
    "test",
)


def prepare_camvid(
    root: str, workers: int | None = None, splits: Sequence[str] = SPLITS
) -> list[SplitReport]:
    """Prepare every split of ``splits`` that is present under ``root``; one report per split
    (a missing split's report says what to download)."""
    return prepare_splits("camvid", camvid_conversions, convert_camvid_label, splits, root, workers)


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_camvid, SPLITS, os.path.basename(__file__), argv)


if __name__ == "__main__":
    sys.exit(main())
