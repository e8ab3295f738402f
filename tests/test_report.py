"""``textkd.report`` on hand-written run directories (no detectron2): results read from
``metrics.json`` when there is no evaluation file, the roles' columns, and clear errors."""

from __future__ import annotations

import json

import pytest
from textkd.report import read_run, write_report

CLASSES = ["sky", "road"]


def _run(path, mious, ious=None, losses=("loss_sem_seg",), eval_file=None):
    """A run directory: a loss row per 10 iterations and an evaluation row per mIoU."""
    path.mkdir(parents=True)
    rows = []
    for i, m in enumerate(mious):
        for it in range(i * 20, i * 20 + 20, 10):
            rows.append({"iteration": it + 9, **{k: 1.0 / (it + 10) for k in losses}})
        ev = {"iteration": i * 20 + 19, "sem_seg/mIoU": m, "sem_seg/mIoU_all": m - 1}
        ev.update({f"sem_seg/IoU-{c}": v for c, v in zip(CLASSES, ious or (m, m))})
        rows.append(ev)
    (path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if eval_file is not None:
        (path / "inference" / "ds").mkdir(parents=True)
        (path / "inference" / "ds" / "sem_seg_evaluation.json").write_text(json.dumps(eval_file))
    return str(path)


def test_results_curves_and_roles(tmp_path):
    t = read_run(_run(tmp_path / "t", [50.0, 70.0], [80.0, 60.0]), "T")
    b = read_run(_run(tmp_path / "b", [40.0, 50.0], [60.0, 40.0]), "B")
    s = read_run(
        _run(tmp_path / "s", [45.0, 60.0], [70.0, 50.0], ("loss_sem_seg", "loss_cwd_logits")), "S"
    )
    assert s.results["mIoU"] == 60.0 and s.class_iou == {"sky": 70.0, "road": 50.0}
    assert s.miou_curve == [(19, 45.0), (39, 60.0)]
    assert [it for it, _ in s.losses["loss_cwd_logits"]] == [9, 19, 29, 39]
    path = write_report([t, b, s], str(tmp_path / "out"), teacher="T", baseline="B")
    md = open(path).read()
    assert "| S | student | 60.00 | 59.00 | – | +10.00 | 50% |" in md  # (60-50)/(70-50)
    assert "| T | teacher | 70.00 | 69.00 | – | +20.00 | – |" in md
    assert "| road | 60.00 | 40.00 | 50.00 |" in md
    for fig in ("per_class_iou.png", "iou_delta.png", "loss_curves.png", "val_miou.png"):
        assert (tmp_path / "out" / fig).stat().st_size > 1000


def test_evaluation_file_wins_over_metrics(tmp_path):
    ev = {"sem_seg": {"mIoU": 33.0, "mIoU_all": 30.0, "pACC": 90.0, "IoU-sky": None}}
    r = read_run(_run(tmp_path / "r", [10.0], eval_file=ev))
    assert r.results["mIoU"] == 33.0 and r.results_source.endswith("sem_seg_evaluation.json")
    assert r.label == "r"


def test_errors_name_the_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found: .*nowhere"):
        read_run(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no evaluation results.*--eval-only"):
        read_run(str(tmp_path / "empty"), "E")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"iteration": 1}\n{"iteration": 2, \n')
    with pytest.raises(ValueError, match="metrics.json line 2 is not JSON"):
        read_run(str(bad))
    a = read_run(_run(tmp_path / "a", [1.0]), "A")
    with pytest.raises(ValueError, match="unique"):
        write_report([a, a], str(tmp_path / "o"))
    with pytest.raises(ValueError, match="both the teacher and the baseline"):
        write_report([a], str(tmp_path / "o"), teacher="A", baseline="A")


def test_every_evaluation_task_is_kept_and_summarized(tmp_path, capsys):
    """A LAD teacher's second task (``sem_seg_zero_label``) is read from the evaluation file and,
    without one, from metrics.json; ``tools/summarize_results.py`` prints it through read_run."""
    import summarize_results

    ev = {"sem_seg": {"mIoU": 46.3, "mIoU_all": 46.3, "pACC": 83.6}}
    ev["sem_seg_zero_label"] = {"mIoU": 46.4, "mIoU_all": 46.4, "pACC": 83.5}
    from_file = read_run(_run(tmp_path / "f", [10.0], eval_file=ev))
    assert from_file.tasks == ev and from_file.results == ev["sem_seg"]

    path = _run(tmp_path / "m", [20.0, 30.0])
    rows = [json.loads(line) for line in open(f"{path}/metrics.json")]
    rows[-1]["sem_seg_zero_label/mIoU"] = 25.0
    open(f"{path}/metrics.json", "w").write("\n".join(json.dumps(r) for r in rows) + "\n")
    from_metrics = read_run(path)
    assert from_metrics.tasks["sem_seg_zero_label"] == {"mIoU": 25.0}
    assert from_metrics.results["mIoU"] == 30.0

    assert summarize_results.main([f"lad={tmp_path / 'f'}", f"m={path}"]) == 0
    out = capsys.readouterr().out
    assert "46.30      46.30   83.60   (without label: mIoU 46.40)" in out
    assert "30.00      29.00" in out and "(without label: mIoU 25.00)" in out
