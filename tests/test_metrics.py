"""Confusion-matrix metrics (framework-free)."""

import math

import numpy as np
import pytest
import torch
from textkd.evaluation.metrics import ConfusionMatrix, compute_metrics, confusion_matrix


def _naive_confusion(pred, gt, k, ignore):
    conf = np.zeros((k, k), np.int64)
    for p, g in zip(np.asarray(pred).ravel().tolist(), np.asarray(gt).ravel().tolist()):
        if g == ignore:
            continue
        conf[g, p] += 1
    return conf


def test_hand_made_matrix_all_scores():
    # rows: ground truth, columns: prediction; class "c" never occurs in the ground truth
    # but is predicted twice.
    conf = np.array([[6, 2, 0], [0, 2, 2], [0, 0, 0]])
    res = compute_metrics(conf, ["a", "b", "c"])
    # tp = (6, 2, 0), gt = (8, 4, 0), pred = (6, 4, 2), union = (8, 6, 2)
    assert res["IoU-a"] == pytest.approx(100 * 6 / 8)
    assert res["IoU-b"] == pytest.approx(100 * 2 / 6)
    assert math.isnan(res["IoU-c"]) and math.isnan(res["ACC-c"])
    assert res["mIoU"] == pytest.approx(100 * (6 / 8 + 2 / 6) / 2)
    assert res["mIoU_all"] == pytest.approx(100 * (6 / 8 + 2 / 6 + 0) / 3)
    assert res["fwIoU"] == pytest.approx(100 * (8 / 12 * 6 / 8 + 4 / 12 * 2 / 6))
    assert res["ACC-a"] == pytest.approx(75.0)
    assert res["ACC-b"] == pytest.approx(50.0)
    assert res["mACC"] == pytest.approx(62.5)
    assert res["pACC"] == pytest.approx(100 * 8 / 12)


def test_class_absent_everywhere_counts_zero_only_in_miou_all():
    conf = np.zeros((4, 4), np.int64)
    conf[:3, :3] = [[6, 2, 0], [0, 2, 2], [0, 0, 0]]
    res = compute_metrics(conf)
    assert res["mIoU"] == pytest.approx(100 * (6 / 8 + 2 / 6) / 2)
    assert res["mIoU_all"] == pytest.approx(100 * (6 / 8 + 2 / 6) / 4)
    assert math.isnan(res["IoU-3"])  # default names are the class indices


def test_perfect_and_empty():
    res = compute_metrics(np.diag([5, 0, 7]))
    assert res["mIoU"] == pytest.approx(100.0)
    assert res["mIoU_all"] == pytest.approx(200.0 / 3)  # the absent class counts 0
    assert res["pACC"] == pytest.approx(100.0)
    empty = compute_metrics(np.zeros((2, 2), np.int64))
    assert all(math.isnan(empty[k]) for k in ("mIoU", "fwIoU", "mACC", "pACC"))
    assert empty["mIoU_all"] == 0.0


def test_ignore_pixels_are_not_counted():
    gt = np.array([[0, 1, 255], [2, 255, 1]])
    pred = np.array([[0, 2, 1], [2, 0, 1]])
    conf = confusion_matrix(pred, gt, num_classes=3, ignore_label=255)
    expected = np.zeros((3, 3), np.int64)
    expected[0, 0] = 1  # (0,0)
    expected[1, 2] = 1  # (0,1)
    expected[2, 2] = 1  # (1,0)
    expected[1, 1] = 1  # (1,2)
    np.testing.assert_array_equal(conf, expected)
    assert conf.sum() == 4
    # without an ignore label the 255 pixels are invalid labels
    with pytest.raises(ValueError, match="255"):
        confusion_matrix(pred, gt, num_classes=3, ignore_label=None)


@pytest.mark.parametrize("as_torch", [False, True])
def test_bincount_matches_naive_loop(as_torch):
    rng = np.random.default_rng(0)
    k = 5
    gt = rng.integers(0, k, size=(2, 17, 23))
    gt[rng.uniform(size=gt.shape) < 0.2] = 255
    pred = rng.integers(0, k, size=gt.shape)
    expected = _naive_confusion(pred, gt, k, 255)
    if as_torch:
        conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8), k)
    else:
        conf = confusion_matrix(pred.astype(np.uint8), gt.astype(np.uint8), k)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)
    # mixed: torch prediction, numpy label
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), gt, k), expected)


def test_miou_all_matches_cirkd_histogram_reference():
    """CIRKD's SegmentationMetric: histc of (pred+1)·[pred == target] over classes 1..K."""
    rng = np.random.default_rng(1)
    k = 6
    gt = rng.integers(0, k - 1, size=(3, 20, 20))  # class 5 never in the ground truth
    gt[:, :2] = 255
    pred = rng.integers(0, k, size=gt.shape)
    target = torch.from_numpy(gt).float() + 1
    target[target == 256] = 0  # CIRKD maps ignore (-1 there) to 0 after +1
    predict = (torch.from_numpy(pred).float() + 1) * (target > 0).float()
    inter = predict * (predict == target).float()
    area_inter = torch.histc(inter, bins=k, min=1, max=k)
    area_pred = torch.histc(predict, bins=k, min=1, max=k)
    area_lab = torch.histc(target, bins=k, min=1, max=k)
    union = area_pred + area_lab - area_inter
    ref = (area_inter.double() / (2.220446049250313e-16 + union.double())).mean().item()
    pix_acc = (area_inter.sum() / (target > 0).sum()).item()
    res = compute_metrics(confusion_matrix(pred, gt, k))
    assert res["mIoU_all"] == pytest.approx(100 * ref, rel=1e-9)
    assert res["pACC"] == pytest.approx(100 * pix_acc, rel=1e-6)
    assert res["mIoU"] > res["mIoU_all"]  # class 5 only lowers the all-class mean


@pytest.mark.parametrize("bad", [3, -1])
def test_invalid_prediction_is_an_error(bad):
    gt = np.zeros((2, 2), np.int64)
    pred = np.zeros((2, 2), np.int64)
    pred[1, 1] = bad
    with pytest.raises(ValueError, match=f"value {bad}"):
        confusion_matrix(pred, gt, num_classes=3)
    with pytest.raises(ValueError, match=f"value {bad}"):
        confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), num_classes=3)


def test_invalid_label_and_shape_errors():
    with pytest.raises(ValueError, match="label contains value 7"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), num_classes=3)
    with pytest.raises(ValueError, match="class names"):
        compute_metrics(np.eye(3), ["a", "b"])


def test_confusion_matrix_class_update_merge_reset():
    rng = np.random.default_rng(2)
    k = 4
    gts = [rng.integers(0, k, size=(8, 9)) for _ in range(3)]
    preds = [rng.integers(0, k, size=(8, 9)) for _ in range(3)]
    a = ConfusionMatrix(k)
    for p, g in zip(preds, gts):
        a.update(p, g)
    expected = sum(_naive_confusion(p, g, k, 255) for p, g in zip(preds, gts))
    np.testing.assert_array_equal(a.matrix, expected)

    b = ConfusionMatrix(k)
    b.update(torch.from_numpy(preds[0]), torch.from_numpy(gts[0]))
    c = ConfusionMatrix(k)
    c.update(preds[1], gts[1])
    c.update(preds[2], gts[2])
    b += c
    np.testing.assert_array_equal(b.matrix, expected)
    assert b.compute(list("wxyz"))["mIoU"] == compute_metrics(expected, list("wxyz"))["mIoU"]
    with pytest.raises(ValueError, match="merge"):
        b.merge(np.zeros((3, 3), np.int64))
    size = b.matrix.nbytes
    b.reset()
    assert b.matrix.sum() == 0 and b.matrix.nbytes == size
