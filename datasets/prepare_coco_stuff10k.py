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
from textkd.data.datasets.common import (
    SplitReport,
    convert_many,
    exit_status,
    format_reports,
    parse_prepare_args,
)

SPLITS = (
    "train",
    "test",
)


def prepare_coco_stuff10k(root: str, workers: int | None = None) -> list[SplitReport]:
    """Write the prepared label maps of every split under ``root``; one report per split."""
    reports = []
    for split in SPLITS:
        jobs, report = cocostuff10k_conversions(root, split)
        reports.append(convert_many(convert_cocostuff10k_label, jobs, report, workers))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    root, workers = parse_prepare_args(__doc__, argv)
    try:
        reports = prepare_coco_stuff10k(root, workers)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_reports(reports))
    return exit_status(reports)


if __name__ == "__main__":
    sys.exit(main())
