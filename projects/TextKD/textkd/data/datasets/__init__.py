"""Framework-free dataset loaders: each returns detectron2-style records
``{"file_name", "sem_seg_file_name"[, "height", "width"]}`` for one split (see DATASETS.md and
datasets/README.md). No detectron2 import here; registration lives in ``textkd.data.register``."""

from .ade20k import ADE20K_SPLITS, load_ade20k
from .camvid import CAMVID_SPLITS, load_camvid
from .cityscapes import CITYSCAPES_SPLITS, load_cityscapes
from .classes import CLASSES, COLORS
from .coco_stuff import (
    COCO_STUFF_10K_SPLITS,
    COCO_STUFF_164K_SPLITS,
    load_coco_stuff_10k,
    load_coco_stuff_164k,
)
from .common import IGNORE_LABEL, DatasetNotPreparedError, datasets_root
from .voc import VOC_SPLITS, load_voc

__all__ = [
    "ADE20K_SPLITS",
    "CAMVID_SPLITS",
    "CITYSCAPES_SPLITS",
    "CLASSES",
    "COCO_STUFF_10K_SPLITS",
    "COCO_STUFF_164K_SPLITS",
    "COLORS",
    "DatasetNotPreparedError",
    "IGNORE_LABEL",
    "VOC_SPLITS",
    "datasets_root",
    "load_ade20k",
    "load_camvid",
    "load_cityscapes",
    "load_coco_stuff_10k",
    "load_coco_stuff_164k",
    "load_voc",
]
