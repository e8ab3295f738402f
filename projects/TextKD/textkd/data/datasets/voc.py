"""Pascal VOC 2012 with the SBD augmentation, 21 classes.

Layout (as downloaded: ``VOCtrainval_11-May-2012.tar`` and SBD ``benchmark.tgz``)::

    {root}/VOCdevkit/VOC2012/JPEGImages/{id}.jpg
    {root}/VOCdevkit/VOC2012/SegmentationClass/{id}.png          palette PNGs, 255 = border
    {root}/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    {root}/benchmark_RELEASE/dataset/cls/{id}.mat                 GTcls.Segmentation
    {root}/benchmark_RELEASE/dataset/{train,val}.txt

``datasets/prepare_voc.py`` writes ``ImageSets/Segmentation/train_aug.txt`` with
``train_aug = (VOC train ∪ SBD train ∪ SBD val) − VOC val`` (10582 ids, sorted) and
``SegmentationClassAug/{id}.png`` for each of them: the VOC ``SegmentationClass`` annotation
(palette indices kept, 255 border stays ignore) when the image has one, else SBD's
``GTcls.Segmentation``. ``val`` (1449) reads ``SegmentationClass`` directly; ``train`` (1464,
VOC only) is registered too.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from . import classes as C
from .catalog import DatasetSpec, register_dataset
from .classes import VOC_PALETTE
from .common import (
    IGNORE_LABEL,
    DatasetNotPreparedError,
    check_split,
    check_split_size,
    datasets_root,
    list_files,
    make_record,
    missing_label_error,
    prepare_command,
    read_label_png,
    read_split_list,
    require_dir,
    unexpected_values,
    write_label_png,
)

logger = logging.getLogger(__name__)

VOC_SPLITS: dict[str, int] = {"train_aug": 10582, "val": 1449, "train": 1464}
VOC_NUM_CLASSES = 21
SCRIPT = "prepare_voc.py"
TRAIN_AUG_LIST = "train_aug.txt"
AUG_LABEL_DIR = "SegmentationClassAug"


def voc_dir(root: str | None) -> str:
    """``{root}/VOCdevkit/VOC2012``."""
    return os.path.join(datasets_root(root), "VOCdevkit", "VOC2012")


def sbd_dir(root: str | None) -> str:
    """SBD's ``benchmark_RELEASE/dataset`` folder: ``{root}/benchmark_RELEASE/dataset``, or
    ``{root}/VOCdevkit/benchmark_RELEASE/dataset`` when only that one exists."""
    root = datasets_root(root)
    first = os.path.join(root, "benchmark_RELEASE", "dataset")
    second = os.path.join(root, "VOCdevkit", "benchmark_RELEASE", "dataset")
    return second if not os.path.isdir(first) and os.path.isdir(second) else first


def read_sbd_mat(path: str) -> np.ndarray:
    """The class map ``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file as a uint8 array."""
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f"SBD annotation {path} does not exist")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:
        raise ValueError(f"cannot read SBD annotation {path}: {e}") from e
    if "GTcls" not in mat:
        raise KeyError(
            f"{path} has no 'GTcls' struct (keys: {sorted(k for k in mat if not k.startswith('__'))})"
        )
    gt = mat["GTcls"]
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise KeyError(f"{path}: GTcls has no 'Segmentation' field")
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected 2-D")
    if seg.size and (seg.min() < 0 or seg.max() > 255):
        raise ValueError(f"{path}: GTcls.Segmentation has values outside 0..255")
    return seg.astype(np.uint8)


def train_aug_ids(
    voc_train: list[str], sbd_train: list[str], sbd_val: list[str], voc_val: list[str]
) -> list[str]:
    """``sorted((voc_train ∪ sbd_train ∪ sbd_val) − voc_val)``: the SBD-augmented training ids."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def convert_voc_label(src: str, dst: str) -> list[int]:
    """Copy a VOC ``SegmentationClass`` palette PNG (``src``) or convert an SBD ``.mat`` into the
    palette PNG ``dst`` keeping the class indices. Returns values outside 0..20 and 255."""
    label = read_sbd_mat(src) if src.endswith(".mat") else read_label_png(src)
    if label.dtype != np.uint8:
        raise ValueError(f"{src}: expected 8-bit class indices, got dtype {label.dtype}")
    bad = unexpected_values(label, list(range(VOC_NUM_CLASSES)) + [IGNORE_LABEL])
    if bad:
        label = label.copy()
        label[np.isin(label, bad)] = IGNORE_LABEL
    write_label_png(dst, label, palette=VOC_PALETTE)
    return bad


def download_hint(root: str, sbd: bool = True) -> str:
    """What to download for Pascal VOC (``sbd``: and for SBD, which only train_aug needs)."""
    voc = f"VOCtrainval_11-May-2012.tar into {root} (giving VOCdevkit/VOC2012)"
    if not sbd:
        return f"Download and unpack {voc}"
    return (
        f"Download and unpack {voc} and SBD's benchmark.tgz into {root} (giving benchmark_RELEASE)"
    )


def sbd_download_hint(root: str) -> str:
    """What to download for SBD (train_aug only)."""
    return (
        f"Download and unpack SBD's benchmark.tgz into {root} (giving benchmark_RELEASE; only "
        f"train_aug needs it)"
    )


def _hint(root: str) -> str:
    return f"{download_hint(root)}, then run `{prepare_command(SCRIPT, root)}`"


def load_voc(root: str | None, split: str) -> list[dict]:
    """Records of a VOC split from its official list: ``train_aug`` (prepared list and
    ``SegmentationClassAug``), ``val`` / ``train`` (``SegmentationClass``)."""
    check_split("Pascal VOC", split, VOC_SPLITS)
    root = datasets_root(root)
    base = voc_dir(root)
    require_dir(base, "Pascal VOC 2012", _hint(root))
    image_dir = require_dir(os.path.join(base, "JPEGImages"), "Pascal VOC images", _hint(root))
    list_dir = os.path.join(base, "ImageSets", "Segmentation")
    if split == "train_aug":
        list_path = os.path.join(list_dir, TRAIN_AUG_LIST)
        label_dir = os.path.join(base, AUG_LABEL_DIR)
        if not os.path.isfile(list_path) or not os.path.isdir(label_dir):
            missing = list_path if not os.path.isfile(list_path) else label_dir
            raise DatasetNotPreparedError(
                f"Pascal VOC train_aug is not prepared: {missing} does not exist; run "
                f"`{prepare_command(SCRIPT, root)}` (needs SBD under {sbd_dir(root)})"
            )
    else:
        list_path = os.path.join(list_dir, f"{split}.txt")
        label_dir = os.path.join(base, "SegmentationClass")
    ids = read_split_list(list_path, _hint(root))
    require_dir(label_dir, f"Pascal VOC {split} labels", _hint(root))
    images = set(list_files(image_dir, ".jpg"))
    labels = set(list_files(label_dir, ".png"))
    records = []
    for i in ids:
        image = os.path.join(image_dir, i + ".jpg")
        label = os.path.join(label_dir, i + ".png")
        if i + ".jpg" not in images:
            raise FileNotFoundError(
                f"Pascal VOC {split}: image {image} (listed in {list_path}) does not exist"
            )
        if i + ".png" not in labels:
            if split == "train_aug":
                raise DatasetNotPreparedError(
                    f"Pascal VOC train_aug label {label} is missing (listed in {list_path}); "
                    f"run `{prepare_command(SCRIPT, root)}` again to finish the preparation"
                )
            raise missing_label_error("Pascal VOC", image, label, None, SCRIPT, root)
        records.append(make_record(image, label))
    check_split_size("Pascal VOC", split, len(records), VOC_SPLITS[split])
    logger.info("Pascal VOC %s: %d images from %s", split, len(records), list_path)
    return records


def voc_roots(root: str | None, split: str) -> tuple[str, str]:
    """``(image_root, sem_seg_root)`` of a split: JPEGImages and SegmentationClassAug (train_aug)
    or SegmentationClass."""
    base = voc_dir(root)
    label_dir = AUG_LABEL_DIR if split == "train_aug" else "SegmentationClass"
    return os.path.join(base, "JPEGImages"), os.path.join(base, label_dir)


register_dataset(
    DatasetSpec("voc", tuple(VOC_SPLITS), load_voc, voc_roots, C.VOC_CLASSES, C.VOC_COLORS)
)
