#!/usr/bin/env python
"""Prepare ADE20K for TextKD: write `annotations_detectron2/{training,validation}/*.png` (value - 1, 0
-> 255). Idempotent: finished files are skipped. Ends with an integrity report.

    python datasets/prepare_ade20k.py [--root $DETECTRON2_DATASETS] [--workers N]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from textkd.data.datasets.ade20k import ade20k_conversions, convert_ade20k_label
from textkd.data.datasets.common import (
    SplitReport,
    convert_many,
    exit_status,
    format_reports,
    parse_prepare_args,
)

SPLITS = (
    "train",
    "val",
)


def prepare_ade20k(root: str, workers: int | None = None) -> list[SplitReport]:
    """Write the prepared label maps of every split under ``root``; one report per split."""
    reports = []
    for split in SPLITS:
        jobs, report = ade20k_conversions(root, split)
        reports.append(convert_many(convert_ade20k_label, jobs, report, workers))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    root, workers = parse_prepare_args(__doc__, argv)
    try:
        reports = prepare_ade20k(root, workers)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_reports(reports))
    return exit_status(reports)


if __name__ == "__main__":
    sys.exit(main())
