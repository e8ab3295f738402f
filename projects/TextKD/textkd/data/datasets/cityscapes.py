"""Cityscapes (fine annotations), 19 classes.

Layout (as downloaded, ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    {root}/cityscapes/leftImg8bit/{train,val,test}/{city}/{stem}_leftImg8bit.png
    {root}/cityscapes/gtFine/{train,val,test}/{city}/{stem}_gtFine_labelIds.png

``datasets/prepare_cityscapes.py`` writes ``{stem}_gtFine_labelTrainIds.png`` next to every
``labelIds`` file: label id -> train id with the table of ``cityscapesscripts.helpers.labels``
(the same values ``createTrainIdLabelImgs`` produces), every id without a train id -> 255.
The split *is* the folder (Cityscapes ships no split lists), so train and val cannot mix.
The test split has no public labels (its gtFine files are placeholders), so its records carry no
``sem_seg_file_name``.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from . import classes as C
from .catalog import DatasetSpec, register_dataset
from .common import (
    Conversion,
    SplitReport,
    build_lut,
    check_split,
    check_split_size,
    convert_png_with_lut,
    datasets_root,
    list_files,
    make_record,
    missing_label_error,
    orphan_label_error,
    prepare_command,
    require_dir,
    require_dirs,
)

logger = logging.getLogger(__name__)

CITYSCAPES_SPLITS: dict[str, int] = {"train": 2975, "val": 500, "test": 1525}
CITYSCAPES_HEIGHT, CITYSCAPES_WIDTH = 1024, 2048
IMAGE_SUFFIX = "_leftImg8bit.png"
RAW_LABEL_SUFFIX = "_gtFine_labelIds.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
SCRIPT = "prepare_cityscapes.py"
NUM_LABEL_IDS = 34  # label ids 0..33 appear in labelIds PNGs (license plate, -1, never does)


def cityscapes_dirs(root: str | None, split: str) -> tuple[str, str]:
    """``(image_dir, gt_dir)`` of a split: ``{root}/cityscapes/{leftImg8bit,gtFine}/{split}``."""
    base = os.path.join(datasets_root(root), "cityscapes")
    return os.path.join(base, "leftImg8bit", split), os.path.join(base, "gtFine", split)


@functools.lru_cache(maxsize=1)
def label_id_to_train_id_lut() -> np.ndarray:
    """256-entry uint8 table label id -> train id from ``cityscapesscripts.helpers.labels``;
    ids whose train id is 255 or -1 (ignored in evaluation), and ids > 33, map to 255."""
    from cityscapesscripts.helpers.labels import labels

    return build_lut({lab.id: lab.trainId for lab in labels if lab.id >= 0})


def convert_cityscapes_label(src: str, dst: str) -> list[int]:
    """Write the trainIds PNG ``dst`` of the labelIds PNG ``src``: ``dst = lut[src]``.
    Returns the values of ``src`` that are not Cityscapes label ids (0..33)."""
    return convert_png_with_lut(
        src, dst, label_id_to_train_id_lut(), range(NUM_LABEL_IDS), "an 8-bit labelIds PNG"
    )


_ARCHIVES = {"images": "leftImg8bit_trainvaltest.zip", "labels": "gtFine_trainvaltest.zip"}


def _download_hint(root: str, kind: str | None = None) -> str:
    """What to download for missing Cityscapes ``kind`` ("images" / "labels"; None: both)."""
    names = " and ".join(_ARCHIVES[k] for k in ([kind] if kind else _ARCHIVES))
    return (
        f"Download {names} from https://www.cityscapes-dataset.com and unzip into "
        f"{os.path.join(root, 'cityscapes')}"
    )


def _hint(root: str) -> str:
    return f"{_download_hint(root)}, then run `{prepare_command(SCRIPT, root)}`"


def cityscapes_conversions(root: str | None, split: str) -> tuple[list[Conversion], SplitReport]:
    """The labelIds -> labelTrainIds jobs of a split, and a report pre-filled with the image
    count and the images that have no labelIds file (or the reverse)."""
    check_split("Cityscapes", split, CITYSCAPES_SPLITS)
    root = datasets_root(root)
    image_dir, gt_dir = cityscapes_dirs(root, split)
    require_dirs(
        (image_dir, f"Cityscapes {split} images", _download_hint(root, "images")),
        (gt_dir, f"Cityscapes {split} labels", _download_hint(root, "labels")),
    )
    report = SplitReport("cityscapes", split, expected=CITYSCAPES_SPLITS[split])
    jobs = []
    for city in sorted(os.listdir(image_dir)):
        if not os.path.isdir(os.path.join(image_dir, city)):
            continue
        stems = [
            n[: -len(IMAGE_SUFFIX)] for n in list_files(os.path.join(image_dir, city), IMAGE_SUFFIX)
        ]
        report.images += len(stems)
        label_city = os.path.join(gt_dir, city)
        raw = set(list_files(label_city, RAW_LABEL_SUFFIX)) if os.path.isdir(label_city) else set()
        for stem in stems:
            name = stem + RAW_LABEL_SUFFIX
            if name not in raw:
                report.missing.append(os.path.join(label_city, name))
                continue
            src = os.path.join(label_city, name)
            jobs.append(Conversion(src, os.path.join(label_city, stem + LABEL_SUFFIX), src))
        stem_set = set(stems)
        report.missing.extend(
            f"{os.path.join(label_city, n)} (no image)"
            for n in sorted(raw)
            if n[: -len(RAW_LABEL_SUFFIX)] not in stem_set
        )
    return jobs, report


def load_cityscapes(root: str | None, split: str) -> list[dict]:
    """Records of a Cityscapes split: ``file_name`` (leftImg8bit PNG), ``sem_seg_file_name``
    (labelTrainIds PNG; absent for test), ``height`` 1024, ``width`` 2048."""
    check_split("Cityscapes", split, CITYSCAPES_SPLITS)
    root = datasets_root(root)
    image_dir, gt_dir = cityscapes_dirs(root, split)
    require_dir(image_dir, f"Cityscapes {split} images", _hint(root))
    with_labels = split != "test"
    if with_labels:
        require_dir(gt_dir, f"Cityscapes {split} labels", _hint(root))
    records = []
    for city in sorted(os.listdir(image_dir)):
        img_city = os.path.join(image_dir, city)
        if not os.path.isdir(img_city):
            continue
        stems = [n[: -len(IMAGE_SUFFIX)] for n in list_files(img_city, IMAGE_SUFFIX)]
        label_city = os.path.join(gt_dir, city)
        labels = set()
        if with_labels and os.path.isdir(label_city):
            labels = set(list_files(label_city, LABEL_SUFFIX))
        for stem in stems:
            image = os.path.join(img_city, stem + IMAGE_SUFFIX)
            label = None
            if with_labels:
                label = os.path.join(label_city, stem + LABEL_SUFFIX)
                if stem + LABEL_SUFFIX not in labels:
                    raw = os.path.join(label_city, stem + RAW_LABEL_SUFFIX)
                    raise missing_label_error("Cityscapes", image, label, raw, SCRIPT, root)
            records.append(make_record(image, label, CITYSCAPES_HEIGHT, CITYSCAPES_WIDTH))
        if with_labels:
            stem_set = set(stems)
            for n in sorted(labels):
                if n[: -len(LABEL_SUFFIX)] not in stem_set:
                    image = os.path.join(img_city, n[: -len(LABEL_SUFFIX)] + IMAGE_SUFFIX)
                    raise orphan_label_error("Cityscapes", os.path.join(label_city, n), image)
    if not records:
        raise FileNotFoundError(
            f"Cityscapes {split}: no *{IMAGE_SUFFIX} images under {image_dir}/<city>/. {_hint(root)}"
        )
    check_split_size("Cityscapes", split, len(records), CITYSCAPES_SPLITS[split])
    logger.info("Cityscapes %s: %d images from %s", split, len(records), image_dir)
    return records


register_dataset(
    DatasetSpec(
        "cityscapes",
        tuple(CITYSCAPES_SPLITS),
        load_cityscapes,
        cityscapes_dirs,
        C.CITYSCAPES_CLASSES,
        C.CITYSCAPES_COLORS,
        evaluator_type="cityscapes_sem_seg",  # also sets gt_dir = sem_seg_root
    )
)
