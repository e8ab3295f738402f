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

The table is not kept here: every module of ``data/datasets/`` declares its splits with
``register_dataset(DatasetSpec(...))`` (:mod:`~textkd.data.datasets.catalog`, found without an
import list), and :func:`register_all` registers each spec with :func:`register_spec`; only the
synthetic dataset (``data/synthetic.py``, generated on first use) is added here.

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
from collections.abc import Callable

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.datasets.catalog import DatasetSpec, dataset_specs
from ..data.datasets.common import IGNORE_LABEL, datasets_root

logger = logging.getLogger(__name__)

__all__ = [
    "register_all",
    "register_sem_seg",
    "register_spec",
    "registered_names",
    "SYNTHETIC_SPLITS",
]

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


def register_spec(spec: DatasetSpec, root: str) -> list[str]:
    """Register ``<prefix>_<split>_sem_seg`` for every split of ``spec``: records
    ``spec.load(root, split)`` (read on ``DatasetCatalog.get``) and metadata ``stuff_classes``,
    ``stuff_colors``, ``evaluator_type``, ``image_root, sem_seg_root = spec.roots(root, split)``
    (plus ``gt_dir = sem_seg_root`` for the Cityscapes evaluator) and ``spec.metadata``."""
    names = []
    for split in spec.splits:
        image_root, sem_seg_root = spec.roots(root, split)
        extra = {"gt_dir": sem_seg_root} if spec.evaluator_type == "cityscapes_sem_seg" else {}
        register_sem_seg(
            spec.name(split),
            functools.partial(spec.load, root, split),
            stuff_classes=list(spec.classes),
            stuff_colors=_colors(spec.colors),
            evaluator_type=spec.evaluator_type,
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            **extra,
            **spec.metadata,
        )
        names.append(spec.name(split))
    return names


def _load_synthetic(root: str, split: str) -> list[dict]:
    from ..data.synthetic import ensure_synthetic, load_synthetic

    ensure_synthetic(root, split)  # generated on first use (DatasetCatalog.get), never at import
    return load_synthetic(root, split)


def _synthetic_roots(root: str, split: str) -> tuple[str, str]:
    from ..data.synthetic import SYNTHETIC_DIRNAME

    base = os.path.join(os.path.abspath(os.path.expanduser(root)), SYNTHETIC_DIRNAME)
    return os.path.join(base, "images", split), os.path.join(base, "labels", split)


def _synthetic_spec() -> DatasetSpec | None:
    try:
        from ..data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS
    except ImportError as e:
        logger.warning("synthetic dataset not registered: %s", e)
        return None
    return DatasetSpec(
        "textkd_synthetic",
        SYNTHETIC_SPLITS,
        _load_synthetic,
        _synthetic_roots,
        SYNTHETIC_CLASSES,
        SYNTHETIC_COLORS,
    )


def register_all(root: str | None = None) -> list[str]:
    """Register every split of every dataset under ``root`` (default ``$DETECTRON2_DATASETS`` or
    ``./datasets``); returns the registered names. Touches no files."""
    root = datasets_root(root)
    before = len(_REGISTERED)
    specs = dataset_specs()
    synthetic = _synthetic_spec()
    for spec in specs + ([synthetic] if synthetic is not None else []):
        register_spec(spec, root)
    logger.debug("registered %d TextKD datasets under %s", len(_REGISTERED) - before, root)
    return registered_names()


register_all()
