"""Register TextKD's datasets in detectron2's DatasetCatalog / MetadataCatalog (detectron2 layer).

Names follow ``<dataset>_<split>_sem_seg`` and do not clash with detectron2's builtins (whose
``cityscapes_fine_sem_seg_*`` and ``ade20k_sem_seg_*`` expect other label files):

====================================  =======  =====================================
name                                  classes  labels read
====================================  =======  =====================================
cityscapes_{train,val,test}_sem_seg   19       gtFine/*_gtFine_labelTrainIds.png
voc_{train_aug,val,train}_sem_seg     21       SegmentationClassAug / SegmentationClass
camvid_{train,val,test,trainval}_...  11       {split}annot_detectron2
ade20k_{train,val}_sem_seg            150      annotations_detectron2
coco_stuff_164k_{train,val}_sem_seg   171      stuffthingmaps_detectron2
coco_stuff_164k_182_{train,val}_...   182      stuffthingmaps (raw, CIRKD protocol)
coco_stuff_10k_{train,test}_sem_seg   171      annotations_detectron2
textkd_synthetic_{train,val}_sem_seg  synth.   generated on first use
====================================  =======  =====================================

Every split's metadata has ``stuff_classes``, ``stuff_colors``, ``ignore_label=255``,
``evaluator_type`` ("sem_seg"; "cityscapes_sem_seg" for Cityscapes, which also sets ``gt_dir``
for the official cityscapesscripts evaluation), ``image_root`` and ``sem_seg_root``.
``register_all`` runs when this module is imported; it only builds paths (no disk access), and
the loaders run when ``DatasetCatalog.get(name)`` is called. Calling it again (e.g. with another
root) replaces the earlier registrations.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import classes as C
from .datasets.ade20k import ADE20K_SPLITS, ade20k_dir, load_ade20k
from .datasets.ade20k import PREPARED_DIR as ADE_PREPARED
from .datasets.camvid import CAMVID_SPLITS, camvid_dir, load_camvid
from .datasets.camvid import PREPARED_SUFFIX as CAMVID_PREPARED
from .datasets.cityscapes import CITYSCAPES_SPLITS, cityscapes_dirs, load_cityscapes
from .datasets.coco_stuff import (
    COCO_STUFF_10K_SPLITS,
    COCO_STUFF_164K_SPLITS,
    PREPARED_10K_DIR,
    PREPARED_164K_DIR,
    RAW_164K_DIR,
    coco_dir,
    cocostuff10k_dir,
    load_coco_stuff_10k,
    load_coco_stuff_164k,
)
from .datasets.common import IGNORE_LABEL, datasets_root
from .datasets.voc import AUG_LABEL_DIR, VOC_SPLITS, load_voc, voc_dir

logger = logging.getLogger(__name__)

__all__ = ["register_all", "register_sem_seg", "registered_names", "SYNTHETIC_SPLITS"]

SYNTHETIC_SPLITS = ("train", "val")
_REGISTERED: list[str] = []


def _colors(colors: list) -> list[list[int]]:
    return [list(c) for c in colors]


def register_sem_seg(name: str, loader: Callable[[], list[dict]], **metadata) -> None:
    """Register ``loader`` as dataset ``name`` with ``metadata`` (ignore_label 255 added),
    replacing an earlier registration of the same name."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    metadata.setdefault("ignore_label", IGNORE_LABEL)
    MetadataCatalog.get(name).set(**metadata)
    if name not in _REGISTERED:
        _REGISTERED.append(name)


def registered_names() -> list[str]:
    """The dataset names TextKD registered, in registration order."""
    return list(_REGISTERED)


def _register_cityscapes(root: str) -> None:
    for split in CITYSCAPES_SPLITS:
        image_dir, gt_dir = cityscapes_dirs(root, split)
        register_sem_seg(
            f"cityscapes_{split}_sem_seg",
            lambda r=root, s=split: load_cityscapes(r, s),
            stuff_classes=list(C.CITYSCAPES_CLASSES),
            stuff_colors=_colors(C.CITYSCAPES_COLORS),
            evaluator_type="cityscapes_sem_seg",
            image_root=image_dir,
            sem_seg_root=gt_dir,
            gt_dir=gt_dir,
        )


def _register_voc(root: str) -> None:
    base = voc_dir(root)
    for split in VOC_SPLITS:
        label_dir = AUG_LABEL_DIR if split == "train_aug" else "SegmentationClass"
        register_sem_seg(
            f"voc_{split}_sem_seg",
            lambda r=root, s=split: load_voc(r, s),
            stuff_classes=list(C.VOC_CLASSES),
            stuff_colors=_colors(C.VOC_COLORS),
            evaluator_type="sem_seg",
            image_root=os.path.join(base, "JPEGImages"),
            sem_seg_root=os.path.join(base, label_dir),
        )


def _register_camvid(root: str) -> None:
    base = camvid_dir(root)
    for split in CAMVID_SPLITS:
        sub = "train" if split == "trainval" else split  # trainval spans two folders
        register_sem_seg(
            f"camvid_{split}_sem_seg",
            lambda r=root, s=split: load_camvid(r, s),
            stuff_classes=list(C.CAMVID_CLASSES),
            stuff_colors=_colors(C.CAMVID_COLORS),
            evaluator_type="sem_seg",
            image_root=os.path.join(base, sub) if split != "trainval" else base,
            sem_seg_root=os.path.join(base, sub + CAMVID_PREPARED) if split != "trainval" else base,
        )


def _register_ade20k(root: str) -> None:
    base = ade20k_dir(root)
    for split, (folder, _) in ADE20K_SPLITS.items():
        register_sem_seg(
            f"ade20k_{split}_sem_seg",
            lambda r=root, s=split: load_ade20k(r, s),
            stuff_classes=list(C.ADE20K_CLASSES),
            stuff_colors=_colors(C.ADE20K_COLORS),
            evaluator_type="sem_seg",
            image_root=os.path.join(base, "images", folder),
            sem_seg_root=os.path.join(base, ADE_PREPARED, folder),
        )


def _register_coco_stuff(root: str) -> None:
    base = coco_dir(root)
    for split, (folder, _) in COCO_STUFF_164K_SPLITS.items():
        register_sem_seg(
            f"coco_stuff_164k_{split}_sem_seg",
            lambda r=root, s=split: load_coco_stuff_164k(r, s, num_classes=171),
            stuff_classes=list(C.COCO_STUFF_171_CLASSES),
            stuff_colors=_colors(C.COCO_STUFF_171_COLORS),
            evaluator_type="sem_seg",
            image_root=os.path.join(base, folder),
            sem_seg_root=os.path.join(base, PREPARED_164K_DIR, folder),
        )
        register_sem_seg(
            f"coco_stuff_164k_182_{split}_sem_seg",
            lambda r=root, s=split: load_coco_stuff_164k(r, s, num_classes=182),
            stuff_classes=list(C.COCO_STUFF_182_CLASSES),
            stuff_colors=_colors(C.COCO_STUFF_182_COLORS),
            evaluator_type="sem_seg",
            image_root=os.path.join(base, folder),
            sem_seg_root=os.path.join(base, RAW_164K_DIR, folder),
        )
    base10k = cocostuff10k_dir(root)
    for split in COCO_STUFF_10K_SPLITS:
        register_sem_seg(
            f"coco_stuff_10k_{split}_sem_seg",
            lambda r=root, s=split: load_coco_stuff_10k(r, s),
            stuff_classes=list(C.COCO_STUFF_171_CLASSES),
            stuff_colors=_colors(C.COCO_STUFF_171_COLORS),
            evaluator_type="sem_seg",
            image_root=os.path.join(base10k, "images"),
            sem_seg_root=os.path.join(base10k, PREPARED_10K_DIR),
        )


def _load_synthetic(root: str, split: str) -> list[dict]:
    from .synthetic import ensure_synthetic, load_synthetic

    ensure_synthetic(root, split)  # generated on first use (DatasetCatalog.get), never at import
    return load_synthetic(root, split)


def _register_synthetic(root: str) -> None:
    try:
        from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, SYNTHETIC_DIRNAME
    except ImportError as e:
        logger.warning("synthetic dataset not registered: %s", e)
        return
    base = os.path.join(os.path.abspath(os.path.expanduser(root)), SYNTHETIC_DIRNAME)
    for split in SYNTHETIC_SPLITS:
        register_sem_seg(
            f"textkd_synthetic_{split}_sem_seg",
            lambda r=root, s=split: _load_synthetic(r, s),
            stuff_classes=list(SYNTHETIC_CLASSES),
            stuff_colors=_colors(SYNTHETIC_COLORS),
            evaluator_type="sem_seg",
            image_root=os.path.join(base, "images", split),
            sem_seg_root=os.path.join(base, "labels", split),
        )


def register_all(root: str | None = None) -> list[str]:
    """Register every split of every dataset under ``root`` (default ``$DETECTRON2_DATASETS`` or
    ``./datasets``); returns the registered names. Touches no files."""
    root = datasets_root(root)
    before = len(_REGISTERED)
    _register_cityscapes(root)
    _register_voc(root)
    _register_camvid(root)
    _register_ade20k(root)
    _register_coco_stuff(root)
    _register_synthetic(root)
    logger.debug("registered %d TextKD datasets under %s", len(_REGISTERED) - before, root)
    return registered_names()


register_all()
