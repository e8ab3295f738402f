"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes.

Layout (as downloaded, ``ADEChallengeData2016.zip``)::

    {root}/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    {root}/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   0 = other, 1..150

``datasets/prepare_ade20k.py`` writes ``annotations_detectron2/{training,validation}/*.png`` with
``value - 1`` and 0 -> 255 (the folder detectron2's builtin ``ade20k_sem_seg_*`` also expects).
The split is the folder (the release ships no split lists). Splits: ``train`` (training, 20210)
and ``val`` (validation, 2000).
"""

from __future__ import annotations

import logging
import os

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
    prepare_command,
    require_dir,
    require_dirs,
    require_prepared_dir,
    stem_conversions,
    stem_records,
)

logger = logging.getLogger(__name__)

ADE20K_SPLITS: dict[str, tuple[str, int]] = {
    "train": ("training", 20210),
    "val": ("validation", 2000),
}
ADE20K_NUM_CLASSES = 150
SCRIPT = "prepare_ade20k.py"
PREPARED_DIR = "annotations_detectron2"
# value v in 1..150 -> v - 1; 0 ("other") and anything above 150 -> 255
ADE20K_LUT = build_lut({v: v - 1 for v in range(1, ADE20K_NUM_CLASSES + 1)})


def ade20k_dir(root: str | None) -> str:
    """``{root}/ADEChallengeData2016``."""
    return os.path.join(datasets_root(root), "ADEChallengeData2016")


def _folder(split: str) -> str:
    check_split("ADE20K", split, ADE20K_SPLITS)
    return ADE20K_SPLITS[split][0]


def _download_hint(root: str) -> str:
    """What to download for a missing ADE20K split (both splits are in one archive)."""
    return (
        f"Download ADEChallengeData2016.zip (ADE20K SceneParsing, both splits) and unzip it into "
        f"{datasets_root(root)}"
    )


def _hint(root: str) -> str:
    return f"{_download_hint(root)}, then run `{prepare_command(SCRIPT, root)}`"


def convert_ade20k_label(src: str, dst: str) -> list[int]:
    """Write ``dst = src - 1`` with 0 -> 255. Returns values of ``src`` outside 0..150."""
    return convert_png_with_lut(src, dst, ADE20K_LUT, range(ADE20K_NUM_CLASSES + 1))


def ade20k_conversions(root: str | None, split: str) -> tuple[list[Conversion], SplitReport]:
    """The ``annotations`` -> ``annotations_detectron2`` jobs of a split and a report with the
    image count and images without annotation (or the reverse)."""
    folder = _folder(split)
    root = datasets_root(root)
    base = ade20k_dir(root)
    image_dir = os.path.join(base, "images", folder)
    raw_dir = os.path.join(base, "annotations", folder)
    require_dirs(
        (image_dir, f"ADE20K {split} images", _download_hint(root)),
        (raw_dir, f"ADE20K {split} labels", _download_hint(root)),
    )
    report = SplitReport("ade20k", split, expected=ADE20K_SPLITS[split][1])
    out_dir = os.path.join(base, PREPARED_DIR, folder)
    return stem_conversions(image_dir, raw_dir, out_dir, report), report


def load_ade20k(root: str | None, split: str) -> list[dict]:
    """Records of an ADE20K split (``train`` / ``val``) with prepared labels."""
    folder = _folder(split)
    root = datasets_root(root)
    base = ade20k_dir(root)
    image_dir = require_dir(
        os.path.join(base, "images", folder), f"ADE20K {split} images", _hint(root)
    )
    label_dir = os.path.join(base, PREPARED_DIR, folder)
    raw_dir = os.path.join(base, "annotations", folder)
    require_prepared_dir(
        "ADE20K", label_dir, raw_dir, f"ADE20K {split} labels", _hint(root), SCRIPT, root
    )
    records = stem_records("ADE20K", image_dir, label_dir, raw_dir, SCRIPT, root)
    check_split_size("ADE20K", split, len(records), ADE20K_SPLITS[split][1])
    logger.info("ADE20K %s: %d images from %s", split, len(records), image_dir)
    return records


def ade20k_roots(root: str | None, split: str) -> tuple[str, str]:
    """``(image_root, sem_seg_root)`` of a split: ``images/<folder>``, the prepared labels."""
    base, folder = ade20k_dir(root), ADE20K_SPLITS[split][0]
    return os.path.join(base, "images", folder), os.path.join(base, PREPARED_DIR, folder)


register_dataset(
    DatasetSpec(
        "ade20k", tuple(ADE20K_SPLITS), load_ade20k, ade20k_roots, C.ADE20K_CLASSES, C.ADE20K_COLORS
    )
)
