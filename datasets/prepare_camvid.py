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
    "test",
)


def prepare_camvid(root: str, workers: int | None = None) -> list[SplitReport]:
    """Write the prepared label maps of every split under ``root``; one report per split."""
    reports = []
    for split in SPLITS:
        jobs, report = camvid_conversions(root, split)
        reports.append(convert_many(convert_camvid_label, jobs, report, workers))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    root, workers = parse_prepare_args(__doc__, argv)
    try:
        reports = prepare_camvid(root, workers)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_reports(reports))
    return exit_status(reports)


if __name__ == "__main__":
    sys.exit(main())
