#!/usr/bin/env python
"""Prepare CamVid for TextKD: write `{split}annot_detectron2/*.png` (void 11 -> 255, ids 0..10 kept)
for the train, val and test splits. Idempotent: finished files are skipped. Ends with an integrity
report.

    python datasets/prepare_camvid.py [--root $DETECTRON2_DATASETS] [--workers N]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from textkd.data.datasets.camvid import camvid_conversions, convert_camvid_label
from textkd.data.datasets.common import SplitReport, prepare_main, prepare_splits

SPLITS = (
    "train",
    "val",
    "test",
)


def prepare_camvid(root: str, workers: int | None = None) -> list[SplitReport]:
    """Write the prepared label maps of every split under ``root``; one report per split."""
    return prepare_splits(camvid_conversions, convert_camvid_label, SPLITS, root, workers)


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_camvid, argv)


if __name__ == "__main__":
    sys.exit(main())
