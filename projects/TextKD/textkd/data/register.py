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

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence

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


def _register_splits(
    prefix: str,
    splits: Iterable[str],
    load: Callable[..., list[dict]],
    root: str,
    classes: Sequence[str],
    colors: Sequence,
    roots: Callable[[str], tuple[str, str]],
    evaluator_type: str = "sem_seg",
) -> None:
    """Register ``{prefix}_{split}_sem_seg`` for every split: records ``load(root, split)`` and
    metadata ``stuff_classes``, ``stuff_colors``, ``evaluator_type`` and ``image_root,
    sem_seg_root = roots(split)`` (plus ``gt_dir = sem_seg_root`` for the Cityscapes evaluator)."""
    for split in splits:
        image_root, sem_seg_root = roots(split)
        extra = {"gt_dir": sem_seg_root} if evaluator_type == "cityscapes_sem_seg" else {}
        register_sem_seg(
            f"{prefix}_{split}_sem_seg",
            functools.partial(load, root, split),
            stuff_classes=list(classes),
            stuff_colors=_colors(colors),
            evaluator_type=evaluator_type,
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            **extra,
        )


def _register_cityscapes(root: str) -> None:
    _register_splits(
        "cityscapes",
        CITYSCAPES_SPLITS,
        load_cityscapes,
        root,
        C.CITYSCAPES_CLASSES,
        C.CITYSCAPES_COLORS,
        functools.partial(cityscapes_dirs, root),
        evaluator_type="cityscapes_sem_seg",
    )


def _register_voc(root: str) -> None:
    base = voc_dir(root)

    def roots(split: str) -> tuple[str, str]:
        label_dir = AUG_LABEL_DIR if split == "train_aug" else "SegmentationClass"
        return os.path.join(base, "JPEGImages"), os.path.join(base, label_dir)

    _register_splits("voc", VOC_SPLITS, load_voc, root, C.VOC_CLASSES, C.VOC_COLORS, roots)


def _register_camvid(root: str) -> None:
    base = camvid_dir(root)

    def roots(split: str) -> tuple[str, str]:
        if split == "trainval":  # trainval spans two folders
            return base, base
        return os.path.join(base, split), os.path.join(base, split + CAMVID_PREPARED)

    _register_splits(
        "camvid", CAMVID_SPLITS, load_camvid, root, C.CAMVID_CLASSES, C.CAMVID_COLORS, roots
    )


def _register_ade20k(root: str) -> None:
    base = ade20k_dir(root)

    def roots(split: str) -> tuple[str, str]:
        folder = ADE20K_SPLITS[split][0]
        return os.path.join(base, "images", folder), os.path.join(base, ADE_PREPARED, folder)

    _register_splits(
        "ade20k", ADE20K_SPLITS, load_ade20k, root, C.ADE20K_CLASSES, C.ADE20K_COLORS, roots
    )


def _register_coco_stuff(root: str) -> None:
    base = coco_dir(root)

    def roots(label_dir: str, split: str) -> tuple[str, str]:
        folder = COCO_STUFF_164K_SPLITS[split][0]
        return os.path.join(base, folder), os.path.join(base, label_dir, folder)

    for split in COCO_STUFF_164K_SPLITS:  # each split with 171 classes, then CIRKD's 182 (raw)
        for n, label_dir in ((171, PREPARED_164K_DIR), (182, RAW_164K_DIR)):
            _register_splits(
                "coco_stuff_164k" if n == 171 else "coco_stuff_164k_182",
                [split],
                functools.partial(load_coco_stuff_164k, num_classes=n),
                root,
                C.CLASSES[f"coco_stuff_{n}"],
                C.COLORS[f"coco_stuff_{n}"],
                functools.partial(roots, label_dir),
            )
    base10k = cocostuff10k_dir(root)
    _register_splits(
        "coco_stuff_10k",
        COCO_STUFF_10K_SPLITS,
        load_coco_stuff_10k,
        root,
        C.COCO_STUFF_171_CLASSES,
        C.COCO_STUFF_171_COLORS,
        lambda split: (os.path.join(base10k, "images"), os.path.join(base10k, PREPARED_10K_DIR)),
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
    _register_splits(
        "textkd_synthetic",
        SYNTHETIC_SPLITS,
        _load_synthetic,
        root,
        SYNTHETIC_CLASSES,
        SYNTHETIC_COLORS,
        lambda split: (os.path.join(base, "images", split), os.path.join(base, "labels", split)),
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
