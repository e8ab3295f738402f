"""Dataset mapper of TextKD (detectron2 layer): record -> model input.

Reads the image in ``INPUT.FORMAT`` and the label map keeping its stored values (palette indices
stay indices), checks the label ids against ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``, applies the
reference augmentation of :mod:`textkd.data.transforms` in training, and returns
``{"image": uint8 C×H×W tensor, "sem_seg": int64 H×W tensor (ignore 255), "height", "width",
"file_name"}``. In test mode there is no augmentation (optionally the long side is resized to
``INPUT.TEST_SIZE``) and ``sem_seg`` is still loaded when the record has a label file: the LAD
teacher takes the label as input at evaluation and evaluators may use it. ``height`` / ``width``
are always the original image size, the size predictions are evaluated at.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils

from ..data import transforms as T
from ..data.datasets.common import IGNORE_LABEL, read_label

logger = logging.getLogger(__name__)

__all__ = ["TextKDSemSegDatasetMapper", "read_label"]


def _read_image(path: str, image_format: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        image = utils.read_image(path, format=image_format)
    except Exception as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    if image.ndim == 2:
        image = image[:, :, None]
    return image


class TextKDSemSegDatasetMapper:
    """Map a semantic-segmentation record to the model input (see the module docstring).

    Args:
        is_train: training (augment) or test mode.
        image_format: ``INPUT.FORMAT`` (e.g. "RGB", "BGR").
        num_classes: K; label values >= K other than 255 are an error.
        ignore_value: value of ignored pixels in the output (files use 255).
        crop_size: (h, w) training crop, or None for no crop.
        scale_range: (min, max) random scale factor range, or None for no random scaling.
        scale_set: discrete scale factors drawn with equal probability, applied as CIRKD does
            (see :func:`textkd.data.transforms.rescale_by_factor`); when non-empty it replaces
            ``scale_range``.
        base_size: training resize of the long side before scaling (0 = keep).
        flip: random horizontal flip in training.
        pixel_mean: per-channel image padding value (``MODEL.PIXEL_MEAN``, same channel order as
            ``image_format``) so padding normalises to 0.
        test_size: long side at test time (0 = original size).
        seed: seed of a mapper-owned generator (reproducible sequences, e.g. in tests); None
            draws a fresh generator per call from numpy's global RNG, which detectron2 seeds
            differently in every data-loader worker. Both are only used when a call passes no
            ``rng``; the training loader passes the sample's own (see :meth:`__call__`).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        image_format: str,
        num_classes: int,
        ignore_value: int = IGNORE_LABEL,
        crop_size: Sequence[int] | None = None,
        scale_range: Sequence[float] | None = (0.5, 2.0),
        scale_set: Sequence[float] | None = None,
        base_size: int = 0,
        flip: bool = True,
        pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        test_size: int = 0,
        seed: int | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if crop_size is not None and (len(crop_size) != 2 or min(crop_size) < 1):
            raise ValueError(f"crop_size must be (height, width) > 0, got {crop_size}")
        self.is_train = is_train
        self.image_format = image_format
        self.num_classes = int(num_classes)
        self.ignore_value = int(ignore_value)
        self.crop_size = tuple(int(v) for v in crop_size) if crop_size is not None else None
        self.scale_range = tuple(float(v) for v in scale_range) if scale_range else None
        self.scale_set = T.check_scale_set(scale_set) if scale_set else None
        self.base_size = int(base_size)
        self.flip = bool(flip)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.test_size = int(test_size)
        self._rng = np.random.default_rng(seed) if seed is not None else None
        mode = "training" if is_train else "inference"
        logger.info(
            "TextKDSemSegDatasetMapper (%s): crop %s, scale %s, base size %d, flip %s, "
            "test size %d",
            mode,
            self.crop_size,
            f"from the set {list(self.scale_set)}" if self.scale_set else self.scale_range,
            self.base_size,
            self.flip,
            self.test_size,
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        """Constructor arguments from a config: INPUT.FORMAT, MODEL.SEM_SEG_HEAD.NUM_CLASSES /
        IGNORE_VALUE, INPUT.CROP (absolute only), INPUT.SCALE_RANGE / SCALE_SET / BASE_SIZE /
        FLIP / TEST_SIZE, MODEL.PIXEL_MEAN."""
        crop_size = None
        if cfg.INPUT.CROP.ENABLED:
            if cfg.INPUT.CROP.TYPE != "absolute":
                raise ValueError(
                    f"INPUT.CROP.TYPE '{cfg.INPUT.CROP.TYPE}' is not supported by "
                    f"TextKDSemSegDatasetMapper; use 'absolute' with INPUT.CROP.SIZE (h, w)"
                )
            crop_size = tuple(cfg.INPUT.CROP.SIZE)
        scale_range = tuple(cfg.INPUT.SCALE_RANGE) if cfg.INPUT.SCALE_RANGE else None
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "crop_size": crop_size,
            "scale_range": scale_range,
            "scale_set": tuple(cfg.INPUT.SCALE_SET) if cfg.INPUT.SCALE_SET else None,
            "base_size": cfg.INPUT.BASE_SIZE,
            "flip": cfg.INPUT.FLIP,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "test_size": cfg.INPUT.TEST_SIZE,
        }

    def _generator(self) -> np.random.Generator:
        if self._rng is not None:
            return self._rng
        return np.random.default_rng(np.random.randint(0, 2**31 - 1))

    def _check_label(self, label: np.ndarray, path: str) -> None:
        bad = (label >= self.num_classes) & (label != IGNORE_LABEL)
        if bad.any():
            values = sorted(int(v) for v in np.unique(label[bad]))
            raise ValueError(
                f"label file {path} has value(s) {values[:10]} >= NUM_CLASSES={self.num_classes} "
                f"(only 0..{self.num_classes - 1} and 255 = ignore are allowed); is "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES right and the dataset prepared?"
            )

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict:
        """Load, check and (in training) augment one record; see the class docstring. ``rng``
        is the generator of this sample's augmentation draws (the training loader passes one per
        sample position, see :mod:`textkd.data.sampling`); None uses the mapper's own."""
        record = copy.copy(dataset_dict)
        file_name = record["file_name"]
        image = _read_image(file_name, self.image_format)
        orig_h, orig_w = image.shape[:2]
        if ("height" in record and record["height"] != orig_h) or (
            "width" in record and record["width"] != orig_w
        ):
            raise ValueError(
                f"image {file_name} is {orig_h}×{orig_w} but its record says "
                f"{record.get('height')}×{record.get('width')}"
            )

        label = None
        label_path = record.get("sem_seg_file_name")
        if label_path is not None:
            if self.is_train or os.path.isfile(label_path):
                label = read_label(label_path)
            if label is not None:
                if label.shape != (orig_h, orig_w):
                    raise ValueError(
                        f"label {label_path} is {label.shape[0]}×{label.shape[1]} but image "
                        f"{file_name} is {orig_h}×{orig_w}"
                    )
                self._check_label(label, label_path)
        elif self.is_train:
            raise KeyError(f"training record of {file_name} has no 'sem_seg_file_name'")

        if self.is_train:
            pad = self.pixel_mean
            if len(pad) != image.shape[2]:
                raise ValueError(
                    f"MODEL.PIXEL_MEAN has {len(pad)} values for {image.shape[2]}-channel "
                    f"images ({file_name}, INPUT.FORMAT={self.image_format})"
                )
            image, label = T.train_augment(
                image,
                label,
                rng if rng is not None else self._generator(),
                crop_size=self.crop_size,
                scale_range=self.scale_range,
                scale_set=self.scale_set,
                base_size=self.base_size,
                flip=self.flip,
                pad_value=pad,
                ignore_value=IGNORE_LABEL,
            )
        elif self.test_size > 0:
            image, label = T.resize_long_side(image, label, self.test_size)

        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if label is not None:
            sem_seg = label.astype(np.int64)
            if self.ignore_value != IGNORE_LABEL:
                sem_seg[label == IGNORE_LABEL] = self.ignore_value
            record["sem_seg"] = torch.as_tensor(sem_seg)
        record["height"], record["width"] = orig_h, orig_w
        record["file_name"] = file_name
        return record
