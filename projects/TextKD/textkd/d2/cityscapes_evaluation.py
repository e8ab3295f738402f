"""Official Cityscapes pixel-level evaluation (detectron2 layer).

Predictions (19 train ids) are converted to Cityscapes label ids with
``cityscapesscripts.helpers.labels`` and written as PNGs into a per-rank temporary directory;
rank 0 gathers the (prediction, ground truth) file lists and runs
``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling.evaluateImgLists`` against the
``*_gtFine_labelIds.png`` files. This replaces detectron2's ``CityscapesSemSegEvaluator``, which
imports an internal module. File lists are exchanged, not images: all ranks must share a file
system (single-machine training, like detectron2's evaluator).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import types
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["TextKDCityscapesSemSegEvaluator", "train_id_to_label_id"]

_LEFT_SUFFIX = "_leftImg8bit"
_GT_SUFFIXES = ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png")


def _train_id_lut() -> np.ndarray:
    """uint8 lookup table: train id (0-18) → Cityscapes label id."""
    from cityscapesscripts.helpers.labels import labels

    lut = {lab.trainId: lab.id for lab in labels if 0 <= lab.trainId < 255 and not lab.ignoreInEval}
    num = max(lut) + 1
    if sorted(lut) != list(range(num)):
        raise RuntimeError(f"unexpected Cityscapes train ids {sorted(lut)}")
    return np.array([lut[i] for i in range(num)], dtype=np.uint8)


def train_id_to_label_id(pred: np.ndarray) -> np.ndarray:
    """Map a map of Cityscapes train ids (0-18) to label ids (``labels.py``) with one gather."""
    lut = _train_id_lut()
    pred = np.asarray(pred)
    if pred.size and (pred.min() < 0 or pred.max() >= len(lut)):
        raise ValueError(f"train ids must be in [0, {len(lut)}), got {pred.min()}..{pred.max()}")
    return lut[pred]


class _NumpyCompat(types.ModuleType):
    """numpy, plus ``in1d`` (removed in NumPy 2.4, still called by cityscapesscripts)."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


class TextKDCityscapesSemSegEvaluator(DatasetEvaluator):
    """Cityscapes' official class / category IoU and instance-weighted iIoU, reported as the
    result task ``"cityscapes_sem_seg"``: ``{"IoU", "iIoU", "IoU_sup", "iIoU_sup",
    "IoU-<class>"...}`` in percent (``IoU`` = mean over classes of tp/(tp+fp+fn), classes with
    no ground-truth or predicted pixel skipped, as cityscapesscripts computes it)."""

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        prediction_key: str = "sem_seg",
    ) -> None:
        """
        Args:
            dataset_name: a registered Cityscapes split. The ground truth is
                ``<metadata gt_dir>/<city>/<frame>_gtFine_labelIds.png`` when the metadata has
                ``gt_dir``, otherwise the ``_gtFine_labelIds.png`` next to the record's
                ``sem_seg_file_name``. iIoU needs the ``_gtFine_instanceIds.png`` files too
                (NaN when they are missing).
            distributed: gather the file lists of all ranks; rank 0 evaluates.
            output_dir: when set, cityscapesscripts' json result file is written there.
            prediction_key: the output key holding the 19×H×W scores.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._key = prediction_key
        meta = MetadataCatalog.get(dataset_name)
        self._gt_dir = meta.get("gt_dir", None)
        self._lut = _train_id_lut()
        self._file_to_gt: dict[str, str] | None = None
        self._tmp: str | None = None
        self._pairs: list[tuple[str, str]] = []

    def reset(self) -> None:
        """Start a round: a fresh temporary prediction directory and an empty file list."""
        self._cleanup()
        self._tmp = tempfile.mkdtemp(prefix="textkd_cityscapes_eval_")
        self._pairs = []

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __del__(self) -> None:
        try:
            self._cleanup()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ------------------------------------------------------------------ ground truth
    def _gt_path(self, inp: dict) -> str:
        file_name = inp["file_name"]
        stem = os.path.splitext(os.path.basename(file_name))[0]
        if stem.endswith(_LEFT_SUFFIX):
            stem = stem[: -len(_LEFT_SUFFIX)]
        if self._gt_dir:
            city = os.path.basename(os.path.dirname(file_name))
            return os.path.join(self._gt_dir, city, stem + "_gtFine_labelIds.png")
        sem = inp.get("sem_seg_file_name")
        if not sem:
            if self._file_to_gt is None:
                self._file_to_gt = {
                    r["file_name"]: r.get("sem_seg_file_name", "")
                    for r in DatasetCatalog.get(self._dataset_name)
                }
            sem = self._file_to_gt.get(file_name, "")
        for suffix in _GT_SUFFIXES:
            if sem.endswith(suffix):
                return sem[: -len(suffix)] + "_gtFine_labelIds.png"
        raise KeyError(
            f"cannot locate the *_gtFine_labelIds.png ground truth of {file_name} in dataset "
            f"'{self._dataset_name}': set metadata gt_dir or use *_gtFine_labelTrainIds.png "
            f"sem_seg_file_name records (got '{sem}')"
        )

    # ------------------------------------------------------------------ evaluator API
    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Write every prediction as a label-id PNG ``<frame>_pred.png`` and remember its
        ground-truth file."""
        if self._tmp is None:
            self.reset()
        for inp, out in zip(inputs, outputs):
            scores = out[self._key] if isinstance(out, dict) else out
            if not isinstance(scores, torch.Tensor) or scores.ndim != 3:
                raise ValueError(f"output '{self._key}' must be a K×H×W tensor")
            if scores.shape[0] != len(self._lut):
                raise ValueError(
                    f"Cityscapes evaluation needs {len(self._lut)} classes, output "
                    f"'{self._key}' has {scores.shape[0]}"
                )
            pred = scores.argmax(dim=0).to(torch.uint8).cpu().numpy()
            gt_path = self._gt_path(inp)
            stem = os.path.basename(gt_path)[: -len("_gtFine_labelIds.png")]
            pred_path = os.path.join(self._tmp, stem + "_pred.png")
            Image.fromarray(self._lut[pred]).save(pred_path)
            self._pairs.append((pred_path, gt_path))

    def evaluate(self) -> OrderedDict | None:
        """Run cityscapesscripts on rank 0 over the predictions of all ranks."""
        pairs = list(self._pairs)
        distributed = self._distributed and comm.get_world_size() > 1
        if distributed:
            comm.synchronize()
            pairs = [p for part in comm.all_gather(pairs) for p in part]
        result, error = None, None
        if comm.is_main_process() or not distributed:
            try:
                result = self._run(pairs)
            except Exception as e:  # noqa: BLE001 - re-raised after the barrier
                error = e
        if distributed:
            comm.synchronize()  # other ranks keep their PNGs until rank 0 has read them
        self._cleanup()
        if error is not None:
            raise error
        return result

    def _run(self, pairs: list[tuple[str, str]]) -> OrderedDict:
        if not pairs:
            logger.warning(f"{self._dataset_name}: no predictions were processed")
            return OrderedDict()
        gts = [g for _, g in pairs]
        if len(set(gts)) != len(gts):
            raise ValueError(f"{self._dataset_name}: some images were evaluated twice")
        missing = [g for g in gts if not os.path.isfile(g)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} Cityscapes ground-truth files are missing, e.g. {missing[0]}"
            )
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval

        args = copy.copy(cs_eval.args)
        args.quiet = True
        args.colorized = False
        args.bold = ""
        args.nocol = ""
        args.evalPixelAccuracy = False
        args.JSONOutput = bool(self._output_dir)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            args.exportFile = os.path.join(
                self._output_dir, "resultPixelLevelSemanticLabeling.json"
            )
        inst = [g.replace("_labelIds.png", "_instanceIds.png") for g in gts]
        args.evalInstLevelScore = all(os.path.isfile(p) for p in inst)
        if not args.evalInstLevelScore:
            logger.warning("no *_gtFine_instanceIds.png ground truth: iIoU is not computed")

        logger.info(f"Cityscapes evaluation of {len(pairs)} images ({self._dataset_name})")
        saved_np = cs_eval.np
        if not hasattr(np, "in1d"):
            cs_eval.np = _NumpyCompat()
        try:
            res = cs_eval.evaluateImgLists([p for p, _ in pairs], gts, args)
        except SystemExit as e:  # cityscapesscripts' printError() exits the process
            raise RuntimeError(
                "cityscapesscripts evaluation failed (see its 'ERROR:' line above)"
            ) from e
        finally:
            cs_eval.np = saved_np

        nan = float("nan")
        inst_on = args.evalInstLevelScore
        out = {
            "IoU": 100.0 * res["averageScoreClasses"],
            "iIoU": 100.0 * res["averageScoreInstClasses"] if inst_on else nan,
            "IoU_sup": 100.0 * res["averageScoreCategories"],
            "iIoU_sup": 100.0 * res["averageScoreInstCategories"] if inst_on else nan,
        }
        from cityscapesscripts.helpers.labels import labels

        for lab in sorted(labels, key=lambda lab: lab.trainId):
            if 0 <= lab.trainId < len(self._lut) and not lab.ignoreInEval:
                out[f"IoU-{lab.name}"] = 100.0 * res["classScores"][lab.name]
        logger.info(
            f"Cityscapes {self._dataset_name}: IoU {out['IoU']:.2f}, iIoU {out['iIoU']:.2f}, "
            f"IoU_sup {out['IoU_sup']:.2f}, iIoU_sup {out['iIoU_sup']:.2f}"
        )
        return OrderedDict({"cityscapes_sem_seg": out})
