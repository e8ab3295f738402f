#!/usr/bin/env python
"""Print an mIoU table from train_net output folders (their evaluation results).

python tools/summarize_results.py "teacher=output/t_eval" "student=output/s_eval"
"""

import argparse
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "TextKD")
)


def read_results(folder: str) -> dict[str, float]:
    """The final evaluation results of a run as ``<task>/<metric>`` (``sem_seg/mIoU``, a LAD
    teacher's ``sem_seg_zero_label/mIoU``, …), read by :func:`textkd.report.read_run`."""
    from textkd.report import read_run

    run = read_run(folder)
    return {f"{task}/{k}": v for task, res in run.tasks.items() for k, v in res.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", help="NAME=FOLDER")
    ap.add_argument("--times", help="tsv of step name and seconds, printed below the table")
    args = ap.parse_args(argv)
    from textkd.report import read_run

    rows = []
    for spec in args.runs:
        name, folder = spec.split("=", 1)
        r = read_results(folder)
        rows.append(
            (
                name,
                r.get("sem_seg/mIoU", float("nan")),
                r.get("sem_seg/mIoU_all", float("nan")),
                r.get("sem_seg/pACC", float("nan")),
                r.get("sem_seg_zero_label/mIoU"),
                r.get("sem_seg_label_code/mIoU"),
                read_run(folder).best,
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  mIoU   mIoU(all)  pixAcc  (final model)")
    for name, miou, miou_all, pacc, zero, code, best in rows:
        extra = f"   (without label: mIoU {zero:.2f})" if zero is not None else ""
        extra += f"   (with the label code: mIoU {code:.2f})" if code is not None else ""
        if best is not None:
            extra += (
                f"   best: {best['metric']} {best['value']:.2f} at iteration "
                f"{best['iteration']} ({best.get('checkpoint', 'model_best.pth')})"
            )
        print(f"{name:<{width}}  {miou:5.2f}  {miou_all:9.2f}  {pacc:6.2f}{extra}")
    if args.times and os.path.isfile(args.times):
        print("\nstep times (s):")
        for line in open(args.times):
            step, sec = line.split()
            print(f"  {step:<{width}} {sec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
