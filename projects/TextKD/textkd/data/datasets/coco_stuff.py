"""COCO-Stuff-164K and COCO-Stuff-10K (v1.1): 171 classes (or the 182-way protocol of CIRKD).

Label values: COCO-Stuff's ``stuffthingmaps`` PNGs hold ``COCO id - 1`` (0..181; ids 1..91 are
things, 92..182 stuff) and 255 for unlabeled. 11 of the 91 thing ids were never annotated; the
171-class protocol drops them and renumbers the rest contiguously in COCO id order
(``classes.COCO_STUFF_182_TO_171``): e.g. value 0 (person) -> 0, value 11 (COCO id 12, "street
sign", unused) -> 255, value 12 (stop sign) -> 11, value 91 (banner, first stuff) -> 80,
value 181 (wood) -> 170. The 182-way protocol uses the raw values 0..181 unchanged.

COCO-Stuff-164K layout (COCO 2017 images + ``stuffthingmaps_trainval2017.zip``)::

    {root}/coco/{train2017,val2017}/*.jpg
    {root}/coco/stuffthingmaps/{train2017,val2017}/*.png

``datasets/prepare_coco_stuff164k.py`` writes ``coco/stuffthingmaps_detectron2/{split}/*.png``
(171 classes); the 182-way variant reads ``stuffthingmaps`` directly.

COCO-Stuff-10K v1.1 layout (``cocostuff-10k-v1.1.zip``)::

    {root}/cocostuff-10k/images/*.jpg
    {root}/cocostuff-10k/annotations/*.mat          variable ``S``: COCO ids 1..182, 0 unlabeled
    {root}/cocostuff-10k/imageLists/{train,test}.txt

``datasets/prepare_coco_stuff10k.py`` writes ``cocostuff-10k/annotations_detectron2/*.png``
(``S - 1`` then the same 171 map; 0 -> 255). The ``.mat`` files may be MATLAB v5 (scipy) or
v7.3 (HDF5, read with h5py).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from . import classes as C
from .catalog import DatasetSpec, register_dataset
from .classes import COCO_STUFF_182_TO_171
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
    prepare_command,
    read_split_list,
    require_dir,
    require_dirs,
    require_prepared_dir,
    stem_conversions,
    stem_records,
    unexpected_values,
    write_label_png,
)

logger = logging.getLogger(__name__)

COCO_STUFF_164K_SPLITS: dict[str, tuple[str, int]] = {
    "train": ("train2017", 118287),
    "val": ("val2017", 5000),
}
COCO_STUFF_10K_SPLITS: dict[str, int] = {"train": 9000, "test": 1000}
SCRIPT_164K = "prepare_coco_stuff164k.py"
SCRIPT_10K = "prepare_coco_stuff10k.py"
RAW_164K_DIR = "stuffthingmaps"
PREPARED_164K_DIR = "stuffthingmaps_detectron2"
PREPARED_10K_DIR = "annotations_detectron2"

# label-map value (COCO id - 1) -> 171-class train id; unused ids and 255 -> 255
LUT_182_TO_171 = build_lut(COCO_STUFF_182_TO_171)
# COCO-Stuff-10K S (COCO id, 0 unlabeled) -> 171-class train id
LUT_10K_TO_171 = build_lut({v + 1: t for v, t in COCO_STUFF_182_TO_171.items()})
VALID_182_VALUES = list(range(182)) + [IGNORE_LABEL]


def coco_dir(root: str | None) -> str:
    """``{root}/coco``."""
    return os.path.join(datasets_root(root), "coco")


def cocostuff10k_dir(root: str | None) -> str:
    """``{root}/cocostuff-10k``."""
    return os.path.join(datasets_root(root), "cocostuff-10k")


# ---------------------------------------------------------------- 164K


def _folder_164k(split: str) -> str:
    check_split("COCO-Stuff-164K", split, COCO_STUFF_164K_SPLITS)
    return COCO_STUFF_164K_SPLITS[split][0]


def _download_hint_164k(root: str, folder: str | None = None, kind: str | None = None) -> str:
    """What to download for a missing COCO-Stuff-164K ``folder`` (train2017 / val2017; None:
    both) of ``kind`` ("images" / "labels"; None: both)."""
    zips = f"{folder}.zip" if folder else "train2017.zip / val2017.zip"
    images = f"COCO 2017's {zips} into {coco_dir(root)}"
    labels = (
        f"stuffthingmaps_trainval2017.zip (the labels of both splits) into "
        f"{os.path.join(coco_dir(root), RAW_164K_DIR)}"
    )
    parts = {"images": [images], "labels": [labels], None: [images, labels]}[kind]
    return "Download and unzip " + " and ".join(parts)


def _hint_164k(root: str) -> str:
    return f"{_download_hint_164k(root)}, then run `{prepare_command(SCRIPT_164K, root)}`"


def convert_coco_stuff_164k_label(src: str, dst: str) -> list[int]:
    """Write the 171-class map ``dst = LUT_182_TO_171[src]`` of a ``stuffthingmaps`` PNG.
    Returns values of ``src`` that are neither 0..181 nor 255."""
    return convert_png_with_lut(
        src, dst, LUT_182_TO_171, VALID_182_VALUES, expected="8-bit label values"
    )


def coco_stuff_164k_conversions(
    root: str | None, split: str
) -> tuple[list[Conversion], SplitReport]:
    """The ``stuffthingmaps`` -> ``stuffthingmaps_detectron2`` jobs of a split and a report with
    the image count and images without a label (or the reverse)."""
    folder = _folder_164k(split)
    root = datasets_root(root)
    base = coco_dir(root)
    image_dir = os.path.join(base, folder)
    raw_dir = os.path.join(base, RAW_164K_DIR, folder)
    require_dirs(
        (image_dir, f"COCO {folder} images", _download_hint_164k(root, folder, "images")),
        (raw_dir, f"COCO-Stuff {folder} labels", _download_hint_164k(root, folder, "labels")),
    )
    report = SplitReport("coco_stuff_164k", split, expected=COCO_STUFF_164K_SPLITS[split][1])
    out_dir = os.path.join(base, PREPARED_164K_DIR, folder)
    return stem_conversions(image_dir, raw_dir, out_dir, report), report


def load_coco_stuff_164k(root: str | None, split: str, num_classes: int = 171) -> list[dict]:
    """Records of a COCO-Stuff-164K split (``train`` / ``val``): 171 classes from the prepared
    ``stuffthingmaps_detectron2``, or the 182-way protocol from the raw ``stuffthingmaps``."""
    if num_classes not in (171, 182):
        raise ValueError(f"COCO-Stuff-164K num_classes must be 171 or 182, got {num_classes}")
    folder = _folder_164k(split)
    root = datasets_root(root)
    base = coco_dir(root)
    image_dir = require_dir(os.path.join(base, folder), f"COCO {folder} images", _hint_164k(root))
    raw_dir = os.path.join(base, RAW_164K_DIR, folder)
    if num_classes == 182:
        label_dir = require_dir(raw_dir, f"COCO-Stuff {folder} labels", _hint_164k(root))
    else:
        label_dir = os.path.join(base, PREPARED_164K_DIR, folder)
        require_prepared_dir(
            "COCO-Stuff-164K",
            label_dir,
            raw_dir,
            f"COCO-Stuff {folder} labels",
            _hint_164k(root),
            SCRIPT_164K,
            root,
        )
    prepared_from = raw_dir if num_classes == 171 else None  # 182-way: the labels are raw
    records = stem_records(
        "COCO-Stuff-164K", image_dir, label_dir, prepared_from, SCRIPT_164K, root
    )
    check_split_size("COCO-Stuff-164K", split, len(records), COCO_STUFF_164K_SPLITS[split][1])
    logger.info("COCO-Stuff-164K %s (%d classes): %d images", split, num_classes, len(records))
    return records


# ---------------------------------------------------------------- 10K


def _check_10k(split: str) -> None:
    check_split("COCO-Stuff-10K", split, COCO_STUFF_10K_SPLITS)


def _download_hint_10k(root: str) -> str:
    """What to download for a missing COCO-Stuff-10K split (both splits are in one archive)."""
    return (
        f"Download cocostuff-10k-v1.1.zip and unzip it into {cocostuff10k_dir(root)} (images/, "
        f"annotations/, imageLists/)"
    )


def _hint_10k(root: str) -> str:
    return f"{_download_hint_10k(root)}, then run `{prepare_command(SCRIPT_10K, root)}`"


def read_cocostuff10k_mat(path: str) -> np.ndarray:
    """The label map ``S`` (COCO ids, 0 unlabeled) of a COCO-Stuff-10K ``.mat`` file, as an
    int64 array: MATLAB v5 files through ``scipy.io.loadmat``, v7.3 (HDF5) files through h5py
    (whose arrays are stored transposed, column-major, so they are transposed back)."""
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO-Stuff-10K annotation {path} does not exist")
    try:
        mat = scipy.io.loadmat(path, variable_names=["S"])
    except Exception as scipy_error:  # v7.3 raises NotImplementedError, corrupt files vary
        s = _read_mat73(path, scipy_error)
    else:
        if "S" not in mat:
            raise KeyError(f"{path} has no variable 'S'")
        s = np.asarray(mat["S"])
    if s.ndim != 2:
        raise ValueError(f"{path}: S has shape {s.shape}, expected a 2-D label map")
    return s.astype(np.int64)


def _read_mat73(path: str, scipy_error: Exception) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise ValueError(
            f"cannot read COCO-Stuff-10K annotation {path}: scipy: {scipy_error}; h5py: {e}"
        ) from e
    with f:
        if "S" not in f:
            raise KeyError(f"{path} has no variable 'S' (keys: {sorted(f.keys())})")
        return np.asarray(f["S"]).T  # MATLAB stores column-major: h5py sees the transpose


def convert_cocostuff10k_label(src: str, dst: str) -> list[int]:
    """Write the 171-class PNG of a COCO-Stuff-10K ``.mat``: ``S - 1`` mapped by
    ``LUT_182_TO_171``, 0 (unlabeled) -> 255. Returns values of ``S`` outside 0..182."""
    s = read_cocostuff10k_mat(src)
    out = np.full(s.shape, IGNORE_LABEL, dtype=np.uint8)
    inside = (s >= 0) & (s < 256)
    out[inside] = LUT_10K_TO_171[s[inside]]
    write_label_png(dst, out)
    return unexpected_values(s, range(183))


def _10k_ids(root: str, split: str, hint: str | None = None) -> tuple[str, list[str]]:
    list_path = os.path.join(cocostuff10k_dir(root), "imageLists", f"{split}.txt")
    return list_path, read_split_list(list_path, _hint_10k(root) if hint is None else hint)


def cocostuff10k_conversions(root: str | None, split: str) -> tuple[list[Conversion], SplitReport]:
    """The ``annotations/*.mat`` -> ``annotations_detectron2/*.png`` jobs of the ids listed in
    ``imageLists/{split}.txt``, and a report with image count and missing files."""
    _check_10k(split)
    root = datasets_root(root)
    hint = _download_hint_10k(root)
    base = require_dir(cocostuff10k_dir(root), "COCO-Stuff-10K", hint)
    image_dir = os.path.join(base, "images")
    raw_dir = os.path.join(base, "annotations")
    require_dirs(
        (image_dir, "COCO-Stuff-10K images", hint), (raw_dir, "COCO-Stuff-10K labels", hint)
    )
    _, ids = _10k_ids(root, split, hint)
    report = SplitReport("coco_stuff_10k", split, expected=COCO_STUFF_10K_SPLITS[split])
    images = set(list_files(image_dir, ".jpg"))
    mats = set(list_files(raw_dir, ".mat"))
    out_dir = os.path.join(base, PREPARED_10K_DIR)
    jobs = []
    for i in ids:
        if i + ".jpg" not in images:
            report.missing.append(os.path.join(image_dir, i + ".jpg"))
            continue
        report.images += 1
        if i + ".mat" not in mats:
            report.missing.append(os.path.join(raw_dir, i + ".mat"))
            continue
        src = os.path.join(raw_dir, i + ".mat")
        jobs.append(Conversion(src, os.path.join(out_dir, i + ".png"), src))
    return jobs, report


def load_coco_stuff_10k(root: str | None, split: str) -> list[dict]:
    """Records of a COCO-Stuff-10K split (``train`` / ``test``) from ``imageLists/{split}.txt``
    with the prepared 171-class labels."""
    _check_10k(split)
    root = datasets_root(root)
    base = require_dir(cocostuff10k_dir(root), "COCO-Stuff-10K", _hint_10k(root))
    image_dir = require_dir(os.path.join(base, "images"), "COCO-Stuff-10K images", _hint_10k(root))
    label_dir = os.path.join(base, PREPARED_10K_DIR)
    raw_dir = os.path.join(base, "annotations")
    require_prepared_dir(
        "COCO-Stuff-10K",
        label_dir,
        raw_dir,
        "COCO-Stuff-10K labels",
        _hint_10k(root),
        SCRIPT_10K,
        root,
    )
    list_path, ids = _10k_ids(root, split)
    images = set(list_files(image_dir, ".jpg"))
    labels = set(list_files(label_dir, ".png"))
    records = []
    for i in ids:
        image, label = os.path.join(image_dir, i + ".jpg"), os.path.join(label_dir, i + ".png")
        if i + ".jpg" not in images:
            raise FileNotFoundError(
                f"COCO-Stuff-10K {split}: image {image} (listed in {list_path}) does not exist"
            )
        if i + ".png" not in labels:
            raw = os.path.join(raw_dir, i + ".mat")
            raise missing_label_error("COCO-Stuff-10K", image, label, raw, SCRIPT_10K, root)
        records.append(make_record(image, label))
    check_split_size("COCO-Stuff-10K", split, len(records), COCO_STUFF_10K_SPLITS[split])
    logger.info("COCO-Stuff-10K %s: %d images from %s", split, len(records), list_path)
    return records


def coco_stuff_164k_roots(
    root: str | None, split: str, label_dir: str = PREPARED_164K_DIR
) -> tuple[str, str]:
    """``(image_root, sem_seg_root)`` of a COCO-Stuff-164k split (``label_dir``: the prepared
    171-class maps, or ``RAW_164K_DIR`` for CIRKD's 182-class protocol)."""
    base, folder = coco_dir(root), COCO_STUFF_164K_SPLITS[split][0]
    return os.path.join(base, folder), os.path.join(base, label_dir, folder)


def coco_stuff_10k_roots(root: str | None, split: str) -> tuple[str, str]:
    """``(image_root, sem_seg_root)`` of COCO-Stuff-10k (one folder for both splits)."""
    base = cocostuff10k_dir(root)
    return os.path.join(base, "images"), os.path.join(base, PREPARED_10K_DIR)


def _load_164k_182(root: str | None, split: str) -> list[dict]:
    return load_coco_stuff_164k(root, split, num_classes=182)


def _roots_164k_182(root: str | None, split: str) -> tuple[str, str]:
    return coco_stuff_164k_roots(root, split, RAW_164K_DIR)


register_dataset(
    DatasetSpec(
        "coco_stuff_164k",
        tuple(COCO_STUFF_164K_SPLITS),
        load_coco_stuff_164k,
        coco_stuff_164k_roots,
        C.COCO_STUFF_171_CLASSES,
        C.COCO_STUFF_171_COLORS,
    )
)
register_dataset(  # CIRKD's protocol: the raw 182-id maps
    DatasetSpec(
        "coco_stuff_164k_182",
        tuple(COCO_STUFF_164K_SPLITS),
        _load_164k_182,
        _roots_164k_182,
        C.COCO_STUFF_182_CLASSES,
        C.COCO_STUFF_182_COLORS,
    )
)
register_dataset(
    DatasetSpec(
        "coco_stuff_10k",
        tuple(COCO_STUFF_10K_SPLITS),
        load_coco_stuff_10k,
        coco_stuff_10k_roots,
        C.COCO_STUFF_171_CLASSES,
        C.COCO_STUFF_171_COLORS,
    )
)
