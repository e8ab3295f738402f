"""``tools/report.py`` on two tiny synthetic runs (a baseline and a CWD student), and the
validation images the training loop writes to TensorBoard (``TEST.VIS_IMAGES``)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
import report as report_tool  # noqa: E402  (tools/report.py)
from PIL import Image  # noqa: E402
from textkd.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from textkd.report import read_run  # noqa: E402

BASELINE = str(H.SYNTH_CONFIGS / "deeplabv3_r18_baseline.yaml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs of 4 iterations, evaluated after iterations 2 and 4, two validation images
    drawn to TensorBoard: ``(baseline_dir, cwd_dir)``."""
    root = H.synthetic_root(tmp_path_factory)
    H.register_tiny(root, n_val=4)
    d = tmp_path_factory.mktemp("report_runs")
    tcfg = H.teacher_config(d / "teacher.yaml", channels=24)
    tweights = H.save_random_teacher(tcfg, d / "teacher.pth", seed=2)
    cwd_cfg = H.write_config(
        d / "cwd.yaml",
        "deeplabv3_r18_baseline.yaml",
        f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER: {{CONFIG_FILE: "{tcfg}", WEIGHTS: "{tweights}"}}
    TERMS:
      cwd_logits: {{METHOD: cwd, INPUT: logits, WEIGHT: 3.0, TEMPERATURE: 4.0}}
""",
    )
    out = []
    for name, cfg_file in (("baseline", BASELINE), ("cwd", cwd_cfg)):
        o = d / name
        opts = H.tiny_opts(o, max_iter=4, eval_period=2, extra=["TEST.VIS_IMAGES", 2])
        H.run_training(H.load_cfg(cfg_file, opts), record=False)
        out.append(o)
    return tuple(out)


def test_report_has_its_table_and_figures(runs, tmp_path, capsys):
    base, cwd = runs
    out = tmp_path / "report"
    argv = ["--output", str(out), "--baseline", "base", f"base={base}", f"CWD={cwd}"]
    assert report_tool.main(argv) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    md = (out / "report.md").read_text()
    for fig in ("per_class_iou.png", "iou_delta.png", "loss_curves.png", "val_miou.png"):
        assert f"]({fig})" in md
        with Image.open(out / fig) as im:  # a real, non-empty picture
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 10
    assert "loss_cwd_logits" in md and "loss_sem_seg" in md and "loss_aux" in md

    res = {}
    for label, d in (("base", base), ("CWD", cwd)):
        (f,) = glob.glob(os.path.join(d, "inference", "*", "sem_seg_evaluation.json"))
        res[label] = json.load(open(f))["sem_seg"]
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    m_base, m_cwd = res["base"]["mIoU"], res["CWD"]["mIoU"]
    assert f"| base | baseline | {m_base:.2f} |" in rows["base"]
    assert f"| CWD | student | {m_cwd:.2f} |" in rows["CWD"]
    assert rows["CWD"].rstrip().endswith(f"{m_cwd - m_base:+.2f} |")
    for name in SYNTHETIC_CLASSES:  # the per-class table, every class
        iou = [res[r][f"IoU-{name}"] for r in ("base", "CWD")]
        cells = " | ".join("–" if v is None else f"{v:.2f}" for v in iou)
        assert f"| {name} | {cells} |" in md

    # the curves: every loss term at the logged iterations, two validation mIoU points
    run = read_run(str(cwd), "CWD")
    assert {"loss_sem_seg", "loss_aux", "loss_cwd_logits"} <= set(run.losses)
    assert len(run.miou_curve) == 2 and run.miou_curve[0][0] == 1  # after iterations 2, 4
    assert run.miou_curve[-1][1] == pytest.approx(m_cwd)


def test_report_without_baseline_and_bad_labels(runs, tmp_path):
    base, cwd = runs
    out = tmp_path / "r"
    assert report_tool.main(["--output", str(out), f"a={base}", f"b={cwd}"]) == 0
    assert not (out / "iou_delta.png").exists()  # no baseline: no per-class change
    with pytest.raises(ValueError, match="'nope' is not one of the run labels"):
        report_tool.main(["--output", str(out), "--teacher", "nope", f"a={base}"])
    with pytest.raises(FileNotFoundError, match="missing_run"):
        report_tool.main(["--output", str(out), f"a={tmp_path / 'missing_run'}"])


def test_training_writes_validation_images_to_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for d, panels in zip(runs, (2, 3)):  # prediction | (teacher) | ground truth
        (ev,) = glob.glob(os.path.join(d, "events.out.tfevents.*"))
        acc = EventAccumulator(ev, size_guidance={"images": 0})
        acc.Reload()
        tags = sorted(acc.Tags()["images"])
        assert tags == ["val_images/0_00000", "val_images/1_00001"]
        for tag in tags:
            events = acc.Images(tag)
            assert len(events) == 2  # the evaluation after iteration 2 and the end of training
            assert events[0].width == panels * 128 + (panels - 1) * 4  # 128×128 images
            assert events[0].height > 128 + 14  # titles and a legend
