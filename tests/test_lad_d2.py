"""End-to-end Label Assisted Distillation with detectron2 (the LAD issue): a label-conditioned
teacher trains with two noised-label paths and the consistency term, evaluates with and without
the label, a student distils from it through ``tools/train_net.py`` while the teacher is fed the
label code, and RGB / LAD checkpoint-config mix-ups are errors that say which is which."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from textkd.d2.mapper import TextKDSemSegDatasetMapper  # noqa: E402
from textkd.engine import TextKDCheckpointer, Trainer  # noqa: E402

LAD_KEYS = {
    "total_loss",
    "loss_sem_seg_path1",
    "loss_aux_path1",
    "loss_sem_seg_path2",
    "loss_aux_path2",
    "loss_consistency",
}


@pytest.fixture(scope="module")
def lad_teacher(data_root, tmp_path_factory):
    """A LAD teacher (R18d, width 48, 3+1 input channels) trained 6 iterations, evaluated."""
    d = tmp_path_factory.mktemp("lad_teacher")
    cfg_file = H.teacher_config(d / "lad_teacher.yaml", channels=48, lad=True)
    opts = H.tiny_opts(d / "out", max_iter=6, eval_period=6, lr=0.02, channels=None)
    cfg = H.load_cfg(cfg_file, opts)
    trainer, rec = H.run_training(cfg)
    return cfg_file, opts, cfg, trainer, rec, d / "out"


def test_lad_teacher_trains_with_both_paths_and_consistency(lad_teacher):
    cfg_file, opts, cfg, trainer, rec, out = lad_teacher
    model = trainer.model
    assert model.lad is not None
    first = model.segmentor.backbone.conv1[0]
    assert first.in_channels == 4
    assert rec.iters == list(range(6))
    for row in rec.losses:
        assert set(row) == LAD_KEYS
        assert all(math.isfinite(v) for v in row.values())
        assert row["loss_consistency"] >= 0.0
        parts = sum(v for k, v in row.items() if k != "total_loss")
        assert row["total_loss"] == pytest.approx(parts, rel=1e-5)
    # two independent label draws: the two paths' losses differ
    assert any(r["loss_sem_seg_path1"] != r["loss_sem_seg_path2"] for r in rec.losses)


def test_lad_teacher_evaluates_with_and_without_the_label(lad_teacher, tmp_path):
    cfg_file, opts, cfg, trainer, rec, out = lad_teacher
    final = trainer._last_eval_results
    assert list(final) == ["sem_seg", "sem_seg_zero_label"]
    for res in final.values():
        assert 0.0 <= res["mIoU"] <= 100.0
    # eval-only reproduces both results
    assert H.evaluate(cfg, out / "model_final.pth") == final
    # each mode alone gives the matching entry of "both"
    code = H.load_cfg(cfg_file, opts + ["MODEL.LAD.EVAL_LABEL", "code"])
    assert H.evaluate(code, out / "model_final.pth") == {"sem_seg": final["sem_seg"]}
    zero = H.load_cfg(cfg_file, opts + ["MODEL.LAD.EVAL_LABEL", "zero"])
    assert H.evaluate(zero, out / "model_final.pth") == {"sem_seg": final["sem_seg_zero_label"]}

    # the two predictions really use different inputs: the label channel matters
    model = build_model(cfg)
    TextKDCheckpointer(model).load(str(out / "model_final.pth"), checkpointables=[])
    model.eval()
    mapper = TextKDSemSegDatasetMapper(cfg, False)
    batch = [mapper(r) for r in DatasetCatalog.get(H.TINY_VAL)[:2]]
    outputs = model(batch)
    for o, inp in zip(outputs, batch):
        assert o["sem_seg"].shape == (H.NUM_CLASSES, inp["height"], inp["width"])
        assert o["sem_seg_zero_label"].shape == o["sem_seg"].shape
        assert not torch.allclose(o["sem_seg"], o["sem_seg_zero_label"])


def _student_config(path, teacher_cfg, teacher_weights, extra_teacher_opts="[]") -> str:
    body = f"""MODEL:
  META_ARCHITECTURE: "DistillSemanticSegmentor"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{teacher_cfg}"
      WEIGHTS: "{teacher_weights}"
      OPTS: {extra_teacher_opts}
    TERMS:
      cwd_logits: {{METHOD: cwd, INPUT: logits, WEIGHT: 3.0, TEMPERATURE: 4.0}}
"""
    return H.write_config(path, "deeplabv3_r18_baseline.yaml", body)


def test_teacher_is_fed_the_label_code(lad_teacher, tmp_path):
    """With CODE_SIGMA 0 the frozen teacher's output is exactly the teacher on
    [normalised image, α·(y − c)/10] (ignore as class K), computed here by hand."""
    cfg_file, opts, cfg, trainer, rec, out = lad_teacher
    s_file = _student_config(
        tmp_path / "s.yaml", cfg_file, out / "model_final.pth", '["MODEL.LAD.CODE_SIGMA", 0.0]'
    )
    scfg = H.load_cfg(s_file, H.tiny_opts(tmp_path / "s"))
    model = build_model(scfg)
    model.train()
    mapper = TextKDSemSegDatasetMapper(scfg, True)
    batch = [mapper(r) for r in DatasetCatalog.get(H.TINY_TRAIN)[:2]]
    targets = torch.stack([b["sem_seg"] for b in batch])
    assert (targets == 255).any()  # crops padded / outlines: the ignore code is exercised
    got = model.teacher_forward(batch, targets)

    k = H.NUM_CLASSES
    c = (k + 1) // 2
    alpha = 100.0 / (sum(scfg.MODEL.PIXEL_STD) / 3)
    y = targets.clone()
    y[y == 255] = k
    code = alpha * (y.float() - c) / 10.0
    mean = torch.tensor(scfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(scfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    images = (torch.stack([b["image"] for b in batch]).float() - mean) / std
    x = torch.cat([images, code[:, None]], dim=1)
    with torch.no_grad():
        want = model.teacher(x)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.feature, want.feature)


@pytest.mark.slow
def test_student_distils_from_the_lad_teacher_through_train_net(lad_teacher, data_root, tmp_path):
    cfg_file, opts, cfg, trainer, rec, out = lad_teacher
    s_file = _student_config(tmp_path / "student.yaml", cfg_file, out / "model_final.pth")
    s_out = tmp_path / "student"
    args = H.tiny_opts(
        s_out,
        max_iter=3,
        eval_period=3,
        train="textkd_synthetic_train_sem_seg",
        test="textkd_synthetic_val_sem_seg",
    )
    proc = H.run_tool("train_net.py", ["--config-file", s_file, *args], H.subprocess_env(data_root))
    log = proc.stdout + proc.stderr
    assert "loaded teacher weights from" in log
    rows = H.read_metrics(s_out)
    train_rows = [r for r in rows if "total_loss" in r]
    assert train_rows and all(
        {"loss_sem_seg", "loss_aux", "loss_cwd_logits"} <= set(r) for r in train_rows
    )
    assert all(math.isfinite(r["loss_cwd_logits"]) for r in train_rows)
    res = json.loads(
        (
            s_out / "inference" / "textkd_synthetic_val_sem_seg" / "sem_seg_evaluation.json"
        ).read_text()
    )
    assert list(res) == ["sem_seg"]  # the RGB student: no label, no second prediction
    ckpt = torch.load(s_out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["model"]["segmentor.backbone.conv1.0.weight"].shape[1] == 3


def test_lad_and_rgb_checkpoints_do_not_mix(lad_teacher, data_root, tmp_path):
    cfg_file, opts, cfg, trainer, rec, out = lad_teacher
    lad_ckpt = str(out / "model_final.pth")
    rgb_cfg = H.teacher_config(tmp_path / "rgb_teacher.yaml", channels=48)
    rgb_ckpt = H.save_random_teacher(rgb_cfg, tmp_path / "rgb.pth")

    # a LAD teacher checkpoint with a 3-channel teacher config
    s = H.load_cfg(_student_config(tmp_path / "s1.yaml", rgb_cfg, lad_ckpt), H.tiny_opts(tmp_path))
    with pytest.raises(ValueError) as e:
        Trainer(s)
    msg = str(e.value)
    assert lad_ckpt in msg
    assert "is a LAD label-conditioned model" in msg and "builds an RGB model" in msg
    assert "MODEL.LAD.ENABLED True" in msg

    # an RGB checkpoint with a LAD teacher config
    s = H.load_cfg(_student_config(tmp_path / "s2.yaml", cfg_file, rgb_ckpt), H.tiny_opts(tmp_path))
    with pytest.raises(ValueError) as e:
        Trainer(s)
    msg = str(e.value)
    assert rgb_ckpt in msg
    assert "is an RGB model" in msg and "builds a LAD label-conditioned model" in msg
    assert "MODEL.LAD.ENABLED False" in msg

    # the same through --eval-only of a single model (the detectron2 checkpointer)
    with pytest.raises(ValueError, match="is a LAD label-conditioned model") as e:
        H.evaluate(H.load_cfg(rgb_cfg, H.tiny_opts(tmp_path, channels=None)), lad_ckpt)
    assert lad_ckpt in str(e.value)
    with pytest.raises(ValueError, match="is an RGB model") as e:
        H.evaluate(cfg, rgb_ckpt)
    assert rgb_ckpt in str(e.value)
