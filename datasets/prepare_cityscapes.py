#!/usr/bin/env python
"""Prepare Cityscapes for TextKD: write ``*_gtFine_labelTrainIds.png`` (19 train ids, 255 ignore) next
to every ``*_gtFine_labelIds.png`` of the train and val splits, using the label table of
cityscapesscripts (what its ``createTrainIdLabelImgs`` produces). Idempotent: finished files are
skipped. Ends with an integrity report.

    python datasets/prepare_cityscapes.py [--root $DETECTRON2_DATASETS] [--workers N]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from textkd.data.datasets.cityscapes import cityscapes_conversions, convert_cityscapes_label
from textkd.data.datasets.common import (
    SplitReport,
    convert_many,
    exit_status,
    format_reports,
    parse_prepare_args,
)

SPLITS = ("train", "val")  # test labels are placeholders without annotations


def prepare_cityscapes(root: str, workers: int | None = None) -> list[SplitReport]:
    """Convert labelIds -> labelTrainIds for the train and val splits under ``root``."""
    reports = []
    for split in SPLITS:
        jobs, report = cityscapes_conversions(root, split)
        reports.append(convert_many(convert_cityscapes_label, jobs, report, workers))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    root, workers = parse_prepare_args(__doc__, argv)
    try:
        reports = prepare_cityscapes(root, workers)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_reports(reports))
    return exit_status(reports)


if __name__ == "__main__":
    sys.exit(main())
