"""Markdown report with figures from training run directories (pure Python + matplotlib).

A run directory is a ``tools/train_net.py`` ``OUTPUT_DIR``: its ``metrics.json`` (one JSON object
per line: ``iteration``, the ``loss_<name>`` terms, ``sem_seg/*`` evaluation results) and the
evaluator's ``inference/<dataset>/sem_seg_evaluation.json``. :func:`read_run` reads one;
:func:`write_report` writes ``report.md`` and its PNG figures:

* ``per_class_iou.png``: per-class IoU of every run (grouped bars);
* ``iou_delta.png``: per class, each student's IoU minus the baseline's (needs a baseline);
* ``loss_curves.png``: every ``loss_<name>`` term over iterations, one panel per term;
* ``val_miou.png``: the validation mIoU over iterations.

The final numbers of a run are its ``sem_seg_evaluation.json`` (the last evaluation written),
else the last ``sem_seg/*`` row of ``metrics.json``. The best checkpoint of a run that kept one
(``TEXTKD.BEST_CHECKPOINT``) is read from ``final_and_best.json`` (written at the end of training),
else from ``model_best.json`` (a run still going), and shown beside the final numbers.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["RunData", "read_run", "write_report", "ROLE_TEACHER", "ROLE_BASELINE"]

ROLE_TEACHER = "teacher"
ROLE_BASELINE = "baseline"
ROLE_STUDENT = "student"


@dataclass
class RunData:
    """One run: ``label``, ``path``, final ``results`` (``sem_seg`` task: mIoU, IoU-<class>, …),
    ``results_source`` (file they came from), ``losses`` (name -> [(iteration, value)]),
    ``miou_curve`` ([(iteration, mIoU)]) and ``tasks``: the final results of every evaluation
    task of that file (``sem_seg``, and e.g. a LAD teacher's ``sem_seg_zero_label``);
    ``best``: the best checkpoint (``metric``, ``value``, ``iteration``, ``checkpoint``,
    ``results`` flattened as ``<task>/<score>``) or None when the run kept none."""

    label: str
    path: str
    results: dict
    results_source: str
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    miou_curve: list[tuple[int, float]] = field(default_factory=list)
    role: str = ROLE_STUDENT
    tasks: dict[str, dict] = field(default_factory=dict)
    best: dict | None = None

    @property
    def class_iou(self) -> dict[str, float]:
        return {k[len("IoU-") :]: _num(v) for k, v in self.results.items() if k.startswith("IoU-")}


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _read_metrics(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path} line {i} is not JSON ({e}): a damaged metrics file"
                ) from None
    return rows


def read_run(path: str, label: str | None = None) -> RunData:
    """Read a run directory (see the module docstring); errors name the directory and say what
    is missing."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run directory not found: {path}")
    label = label or os.path.basename(os.path.normpath(path))
    metrics_file = os.path.join(path, "metrics.json")
    rows = _read_metrics(metrics_file) if os.path.isfile(metrics_file) else []
    losses: dict[str, list[tuple[int, float]]] = {}
    curve: list[tuple[int, float]] = []
    last_eval: dict[str, dict] = {}
    for row in rows:
        it = int(row.get("iteration", -1))
        for k, v in row.items():
            if k.startswith("loss_") and isinstance(v, (int, float)):
                losses.setdefault(k, []).append((it, float(v)))
        if isinstance(row.get("sem_seg/mIoU"), (int, float)):
            curve.append((it, float(row["sem_seg/mIoU"])))
            last_eval = {}
            for k, v in row.items():
                task, sep, key = k.partition("/")
                if sep and task.startswith("sem_seg"):
                    last_eval.setdefault(task, {})[key] = v
    evals = sorted(
        glob.glob(os.path.join(path, "inference", "*", "sem_seg_evaluation.json")),
        key=os.path.getmtime,
    )
    tasks, source = {}, ""
    if evals:
        source = evals[-1]
        with open(source) as f:
            tasks = json.load(f)
        if not isinstance(tasks.get("sem_seg"), dict):
            raise ValueError(f"{source} has no 'sem_seg' results: not a TextKD evaluation file")
    elif last_eval:
        tasks, source = last_eval, metrics_file
    else:
        raise FileNotFoundError(
            f"run {label!r} ({path}) has no evaluation results: neither "
            "inference/<dataset>/sem_seg_evaluation.json nor sem_seg/* rows in metrics.json "
            "(evaluate it with tools/train_net.py --eval-only OUTPUT_DIR <this folder>)"
        )
    return RunData(
        label, path, tasks["sem_seg"], source, losses, curve, tasks=tasks, best=_read_best(path)
    )


def _read_best(path: str) -> dict | None:
    """The best checkpoint of a run directory (see the module docstring), or None."""
    summary = os.path.join(path, "final_and_best.json")
    record = os.path.join(path, "model_best.json")
    if os.path.isfile(summary):
        source = summary
        with open(summary) as f:
            data = json.load(f)
        best = data.get("best")
        if best is None:
            return None
        best = dict(best, metric=data.get("metric"))
    elif os.path.isfile(record):
        source = record
        with open(record) as f:
            best = json.load(f)
    else:
        return None
    for key in ("metric", "value", "iteration"):
        if key not in best:
            raise ValueError(f"{source} has no {key!r}: not a TextKD best-checkpoint record")
    best.setdefault("results", {})
    best["source"] = source
    return best


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_chart(
    classes: Sequence[str], series: Sequence[tuple[str, list[float]]], ylabel: str, title: str,
    path: str, zero_line: bool = False,
) -> None:  # fmt: skip
    plt = _plt()
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) * n + 2), 4))
    for i, (name, vals) in enumerate(series):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(classes))]
        ax.bar(xs, [0.0 if math.isnan(v) else v for v in vals], width, label=name)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _loss_figure(runs: Sequence[RunData], path: str) -> list[str]:
    names = sorted({k for r in runs for k in r.losses})
    if not names:
        return []
    plt = _plt()
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for i, r in enumerate(runs):
            pts = r.losses.get(name)
            if pts:  # one colour per run in every panel
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i}", label=r.label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return names


def _miou_figure(runs: Sequence[RunData], path: str) -> bool:
    if not any(r.miou_curve for r in runs):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(runs):
        if r.miou_curve:
            xs, ys = [p[0] for p in r.miou_curve], [p[1] for p in r.miou_curve]
            ax.plot(xs, ys, "o-", color=f"C{i}", label=r.label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title("validation mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- report


def _fmt(v) -> str:
    v = _num(v)
    return "–" if math.isnan(v) else f"{v:.2f}"


def _signed(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:+.2f}"


def _best_words(best: dict | None) -> str:
    """``<metric> <value> @ iteration <it>`` of a run's best checkpoint, or "–"."""
    if best is None:
        return "–"
    return f"{best['metric']} {_fmt(best['value'])} @ iteration {best['iteration']}"


def write_report(
    runs: Sequence[RunData],
    output: str,
    teacher: str | None = None,
    baseline: str | None = None,
    title: str = "TextKD run report",
) -> str:
    """Write ``output/report.md`` and its figures for ``runs``; ``teacher`` / ``baseline`` are
    run labels. Returns the report's path."""
    if not runs:
        raise ValueError("the report needs at least one run")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels must be unique, got {labels}")
    for role, lab in ((ROLE_TEACHER, teacher), (ROLE_BASELINE, baseline)):
        if lab is not None and lab not in labels:
            raise ValueError(f"--{role} {lab!r} is not one of the run labels {labels}")
    if teacher is not None and teacher == baseline:
        raise ValueError(f"{teacher!r} cannot be both the teacher and the baseline")
    for r in runs:
        r.role = (
            ROLE_TEACHER
            if r.label == teacher
            else ROLE_BASELINE if r.label == baseline else ROLE_STUDENT
        )
    by = {r.label: r for r in runs}
    classes: list[str] = []
    for r in runs:
        classes += [c for c in r.class_iou if c not in classes]
    os.makedirs(output, exist_ok=True)

    figures: list[tuple[str, str]] = []
    if classes:
        _bar_chart(
            classes,
            [(r.label, [r.class_iou.get(c, float("nan")) for c in classes]) for r in runs],
            "IoU (%)",
            "per-class IoU",
            os.path.join(output, "per_class_iou.png"),
        )
        figures.append(("Per-class IoU of every run", "per_class_iou.png"))
    students = [r for r in runs if r.role == ROLE_STUDENT]
    base = by.get(baseline) if baseline else None
    if base is not None and students and classes:
        series = [
            (
                f"{r.label} − {base.label}",
                [r.class_iou.get(c, math.nan) - base.class_iou.get(c, math.nan) for c in classes],
            )
            for r in students
        ]
        _bar_chart(
            classes,
            series,
            "Δ IoU (points)",
            f"per-class IoU change over {base.label}",
            os.path.join(output, "iou_delta.png"),
            zero_line=True,
        )
        figures.append((f"What each method changes per class (vs {base.label})", "iou_delta.png"))
    loss_names = _loss_figure(runs, os.path.join(output, "loss_curves.png"))
    if loss_names:
        figures.append(("Training losses (`" + "`, `".join(loss_names) + "`)", "loss_curves.png"))
    if _miou_figure(runs, os.path.join(output, "val_miou.png")):
        figures.append(("Validation mIoU", "val_miou.png"))

    t = by.get(teacher) if teacher else None
    lines = [f"# {title}", ""]
    head = "| run | role | mIoU | mIoU (all) | pACC |"
    sep = "|---|---|---|---|---|"
    with_best = any(r.best is not None for r in runs)
    if with_best:
        head += " best checkpoint |"
        sep += "---|"
    if base is not None:
        head += f" Δ mIoU vs {base.label} |"
        sep += "---|"
    if base is not None and t is not None:
        head += " teacher gap closed |"
        sep += "---|"
    lines += [head, sep]
    for r in runs:
        m = _num(r.results.get("mIoU"))
        row = f"| {r.label} | {r.role} | {_fmt(m)} | {_fmt(r.results.get('mIoU_all'))} | "
        row += f"{_fmt(r.results.get('pACC'))} |"
        if with_best:
            row += f" {_best_words(r.best)} |"
        if base is not None:
            row += f" {_signed(m - _num(base.results.get('mIoU')))} |"
        if base is not None and t is not None and r.role != ROLE_STUDENT:
            row += " – |"
        elif base is not None and t is not None:
            gap = _num(t.results.get("mIoU")) - _num(base.results.get("mIoU"))
            closed = (
                (m - _num(base.results.get("mIoU"))) / gap * 100 if abs(gap) > 1e-9 else math.nan
            )
            row += f" {'–' if math.isnan(closed) else f'{closed:.0f}%'} |"
        lines.append(row)
    lines += ["", "Numbers in %; mIoU over the classes present in the validation set, mIoU (all)"]
    lines += ["over all classes (CIRKD convention). Sources:", ""]
    lines += [f"* {r.label}: `{r.results_source}`" for r in runs]
    if classes:
        lines += ["", "## Per-class IoU", ""]
        lines.append("| class | " + " | ".join(r.label for r in runs) + " |")
        lines.append("|---|" + "---|" * len(runs))
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(_fmt(r.class_iou.get(c)) for r in runs) + " |")
    for caption, fname in figures:
        lines += ["", f"## {caption}", "", f"![{caption}]({fname})"]
    lines.append("")
    path = os.path.join(output, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path
