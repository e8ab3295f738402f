#!/usr/bin/env python
"""Prepare Pascal VOC 2012 + SBD for TextKD: write the SBD-augmented training list
``VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt`` = (VOC train ∪ SBD train ∪ SBD val) −
VOC val (10582 ids) and ``VOCdevkit/VOC2012/SegmentationClassAug/{id}.png`` for each of them:
the VOC ``SegmentationClass`` palette indices when VOC annotates the image (255 border kept as
ignore), else SBD's ``cls/{id}.mat`` ``GTcls.Segmentation``. No VOC val image or label is ever
written into the training set. Idempotent: finished files are skipped. Ends with an integrity
report (the val split is checked, nothing is written for it).

    python datasets/prepare_voc.py [--root $DETECTRON2_DATASETS] [--workers N]
        [--splits SPLIT ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from textkd.data.datasets.common import (
    Conversion,
    SplitReport,
    convert_many,
    list_files,
    prepare_main,
    prepare_split,
    read_split_list,
    require_dir,
    write_split_list,
)
from textkd.data.datasets.voc import (
    AUG_LABEL_DIR,
    TRAIN_AUG_LIST,
    VOC_SPLITS,
    convert_voc_label,
    download_hint,
    sbd_dir,
    sbd_download_hint,
    train_aug_ids,
    voc_dir,
)

SPLITS = ("train_aug", "val")


def _train_aug(root: str, workers: int | None) -> SplitReport:
    """Write the train_aug labels and list (needs VOC 2012 and SBD)."""
    base = voc_dir(root)
    sbd = sbd_dir(root)
    hint = download_hint(root)
    require_dir(base, "Pascal VOC 2012", hint)
    require_dir(sbd, "SBD (benchmark_RELEASE/dataset)", sbd_download_hint(root))
    list_dir = os.path.join(base, "ImageSets", "Segmentation")
    voc_train = read_split_list(os.path.join(list_dir, "train.txt"), hint)
    voc_val = read_split_list(os.path.join(list_dir, "val.txt"), hint)
    sbd_train = read_split_list(os.path.join(sbd, "train.txt"), sbd_download_hint(root))
    sbd_val = read_split_list(os.path.join(sbd, "val.txt"), sbd_download_hint(root))
    ids = train_aug_ids(voc_train, sbd_train, sbd_val, voc_val)

    image_dir = require_dir(os.path.join(base, "JPEGImages"), "Pascal VOC images", hint)
    voc_label_dir = require_dir(os.path.join(base, "SegmentationClass"), "VOC labels", hint)
    sbd_cls_dir = require_dir(os.path.join(sbd, "cls"), "SBD class labels", sbd_download_hint(root))
    images = set(list_files(image_dir, ".jpg"))
    voc_labels = set(list_files(voc_label_dir, ".png"))
    sbd_labels = set(list_files(sbd_cls_dir, ".mat"))
    out_dir = os.path.join(base, AUG_LABEL_DIR)

    train = SplitReport("voc", "train_aug", expected=VOC_SPLITS["train_aug"])
    jobs = []
    for i in ids:
        if i + ".jpg" not in images:
            train.missing.append(os.path.join(image_dir, i + ".jpg"))
            continue
        train.images += 1
        if i + ".png" in voc_labels:
            src = os.path.join(voc_label_dir, i + ".png")
        elif i + ".mat" in sbd_labels:
            src = os.path.join(sbd_cls_dir, i + ".mat")
        else:
            train.missing.append(f"{i}: neither {voc_label_dir}/{i}.png nor {sbd_cls_dir}/{i}.mat")
            continue
        jobs.append(Conversion(src, os.path.join(out_dir, i + ".png"), src))
    os.makedirs(out_dir, exist_ok=True)
    convert_many(convert_voc_label, jobs, train, workers)
    # the list is written after the labels and names only ids whose label exists, so the loader
    # never meets a listed id without a label (missing ones are in the report)
    done = set(list_files(out_dir, ".png"))
    listed = [i for i in ids if i + ".png" in done and i + ".jpg" in images]
    list_path = os.path.join(list_dir, TRAIN_AUG_LIST)
    if not os.path.isfile(list_path) or read_split_list(list_path) != listed:
        write_split_list(list_path, listed)
    return train


def _val(root: str) -> SplitReport:
    """Check the val split (VOC 2012 only; nothing is written)."""
    base = voc_dir(root)
    hint = download_hint(root, sbd=False)
    require_dir(base, "Pascal VOC 2012", hint)
    list_dir = os.path.join(base, "ImageSets", "Segmentation")
    voc_val = read_split_list(os.path.join(list_dir, "val.txt"), hint)
    image_dir = require_dir(os.path.join(base, "JPEGImages"), "Pascal VOC images", hint)
    voc_label_dir = require_dir(os.path.join(base, "SegmentationClass"), "VOC labels", hint)
    images = set(list_files(image_dir, ".jpg"))
    voc_labels = set(list_files(voc_label_dir, ".png"))
    val = SplitReport("voc", "val", expected=VOC_SPLITS["val"])
    for i in voc_val:
        if i + ".jpg" not in images:
            val.missing.append(os.path.join(image_dir, i + ".jpg"))
            continue
        val.images += 1
        if i + ".png" not in voc_labels:
            val.missing.append(os.path.join(voc_label_dir, i + ".png"))
    val.skipped = val.images
    return val


def prepare_voc(
    root: str, workers: int | None = None, splits: Sequence[str] = SPLITS
) -> list[SplitReport]:
    """Build train_aug (list + labels) and check val under ``root``, for the splits of
    ``splits`` that are present; one report per split (a missing split's report says what to
    download)."""
    run = {"train_aug": lambda: _train_aug(root, workers), "val": lambda: _val(root)}
    return [prepare_split("voc", s, run[s]) for s in splits]


def main(argv: Sequence[str] | None = None) -> int:
    return prepare_main(__doc__, prepare_voc, SPLITS, os.path.basename(__file__), argv)


if __name__ == "__main__":
    sys.exit(main())
