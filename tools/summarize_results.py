#!/usr/bin/env python
"""Print an mIoU table from detectron2 output folders (their ``metrics.json`` / ``log.txt``).

python tools/summarize_results.py "teacher=output/t_eval" "student=output/s_eval"
"""

import argparse
import json
import os
import re


def read_results(folder: str) -> dict[str, float]:
    """The last evaluation results of a run: ``sem_seg/*`` entries of metrics.json, else the
    "copypaste" lines detectron2 logs at the end of ``--eval-only``."""
    results: dict[str, float] = {}
    metrics = os.path.join(folder, "metrics.json")
    if os.path.isfile(metrics):
        with open(metrics) as f:
            for line in f:
                rec = json.loads(line)
                if any(k.startswith("sem_seg") for k in rec):
                    results = {k: v for k, v in rec.items() if k.startswith("sem_seg")}
    if results:
        return results
    log = os.path.join(folder, "log.txt")
    if not os.path.isfile(log):
        raise FileNotFoundError(f"no metrics.json or log.txt with results in {folder}")
    lines = open(log).read().splitlines()
    task = None
    for i, line in enumerate(lines):
        m = re.search(r"copypaste: Task: (\S+)", line)
        if m:
            task = m.group(1)
            keys = lines[i + 1].split("copypaste: ")[-1].split(",")
            vals = lines[i + 2].split("copypaste: ")[-1].split(",")
            for k, v in zip(keys, vals):
                try:
                    results[f"{task}/{k}"] = float(v)
                except ValueError:
                    pass
    if not results:
        raise ValueError(f"no evaluation results found in {log}")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", help="NAME=FOLDER")
    ap.add_argument("--times", help="tsv of step name and seconds, printed below the table")
    args = ap.parse_args(argv)
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
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  mIoU   mIoU(all)  pixAcc")
    for name, miou, miou_all, pacc, zero in rows:
        extra = f"   (without label: mIoU {zero:.2f})" if zero is not None else ""
        print(f"{name:<{width}}  {miou:5.2f}  {miou_all:9.2f}  {pacc:6.2f}{extra}")
    if args.times and os.path.isfile(args.times):
        print("\nstep times (s):")
        for line in open(args.times):
            step, sec = line.split()
            print(f"  {step:<{width}} {sec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
