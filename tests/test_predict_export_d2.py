"""Using a trained model: ``tools/predict.py`` (overlays, label PNGs, teacher/student comparison,
videos, bad input) and the TorchScript / ONNX export of ``tools/export_student.py`` (parity with
PyTorch at two input sizes for DeepLabV3-R18, PSPNet-R18, DeepLabV3-MobileNetV2 and STDC1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.detectron2

import _d2_helpers as H  # noqa: E402
import export_student  # noqa: E402  (tools/export_student.py)
import predict  # noqa: E402  (tools/predict.py)
from PIL import Image  # noqa: E402
from textkd.d2.build import build_segmentor_from_cfg  # noqa: E402
from textkd.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS  # noqa: E402
from textkd.deploy import (  # noqa: E402
    DeployableSegmentor,
    compare_outputs,
    export_onnx,
    export_torchscript,
    load_exported,
    onnxruntime_available,
)
from textkd.predictor import build_deployable, load_model  # noqa: E402
from textkd.visualize import DISAGREE_COLOR, overlay  # noqa: E402

BASELINE = str(H.SYNTH_CONFIGS / "deeplabv3_r18_baseline.yaml")
COLORS = [tuple(c) for c in SYNTHETIC_COLORS]


@pytest.fixture(scope="module")
def student(data_root, tmp_path_factory):
    """A tiny trained single-model run (12 iterations): ``(config, weights, opts)``."""
    out = tmp_path_factory.mktemp("predict_student")
    opts = H.tiny_opts(out, max_iter=12, lr=0.02)
    opts += ["TEST.VIS_IMAGES", "0"]
    H.run_training(H.load_cfg(BASELINE, opts), record=False)
    return BASELINE, str(out / "model_final.pth"), ["MODEL.SEM_SEG_HEAD.CHANNELS", "32",
                                                    "MODEL.SEM_SEG_HEAD.AUX_CHANNELS", "16",
                                                    "DATASETS.TEST", f"('{H.TINY_VAL}',)"]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory):
    """A random (seeded) synthetic teacher: ``(config, weights)``."""
    d = tmp_path_factory.mktemp("predict_teacher")
    cfg = H.teacher_config(d / "teacher.yaml", arch="resnet18d", channels=24)
    return cfg, H.save_random_teacher(cfg, d / "teacher.pth", seed=3)


def _images(folder, sizes=((64, 80), (48, 48), (64, 80))):
    """Generated RGB images (noise + a few rectangles) under ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[h // 4 : h // 2, w // 3 :] = COLORS[i % len(COLORS)]
        p = os.path.join(folder, f"img{i}.png")
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def _has_swatch(picture, color, size=10) -> bool:
    """Whether ``picture`` holds a solid ``size``×``size`` block of ``color`` (a legend swatch;
    anti-aliased text may contain single pixels of any grey)."""
    mask = (picture == np.array(color, np.uint8)).all(-1).astype(np.int64)
    ii = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s = ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]
    return bool((s == size * size).any())


def _meta_arch_labels(cfg_file, weights, opts, image):
    """The argmax of the detectron2 meta-architecture's inference (the evaluation path)."""
    _, model = load_model(cfg_file, weights, opts)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    with torch.no_grad():
        out = model([{"image": x, "height": x.shape[1], "width": x.shape[2]}])[0]["sem_seg"]
    return out.argmax(0).numpy()


def test_label_pngs_equal_the_model_argmax_and_overlays_use_the_dataset_colours(student, tmp_path):
    cfg_file, weights, opts = student
    paths = _images(tmp_path / "in")
    Image.open(paths[0]).save(tmp_path / "in" / "broken.png")  # then damage it
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    labels_dir, over_dir = tmp_path / "labels", tmp_path / "overlays"
    base = ["--config-file", cfg_file, "--weights", weights, "--input", str(tmp_path / "in")]
    # the bad image is listed at the end; the others are written (exit code 1)
    rc = predict.main(
        base + ["--output", str(labels_dir), "--format", "label", "--batch-size", "2"] + opts
    )
    assert rc == 1
    assert sorted(os.listdir(labels_dir)) == ["img0.png", "img1.png", "img2.png"]
    seen = set()
    for p in paths:
        name = os.path.basename(p)
        image = np.asarray(Image.open(p))
        label = np.asarray(Image.open(labels_dir / name))
        assert label.dtype == np.uint8 and label.shape == image.shape[:2]
        ref = _meta_arch_labels(cfg_file, weights, opts, image)
        np.testing.assert_array_equal(label, ref)
        seen |= set(np.unique(label).tolist())
    assert len(seen) > 1, "the trained model predicts one class only: the test would be trivial"

    assert predict.main(base + ["--output", str(over_dir), "--alpha", "0.6"] + opts) == 1
    for p in paths:
        name = os.path.basename(p)
        image = np.asarray(Image.open(p))
        label = np.asarray(Image.open(labels_dir / name))
        pic = np.asarray(Image.open(over_dir / name))
        h, w = image.shape[:2]
        assert pic.shape[1] == w and pic.shape[0] > h  # image, then the legend below
        np.testing.assert_array_equal(pic[:h], overlay(image, label, COLORS, 0.6))
        for k in range(len(COLORS)):  # a swatch for every class present, none for the others
            has = _has_swatch(pic[h:], COLORS[k])
            assert has == (k in np.unique(label)), (name, SYNTHETIC_CLASSES[k])


def test_compare_writes_teacher_student_ground_truth_and_disagreement(student, teacher, tmp_path):
    cfg_file, weights, opts = student
    tcfg, tweights = teacher
    (p,) = _images(tmp_path / "in", sizes=((48, 64),))
    gt = np.zeros((48, 64), np.uint8)
    gt[:, 32:] = 3
    gt[0, 0] = 255
    os.makedirs(tmp_path / "gt")
    Image.fromarray(gt).save(tmp_path / "gt" / "img0.png")
    argv = ["--config-file", cfg_file, "--weights", weights, "--input", p]
    argv += ["--output", str(tmp_path / "out"), "--compare", tcfg, tweights]
    assert predict.main(argv + ["--labels", str(tmp_path / "gt")] + opts) == 0
    pic = np.asarray(Image.open(tmp_path / "out" / "img0.png"))

    image = np.asarray(Image.open(p))
    _, s_model = build_deployable(cfg_file, weights, opts)
    _, t_model = build_deployable(tcfg, tweights)
    s_lab, t_lab = s_model.predict([image])[0], t_model.predict([image])[0]
    title, gap, w = 14, 4, 64
    panels = [pic[title : title + 48, i * (w + gap) : i * (w + gap) + w] for i in range(4)]
    assert pic.shape[1] == 4 * w + 3 * gap
    np.testing.assert_array_equal(panels[0], overlay(image, t_lab, COLORS))
    np.testing.assert_array_equal(panels[1], overlay(image, s_lab, COLORS))
    np.testing.assert_array_equal(panels[2], overlay(image, gt, COLORS))
    marked = (panels[3] == np.array(DISAGREE_COLOR, np.uint8)).all(-1)
    assert (t_lab != s_lab).any(), "teacher and student agree everywhere: nothing to mark"
    np.testing.assert_array_equal(marked, t_lab != s_lab)


def test_video_in_video_out_and_unreadable_video(student, tmp_path):
    import cv2

    cfg_file, weights, opts = student
    vid = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(vid, cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    assert writer.isOpened()
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    argv = ["--config-file", cfg_file, "--weights", weights, "--output", str(tmp_path / "out")]
    assert predict.main(argv + ["--input", vid] + opts) == 0
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 3
    # label PNGs per frame
    assert predict.main(argv + ["--input", vid, "--format", "label"] + opts) == 0
    assert sorted(os.listdir(tmp_path / "out" / "clip")) == [f"frame_{i:06d}.png" for i in range(3)]


def test_bad_input_names_the_file(student, teacher, data_root, tmp_path, capsys):
    cfg_file, weights, opts = student
    base = ["--config-file", cfg_file, "--weights", weights, "--output", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        predict.main(base + ["--input", str(tmp_path / "nowhere.png")] + opts)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    assert predict.main(base + ["--input", str(tmp_path / "bad.mp4")] + opts) == 1
    err = capsys.readouterr().err
    assert "OpenCV cannot read video" in err and "bad.mp4" in err
    (p,) = _images(tmp_path / "in", sizes=((32, 32),))
    # a ground-truth label of another size than its image
    os.makedirs(tmp_path / "gt")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "gt" / "img0.png")
    argv = base + ["--input", p, "--compare", *teacher, "--labels", str(tmp_path / "gt")]
    assert predict.main(argv + opts) == 1
    err = capsys.readouterr().err
    assert "gt/img0.png is 12x10 but image" in err and "in/img0.png is 32x32" in err
    # weights of another config (head width 32 vs the config's 128)
    with pytest.raises(ValueError, match="model_final.pth"):
        predict.main(
            ["--config-file", cfg_file, "--weights", weights, "--output", str(tmp_path / "o"),
             "--input", p, "DATASETS.TEST", f"('{H.TINY_VAL}',)"]
        )  # fmt: skip


# --------------------------------------------------------------------------- export

ARCHS = {
    "deeplabv3_r18": "deeplabv3_r18_baseline.yaml",
    "pspnet_r18": "pspnet_r18_baseline.yaml",
    "deeplabv3_mbv2": "deeplabv3_mbv2_baseline.yaml",
    "stdc1": "stdc1_baseline.yaml",
}


def _deployable(name, argmax=False):
    cfg = H.load_cfg(str(H.SYNTH_CONFIGS / ARCHS[name]), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    seg = build_segmentor_from_cfg(cfg)
    # non-trivial BN statistics, so eval-mode normalisation is exercised
    for m in seg.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return DeployableSegmentor(seg, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, argmax).eval()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_export_matches_pytorch_at_two_sizes(name, fmt, tmp_path):
    if fmt == "onnx" and not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    model = _deployable(name)
    gen = torch.Generator().manual_seed(1)
    sample = torch.rand(1, 3, 64, 64, generator=gen) * 255
    path = str(tmp_path / f"m.{fmt}")
    (export_torchscript if fmt == "torchscript" else export_onnx)(model, path, sample)
    run = load_exported(path, fmt)
    for shape in ((1, 3, 64, 64), (2, 3, 72, 104)):  # the export size and another one
        x = torch.rand(*shape, generator=gen) * 255
        with torch.no_grad():
            ref = model(x)
        out = run(x)
        assert tuple(out.shape) == (shape[0], model.num_classes, *shape[2:])
        res = compare_outputs(ref, out, argmax=False)
        assert res["argmax_agreement"] >= 0.999, res
        assert res["max_rel"] <= 1e-4, res


def test_argmax_export_returns_the_label_map(tmp_path):
    if not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    model = _deployable("pspnet_r18", argmax=True)
    sample = torch.rand(1, 3, 64, 64) * 255
    export_onnx(model, str(tmp_path / "m.onnx"), sample)
    x = torch.rand(1, 3, 56, 88) * 255
    out = load_exported(str(tmp_path / "m.onnx"), "onnx")(x)
    with torch.no_grad():
        ref = model(x)
    assert out.shape == (1, 56, 88) and out.dtype == torch.int64
    assert (out == ref).double().mean().item() >= 0.999


def test_export_student_cli_checks_parity_and_reports_latency(student, tmp_path, capsys):
    cfg_file, weights, opts = student
    fmts = ["torchscript"] + (["onnx"] if onnxruntime_available() else [])
    for fmt in fmts:
        out = tmp_path / f"student.{fmt}"
        args = ["--config-file", cfg_file, "--weights", weights, "--output", out, "--format", fmt]
        args += ["--check-size", 64, 64, "--check-size", 48, 80, "--repeats", 1]
        assert export_student.main([str(a) for a in args + opts]) == 0
        stdout = capsys.readouterr().out
        lines = [ln for ln in stdout.splitlines() if ln.startswith("check ")]
        assert len(lines) == 2, stdout
        for ln in lines:
            assert "argmax agreement 100.000%" in ln and "latency PyTorch" in ln, ln
            assert "MISMATCH" not in ln
        assert out.is_file()
    # the exported TorchScript model gives the label PNGs' classes on an image
    image = np.asarray(Image.open(_images(tmp_path / "in", sizes=((40, 56),))[0]))
    run = load_exported(str(tmp_path / "student.torchscript"), "torchscript")
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    ref = _meta_arch_labels(cfg_file, weights, opts, image)
    np.testing.assert_array_equal(run(x)[0].argmax(0).numpy(), ref)
