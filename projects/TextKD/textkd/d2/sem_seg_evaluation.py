"""Confusion-matrix semantic segmentation evaluator (detectron2 layer).

Same numbers as detectron2's ``SemSegEvaluator`` (its mIoU / fwIoU / mACC / pACC and per-class
IoU / ACC, same result layout) plus the CIRKD convention ``mIoU_all``, for every prediction a
model returns (``sem_seg`` and e.g. a LAD teacher's ``sem_seg_zero_label``). Unlike detectron2's
evaluator it keeps no per-image encoding of the predictions: its whole state is one K×K count
matrix per prediction key, summed over ranks in :meth:`evaluate`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..evaluation.metrics import ConfusionMatrix, compute_metrics

logger = logging.getLogger(__name__)

__all__ = ["TextKDSemSegEvaluator", "load_sem_seg"]


def load_sem_seg(path: str) -> np.ndarray:
    """Read a single-channel label PNG as an int64 H×W array (values as stored)."""
    if not PathManager.exists(path):
        raise FileNotFoundError(f"label file not found: {path}")
    with PathManager.open(path, "rb") as f:
        arr = np.asarray(Image.open(f))
    if arr.ndim != 2:
        raise ValueError(f"label file {path} has shape {arr.shape}; expected a single channel")
    return arr.astype(np.int64)


def _json_safe(value):
    """NaN/inf floats become None so the json file is standard JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TextKDSemSegEvaluator(DatasetEvaluator):
    """Accumulate a K×K confusion matrix per prediction key and report
    :func:`textkd.evaluation.metrics.compute_metrics` for each (one result task per key).

    Prediction: ``outputs[i][key].argmax(dim=0)`` for every key starting with ``"sem_seg"``
    (K×H×W scores at the original image size). Ground truth: ``inputs[i]["sem_seg"]`` when its
    size equals the prediction's (the mapper did not resize it), otherwise the label file
    (``inputs[i]["sem_seg_file_name"]`` or the dataset record of ``inputs[i]["file_name"]``),
    as detectron2 does.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        num_classes: int | None = None,
        ignore_label: int | None = None,
        sem_seg_loading_fn: Callable[[str], np.ndarray] = load_sem_seg,
    ) -> None:
        """
        Args:
            dataset_name: registered dataset; its metadata gives ``stuff_classes`` and
                ``ignore_label`` (default 255).
            distributed: sum the matrices of all ranks in :meth:`evaluate` (only rank 0 returns
                results); otherwise evaluate this process's images only.
            output_dir: when set, ``sem_seg_evaluation.json`` (the results) and
                ``sem_seg_confusion.npz`` (the matrices) are written there.
            num_classes: checked against the metadata; required when the metadata has no
                ``stuff_classes`` (classes are then named "0", "1", ...).
            ignore_label: overrides the metadata's ``ignore_label``.
            sem_seg_loading_fn: reads a label file into an integer H×W array.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._load = sem_seg_loading_fn
        meta = MetadataCatalog.get(dataset_name)
        names = meta.get("stuff_classes", None)
        if names is None:
            if num_classes is None:
                raise KeyError(
                    f"dataset '{dataset_name}' has no 'stuff_classes' metadata; "
                    "pass num_classes to TextKDSemSegEvaluator"
                )
            names = [str(i) for i in range(num_classes)]
        self._class_names = list(names)
        self._num_classes = len(self._class_names)
        if num_classes is not None and num_classes != self._num_classes:
            raise ValueError(
                f"num_classes={num_classes} but dataset '{dataset_name}' has "
                f"{self._num_classes} stuff_classes"
            )
        self._ignore_label = int(
            ignore_label if ignore_label is not None else meta.get("ignore_label", 255)
        )
        self._file_to_gt: dict[str, str] | None = None  # built on first need
        self._matrices: OrderedDict[str, ConfusionMatrix] = OrderedDict()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all counts (start of an evaluation round)."""
        self._matrices = OrderedDict()

    @property
    def matrices(self) -> dict[str, np.ndarray]:
        """The accumulated K×K counts of this process, per prediction key."""
        return {k: m.matrix for k, m in self._matrices.items()}

    # ------------------------------------------------------------------ ground truth
    def _gt_file(self, inp: dict) -> str:
        path = inp.get("sem_seg_file_name")
        if path:
            return path
        if "file_name" not in inp:
            raise KeyError("evaluator input has neither 'sem_seg_file_name' nor 'file_name'")
        if self._file_to_gt is None:
            self._file_to_gt = {
                r["file_name"]: r["sem_seg_file_name"]
                for r in DatasetCatalog.get(self._dataset_name)
                if "sem_seg_file_name" in r
            }
        try:
            return self._file_to_gt[inp["file_name"]]
        except KeyError:
            raise KeyError(
                f"image {inp['file_name']} has no sem_seg_file_name in dataset "
                f"'{self._dataset_name}'"
            ) from None

    def _ground_truth(self, inp: dict, shape: Sequence[int]) -> np.ndarray | torch.Tensor:
        sem = inp.get("sem_seg")
        if isinstance(sem, torch.Tensor) and tuple(sem.shape[-2:]) == tuple(shape):
            return sem.reshape(tuple(shape))
        path = self._gt_file(inp)
        gt = np.asarray(self._load(path))
        if gt.shape != tuple(shape):
            raise ValueError(
                f"prediction size {tuple(shape)} differs from label {path} of size {gt.shape}; "
                "the model must return predictions at the original image size"
            )
        return gt

    # ------------------------------------------------------------------ evaluator API
    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Add every image's confusion matrix, one per ``sem_seg*`` prediction key."""
        for inp, out in zip(inputs, outputs):
            if isinstance(out, torch.Tensor):
                out = {"sem_seg": out}
            keys = [
                k for k, v in out.items() if k.startswith("sem_seg") and isinstance(v, torch.Tensor)
            ]
            if not keys:
                raise KeyError(
                    f"model output for {inp.get('file_name', '?')} has no 'sem_seg' prediction; "
                    f"keys: {list(out)}"
                )
            gt = None
            for key in keys:
                scores = out[key]
                if scores.ndim != 3 or scores.shape[0] != self._num_classes:
                    raise ValueError(
                        f"output '{key}' must be K×H×W with K={self._num_classes}, "
                        f"got shape {tuple(scores.shape)}"
                    )
                pred = scores.argmax(dim=0)
                if gt is None:
                    gt = self._ground_truth(inp, pred.shape)
                if key not in self._matrices:
                    self._matrices[key] = ConfusionMatrix(self._num_classes, self._ignore_label)
                self._matrices[key].update(pred, gt)

    def evaluate(self) -> OrderedDict | None:
        """Sum the matrices over ranks and return ``{key: compute_metrics(matrix)}`` (rank 0;
        other ranks return None)."""
        local = {k: m.matrix for k, m in self._matrices.items()}
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.all_gather(local)
            if not comm.is_main_process():
                return None
        else:
            gathered = [local]
        total: OrderedDict[str, np.ndarray] = OrderedDict()
        for part in gathered:
            for key, mat in part.items():
                total[key] = total[key] + mat if key in total else mat.copy()
        if not total:
            logger.warning(f"{self._dataset_name}: no predictions were processed")
            return OrderedDict()
        if "sem_seg" in total:
            total.move_to_end("sem_seg", last=False)

        results = OrderedDict(
            (key, compute_metrics(mat, self._class_names)) for key, mat in total.items()
        )
        for key, res in results.items():
            logger.info(
                f"{self._dataset_name} [{key}]: mIoU {res['mIoU']:.2f} (all classes "
                f"{res['mIoU_all']:.2f}), fwIoU {res['fwIoU']:.2f}, mACC {res['mACC']:.2f}, "
                f"pACC {res['pACC']:.2f}"
            )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(
                os.path.join(self._output_dir, "sem_seg_evaluation.json"), "w"
            ) as f:
                json.dump(_json_safe(dict(results)), f, indent=1)
            with PathManager.open(
                os.path.join(self._output_dir, "sem_seg_confusion.npz"), "wb"
            ) as f:
                np.savez_compressed(f, **total)
        return results
