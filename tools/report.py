#!/usr/bin/env python
"""Markdown report with PNG figures from training run directories (train_net OUTPUT_DIRs).

    python tools/report.py --output output/demo/report --teacher teacher --baseline baseline \\
        teacher=output/demo/teacher baseline=output/demo/student_baseline \\
        CWD=output/demo/student_cwd

Each LABEL=RUN_DIR is one run (its metrics.json and inference/*/sem_seg_evaluation.json);
``--teacher`` / ``--baseline`` name the runs in those roles (the others are distilled
students). Writes DIR/report.md with a results table, the per-class IoU of every run, the
per-class change each student makes over the baseline, the curves of every loss_<name> term
and the validation mIoU (per_class_iou.png, iou_delta.png, loss_curves.png, val_miou.png).
"""

import argparse
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "TextKD")
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    ap.add_argument("--output", required=True, help="folder of report.md and its figures")
    ap.add_argument("--teacher", help="label of the teacher run")
    ap.add_argument("--baseline", help="label of the baseline (undistilled) student run")
    ap.add_argument("--title", default="TextKD run report")
    args = ap.parse_args(argv)

    from textkd.report import read_run, write_report

    runs = []
    for spec in args.runs:
        if "=" not in spec:
            ap.error(f"run {spec!r} is not LABEL=RUN_DIR")
        label, path = spec.split("=", 1)
        if not label or not path:
            ap.error(f"run {spec!r} is not LABEL=RUN_DIR")
        runs.append(read_run(path, label))
    report = write_report(runs, args.output, args.teacher, args.baseline, args.title)
    print(f"report: {report}")
    for f in sorted(os.listdir(args.output)):
        if f.endswith(".png"):
            print(f"  figure: {os.path.join(args.output, f)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
