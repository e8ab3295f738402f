"""Framework-free parts of prediction and export: the pictures of ``textkd.visualize`` and the
deployable wrapper / exportable pooling of ``textkd.deploy`` (no detectron2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from textkd.deploy import DeployableSegmentor, adaptive_avg_pool2d_matmul
from textkd.models.segmentor import build_segmentor
from textkd.visualize import (
    DISAGREE_COLOR,
    colorize,
    comparison,
    default_palette,
    disagreement,
    overlay,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_colorize_overlay_and_disagreement():
    label = np.array([[0, 1], [2, 255]])
    col = colorize(label, COLORS)
    assert col.tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 0, 0]]]
    image = np.full((2, 2, 3), 100, np.uint8)
    ov = overlay(image, label, COLORS, alpha=0.5)
    assert ov[0, 0].tolist() == [178, 50, 50]  # (100 + 255) / 2 rounded, 100 / 2
    assert ov[1, 1].tolist() == [100, 100, 100]  # ignore: the image unchanged
    with pytest.raises(ValueError, match="label value 7 has no colour"):
        colorize(np.array([[7]]), COLORS)
    other = label.copy()
    other[0, 1] = 0
    dis = disagreement(image, label, other)
    assert (dis == np.array(DISAGREE_COLOR)).all(-1).tolist() == [[False, True], [False, False]]
    pic = comparison(image, label, other, ["a", "b", "c"], COLORS)
    assert pic.shape[1] == 3 * 2 + 2 * 4  # teacher | student | disagreement, 4-pixel gaps
    assert len(set(default_palette(20))) == 20


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
@pytest.mark.parametrize("size", [(7, 9), (16, 16), (13, 5)])
def test_exportable_adaptive_pooling_equals_pytorch(bins, size):
    x = torch.randn(2, 3, *size)
    ref = F.adaptive_avg_pool2d(x, bins)
    torch.testing.assert_close(adaptive_avg_pool2d_matmul(x, bins), ref, rtol=1e-5, atol=1e-6)


def test_deployable_normalises_inside_and_returns_input_size():
    torch.manual_seed(0)
    seg = build_segmentor("fcn", "resnet18d", num_classes=4, channels=16, aux=False).eval()
    mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
    dep = DeployableSegmentor(seg, mean, std)
    x = torch.rand(1, 3, 40, 56) * 255
    with torch.no_grad():
        out = dep(x)
        norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        ref = F.interpolate(seg(norm).logits, size=(40, 56), mode="bilinear")
    assert out.shape == (1, 4, 40, 56)
    torch.testing.assert_close(out, ref)
    labels = DeployableSegmentor(seg, mean, std, argmax=True)(x)
    assert torch.equal(labels, ref.argmax(1))
    img = (x[0].permute(1, 2, 0)).numpy().astype(np.uint8)
    (pred,) = dep.predict([img])
    assert pred.shape == (40, 56)
    with pytest.raises(ValueError, match="LAD"):
        DeployableSegmentor(seg, (1.0, 2.0, 3.0, 4.0), (1.0, 1.0, 1.0, 1.0))
