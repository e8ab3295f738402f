"""Framework-free dataset loaders: each returns detectron2-style records
``{"file_name", "sem_seg_file_name"[, "height", "width"]}`` for one split (see DATASETS.md and
datasets/README.md). No detectron2 import here. Each module declares its splits once with
``register_dataset(DatasetSpec(...))`` (:mod:`.catalog`); ``textkd.d2.register`` registers every
spec of :func:`dataset_specs` in detectron2, so a new dataset is one new module here."""

from .ade20k import ADE20K_SPLITS, load_ade20k
from .camvid import CAMVID_SPLITS, load_camvid
from .catalog import DATASET_SPECS, DatasetSpec, dataset_specs, register_dataset
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
    "DATASET_SPECS",
    "DatasetSpec",
    "DatasetNotPreparedError",
    "IGNORE_LABEL",
    "VOC_SPLITS",
    "dataset_specs",
    "datasets_root",
    "load_ade20k",
    "load_camvid",
    "load_cityscapes",
    "load_coco_stuff_10k",
    "load_coco_stuff_164k",
    "load_voc",
    "register_dataset",
]
