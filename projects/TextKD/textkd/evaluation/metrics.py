"""Semantic segmentation metrics from a confusion matrix (framework-free: numpy and torch only).

The confusion matrix ``conf`` is K×K int64 with ``conf[g, p]`` = number of pixels whose ground
truth is class ``g`` and whose prediction is class ``p`` (rows: ground truth, columns:
prediction). Pixels labelled ``ignore_label`` are not counted. It is accumulated with one
``bincount`` over ``K·gt + pred`` per image, never with a Python loop over pixels or classes.

Two mIoU conventions are reported (DATASETS.md):

* ``mIoU``: detectron2's ``SemSegEvaluator`` — IoU averaged over the classes that occur in the
  ground truth (classes absent from the ground truth are NaN and skipped, even when predicted).
* ``mIoU_all``: the CIRKD / mmseg convention — ``IoU_k = inter_k / (eps + union_k)`` for every
  class, absent classes counting 0, averaged over all K classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["confusion_matrix", "compute_metrics", "ConfusionMatrix", "CIRKD_EPS"]

# the epsilon of CIRKD's SegmentationMetric (np.spacing(1), i.e. float64 machine epsilon)
CIRKD_EPS = 2.220446049250313e-16

ArrayLike = np.ndarray | torch.Tensor


def _check_values(values: ArrayLike, num_classes: int, what: str) -> None:
    """Raise ValueError when ``values`` (already stripped of ignored pixels) leave [0, K)."""
    if values.numel() if isinstance(values, torch.Tensor) else values.size:
        lo = int(values.min())
        hi = int(values.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} contains value {bad} outside [0, {num_classes}) "
                f"(num_classes={num_classes}); predictions must be class indices and labels "
                "must be class indices or the ignore label"
            )


def confusion_matrix(
    pred: ArrayLike, gt: ArrayLike, num_classes: int, ignore_label: int | None = 255
) -> np.ndarray:
    """Confusion matrix of one prediction / label pair:
    ``conf = bincount(K·gt + pred, minlength=K²).reshape(K, K)`` over pixels whose label is not
    ``ignore_label``.

    Args:
        pred: integer class map (any shape), numpy array or torch tensor.
        gt: integer label map of the same shape (same type family as ``pred``; a numpy ``gt``
            with a torch ``pred`` is converted to a tensor on ``pred``'s device).
        num_classes: K.
        ignore_label: label value that is not counted (None: every pixel counts).

    Returns:
        K×K int64 numpy array, rows = ground truth, columns = prediction.

    Raises:
        ValueError: shapes differ, a prediction is outside [0, K), or a non-ignored label is
            outside [0, K).
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(gt.shape)}"
        )
    k = int(num_classes)
    if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
        device = pred.device if isinstance(pred, torch.Tensor) else gt.device
        p = torch.as_tensor(pred, device=device).reshape(-1).long()
        g = torch.as_tensor(gt, device=device).reshape(-1).long()
        _check_values(p, k, "prediction")
        if ignore_label is not None:
            keep = g != int(ignore_label)
            p, g = p[keep], g[keep]
        _check_values(g, k, "label")
        counts = torch.bincount(g * k + p, minlength=k * k)
        return counts.cpu().numpy().astype(np.int64).reshape(k, k)
    p = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
    g = np.asarray(gt).reshape(-1).astype(np.int64, copy=False)
    _check_values(p, k, "prediction")
    if ignore_label is not None:
        keep = g != int(ignore_label)
        p, g = p[keep], g[keep]
    _check_values(g, k, "label")
    return np.bincount(g * k + p, minlength=k * k).astype(np.int64).reshape(k, k)


def compute_metrics(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """All scores of a K×K confusion matrix (rows ground truth, columns prediction), in percent.

    With ``tp_k = conf[k, k]``, ``gt_k = Σ_p conf[k, p]``, ``pred_k = Σ_g conf[g, k]``,
    ``union_k = gt_k + pred_k − tp_k``:

    * ``IoU-<name>`` = tp/union and ``ACC-<name>`` = tp/gt_k, NaN for classes absent from the
      ground truth (detectron2's convention);
    * ``mIoU`` = mean IoU over classes with gt_k > 0 (detectron2 ``SemSegEvaluator``);
    * ``mIoU_all`` = mean over all K classes of tp/(eps + union) (CIRKD; absent classes count 0);
    * ``fwIoU`` = Σ_k (gt_k / Σ gt) · IoU_k over classes with gt_k > 0;
    * ``mACC`` = mean over classes with gt_k > 0 of tp/gt_k; ``pACC`` = Σ tp / Σ gt.

    Scores that have no pixel to be computed on are NaN.
    """
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square K×K, got shape {conf.shape}")
    k = conf.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    class_names = list(class_names)
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}-class confusion matrix")

    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=1)
    pos_pred = conf.sum(axis=0)
    union = pos_gt + pos_pred - tp
    valid = pos_gt > 0
    total = pos_gt.sum()

    acc = np.full(k, np.nan)
    iou = np.full(k, np.nan)
    acc[valid] = tp[valid] / pos_gt[valid]
    iou[valid] = tp[valid] / union[valid]
    n_valid = int(valid.sum())
    miou = float(iou[valid].mean()) if n_valid else float("nan")
    macc = float(acc[valid].mean()) if n_valid else float("nan")
    fwiou = float(np.sum(iou[valid] * pos_gt[valid] / total)) if total > 0 else float("nan")
    pacc = float(tp.sum() / total) if total > 0 else float("nan")
    miou_all = float(np.mean(tp / (CIRKD_EPS + union))) if k else float("nan")

    res: dict[str, float] = {
        "mIoU": 100.0 * miou,
        "mIoU_all": 100.0 * miou_all,
        "fwIoU": 100.0 * fwiou,
    }
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100.0 * float(iou[i])
    res["mACC"] = 100.0 * macc
    res["pACC"] = 100.0 * pacc
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100.0 * float(acc[i])
    return res


class ConfusionMatrix:
    """A running K×K confusion matrix (rows ground truth, columns prediction).

    ``update(pred, gt)`` adds one image (or batch) with :func:`confusion_matrix`; ``merge`` /
    ``+=`` add another matrix (e.g. from another rank); ``compute`` returns
    :func:`compute_metrics`. Its memory is K² int64 whatever the number of images.
    """

    def __init__(self, num_classes: int, ignore_label: int | None = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Set every count to zero."""
        self.matrix[...] = 0

    def update(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add the confusion matrix of ``pred`` against ``gt`` (ignore pixels skipped)."""
        self.matrix += confusion_matrix(pred, gt, self.num_classes, self.ignore_label)

    def merge(self, other: ConfusionMatrix | np.ndarray) -> ConfusionMatrix:
        """Add another ConfusionMatrix or a K×K count array in place; returns self."""
        m = other.matrix if isinstance(other, ConfusionMatrix) else np.asarray(other)
        if m.shape != self.matrix.shape:
            raise ValueError(f"cannot merge a {m.shape} matrix into a {self.matrix.shape} one")
        self.matrix += m.astype(np.int64)
        return self

    add = merge

    def __iadd__(self, other: ConfusionMatrix | np.ndarray) -> ConfusionMatrix:
        return self.merge(other)

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        """The metrics of :func:`compute_metrics` on the accumulated counts."""
        return compute_metrics(self.matrix, class_names)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_label={self.ignore_label}, "
            f"pixels={int(self.matrix.sum())})"
        )
