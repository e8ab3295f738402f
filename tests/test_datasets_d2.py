"""Dataset registration and the dataset mapper (detectron2 layer)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.detectron2

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from PIL import Image  # noqa: E402
from test_datasets import (  # noqa: E402
    C,
    _image,
    _label,
    make_ade20k,
    make_camvid,
    make_cityscapes,
    make_coco10k,
    make_coco164k,
    make_voc,
)
from textkd.config import add_textkd_config  # noqa: E402
from textkd.d2 import register  # noqa: E402
from textkd.d2.mapper import TextKDSemSegDatasetMapper  # noqa: E402

MEAN = (123.675, 116.28, 103.53)

NAMES = {
    "cityscapes_train_sem_seg": 19,
    "cityscapes_val_sem_seg": 19,
    "cityscapes_test_sem_seg": 19,
    "voc_train_aug_sem_seg": 21,
    "voc_val_sem_seg": 21,
    "camvid_train_sem_seg": 11,
    "camvid_val_sem_seg": 11,
    "camvid_test_sem_seg": 11,
    "ade20k_train_sem_seg": 150,
    "ade20k_val_sem_seg": 150,
    "coco_stuff_164k_train_sem_seg": 171,
    "coco_stuff_164k_val_sem_seg": 171,
    "coco_stuff_164k_182_train_sem_seg": 182,
    "coco_stuff_164k_182_val_sem_seg": 182,
    "coco_stuff_10k_train_sem_seg": 171,
    "coco_stuff_10k_test_sem_seg": 171,
    "textkd_synthetic_train_sem_seg": None,
    "textkd_synthetic_val_sem_seg": None,
}


@pytest.fixture
def restore_default_registration():
    original = os.environ.get("DETECTRON2_DATASETS")  # read before the test changes it
    yield
    register.register_all(original)  # back to the usual root for the tests that follow


def test_names_and_metadata(tmp_path, monkeypatch, restore_default_registration):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    names = register.register_all()
    names = register.register_all()  # registering twice is fine
    assert set(NAMES) <= set(names)
    registered = set(DatasetCatalog.list())
    for name, k in NAMES.items():
        assert name in registered
        meta = MetadataCatalog.get(name)
        assert meta.ignore_label == 255
        assert len(meta.stuff_classes) == len(meta.stuff_colors)
        if k is not None:
            assert len(meta.stuff_classes) == k, name
        assert meta.image_root.startswith(str(tmp_path)), name
        assert meta.sem_seg_root.startswith(str(tmp_path)), name
        want = "cityscapes_sem_seg" if name.startswith("cityscapes") else "sem_seg"
        assert meta.evaluator_type == want
    assert MetadataCatalog.get("cityscapes_val_sem_seg").gt_dir == os.path.join(
        str(tmp_path), "cityscapes", "gtFine", "val"
    )
    # detectron2's builtins are untouched and distinct
    assert "ade20k_sem_seg_val" in registered and "cityscapes_fine_sem_seg_val" in registered
    assert (
        MetadataCatalog.get("ade20k_sem_seg_val").sem_seg_root
        != MetadataCatalog.get("ade20k_val_sem_seg").sem_seg_root
    )
    # registering touches no file: the synthetic dataset is generated only on DatasetCatalog.get
    assert os.listdir(tmp_path) == []


def test_class_names_match_detectron2_builtins():
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES

    assert C.ADE20K_CLASSES == [n.strip() for n in ADE20K_SEM_SEG_CATEGORIES]
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    assert [C.COCO_STUFF_182_CLASSES[c["id"] - 1] for c in things] == [c["name"] for c in things]
    assert C.COCO_STUFF_171_CLASSES[:80] == [c["name"] for c in things]


def test_dataset_catalog_get_on_tiny_trees(tmp_path, monkeypatch, restore_default_registration):
    from prepare_ade20k import prepare_ade20k
    from prepare_camvid import prepare_camvid
    from prepare_cityscapes import prepare_cityscapes
    from prepare_coco_stuff10k import prepare_coco_stuff10k
    from prepare_coco_stuff164k import prepare_coco_stuff164k
    from prepare_voc import prepare_voc

    root = str(tmp_path)
    for make, prepare in (
        (make_cityscapes, prepare_cityscapes),
        (make_voc, prepare_voc),
        (make_camvid, prepare_camvid),
        (make_ade20k, prepare_ade20k),
        (make_coco164k, prepare_coco_stuff164k),
        (make_coco10k, prepare_coco_stuff10k),
    ):
        make(root)
        prepare(root, workers=1)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    register.register_all()
    counts = {
        "cityscapes_train_sem_seg": 3,
        "cityscapes_val_sem_seg": 2,
        "voc_train_aug_sem_seg": 4,
        "voc_val_sem_seg": 2,
        "camvid_train_sem_seg": 3,
        "camvid_test_sem_seg": 2,
        "ade20k_train_sem_seg": 3,
        "ade20k_val_sem_seg": 2,
        "coco_stuff_164k_train_sem_seg": 3,
        "coco_stuff_164k_182_val_sem_seg": 2,
        "coco_stuff_10k_train_sem_seg": 2,
        "coco_stuff_10k_test_sem_seg": 1,
    }
    for name, n in counts.items():
        recs = DatasetCatalog.get(name)
        assert len(recs) == n, name
        meta = MetadataCatalog.get(name)
        for r in recs:
            assert r["file_name"].startswith(meta.image_root), name
            assert r["sem_seg_file_name"].startswith(meta.sem_seg_root), name
            assert os.path.isfile(r["file_name"]) and os.path.isfile(r["sem_seg_file_name"])


def _cfg(num_classes: int = 21, crop=(8, 10)):
    cfg = get_cfg()
    add_textkd_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.PIXEL_MEAN = list(MEAN)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = list(crop)
    return cfg


def _record(tmp_path, h=6, w=8, values=(0, 15, 255, 20), palette=True) -> dict:
    img = str(tmp_path / "img.png")
    lab = str(tmp_path / "lab.png")
    _image(img, 0, h, w)
    arr = np.resize(np.asarray(values), h * w).reshape(h, w)
    _label(lab, arr, C.VOC_PALETTE if palette else None)
    return {"file_name": img, "sem_seg_file_name": lab}


def test_mapper_from_config_and_train_output(tmp_path):
    cfg = _cfg()
    cfg.INPUT.SCALE_RANGE = [1.0, 1.0]
    cfg.INPUT.FLIP = False
    mapper = TextKDSemSegDatasetMapper(cfg, is_train=True)
    assert mapper.crop_size == (8, 10) and mapper.num_classes == 21
    rec = _record(tmp_path)
    out = mapper(rec)
    img, sem = out["image"], out["sem_seg"]
    assert img.dtype == torch.uint8 and img.shape == (3, 8, 10)
    assert sem.dtype == torch.int64 and sem.shape == (8, 10)
    assert (out["height"], out["width"], out["file_name"]) == (6, 8, rec["file_name"])
    # a 6×8 image in an 8×10 crop: the crop starts at (0, 0), the rest is padding
    src = np.asarray(Image.open(rec["file_name"]))
    np.testing.assert_array_equal(img[:, :6, :8].permute(1, 2, 0).numpy(), src)
    pad = torch.tensor([round(m) for m in MEAN], dtype=torch.uint8)[:, None]
    assert (img[:, 6:, :].reshape(3, -1) == pad).all() and (
        img[:, :, 8:].reshape(3, -1) == pad
    ).all()
    assert (sem[6:, :] == 255).all() and (sem[:, 8:] == 255).all()
    # palette indices survive (never converted to luminance)
    np.testing.assert_array_equal(
        sem[:6, :8].numpy(), np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.int64)
    )
    assert set(sem.unique().tolist()) == {0, 15, 20, 255}


def test_mapper_random_augmentation_is_seedable(tmp_path):
    kw = dict(image_format="RGB", num_classes=21, crop_size=(5, 5), pixel_mean=MEAN)
    rec = _record(tmp_path, 12, 16)
    a = TextKDSemSegDatasetMapper(is_train=True, seed=7, **kw)(rec)
    b = TextKDSemSegDatasetMapper(is_train=True, seed=7, **kw)(rec)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
    assert a["image"].shape == (3, 5, 5)
    assert set(a["sem_seg"].unique().tolist()) <= {0, 15, 20, 255}


def test_mapper_test_mode(tmp_path):
    cfg = _cfg()
    mapper = TextKDSemSegDatasetMapper(cfg, is_train=False)
    rec = _record(tmp_path, 6, 8)
    out = mapper(rec)
    assert out["image"].shape == (3, 6, 8) and out["sem_seg"].shape == (6, 8)
    src = np.asarray(Image.open(rec["file_name"]))
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), src)
    # no label file: no sem_seg, no error
    out = mapper({"file_name": rec["file_name"]})
    assert "sem_seg" not in out and (out["height"], out["width"]) == (6, 8)
    # optional resize of the long side; height/width stay the original size
    cfg.INPUT.TEST_SIZE = 16
    out = TextKDSemSegDatasetMapper(cfg, is_train=False)(rec)
    assert out["image"].shape == (3, 12, 16) and out["sem_seg"].shape == (12, 16)
    assert (out["height"], out["width"]) == (6, 8)


def test_mapper_errors(tmp_path):
    cfg = _cfg(num_classes=16)
    mapper = TextKDSemSegDatasetMapper(cfg, is_train=True)
    rec = _record(tmp_path)  # holds 20, which is >= 16
    with pytest.raises(ValueError, match=r"lab\.png.*\[20\]"):
        mapper(rec)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        mapper({"file_name": str(bad), "sem_seg_file_name": rec["sem_seg_file_name"]})
    with pytest.raises(FileNotFoundError, match="missing.png"):
        mapper({"file_name": rec["file_name"], "sem_seg_file_name": str(tmp_path / "missing.png")})
    with pytest.raises(ValueError, match="record says"):
        TextKDSemSegDatasetMapper(_cfg(), is_train=True)({**rec, "height": 1024, "width": 2048})
    cfg = _cfg()
    cfg.INPUT.CROP.TYPE = "relative_range"
    with pytest.raises(ValueError, match="relative_range"):
        TextKDSemSegDatasetMapper(cfg, is_train=True)


@pytest.mark.parametrize(
    "path,crop,iters",
    [
        ("Cityscapes/Base-Cityscapes.yaml", [512, 1024], 40000),
        ("PascalVOC/Base-PascalVOC.yaml", [512, 512], 40000),
        ("CamVid/Base-CamVid.yaml", [360, 360], 40000),
        ("ADE20K/Base-ADE20K.yaml", [512, 512], 40000),
        ("COCO-Stuff-164K/Base-COCO-Stuff-164K.yaml", [512, 512], 80000),
        ("COCO-Stuff-10K/Base-COCO-Stuff-10K.yaml", [512, 512], 40000),
    ],
)
def test_dataset_base_configs(path, crop, iters):
    cfg = get_cfg()
    add_textkd_config(cfg)
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", path))
    assert list(cfg.INPUT.CROP.SIZE) == crop and cfg.SOLVER.MAX_ITER == iters
    assert list(cfg.INPUT.SCALE_RANGE) == [0.5, 2.0] and cfg.SOLVER.IMS_PER_BATCH == 16
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        assert name in DatasetCatalog.list()
        assert len(meta.stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    mapper = TextKDSemSegDatasetMapper(cfg, is_train=True)
    assert mapper.crop_size == tuple(crop)


def test_a_new_dataset_is_one_spec(tmp_path, restore_default_registration):
    from textkd.data.datasets.catalog import DATASET_SPECS, DatasetSpec, register_dataset

    def load(root, split):
        return [{"file_name": os.path.join(root, split, "a.png"), "sem_seg_file_name": "a.png"}]

    def roots(root, split):
        return os.path.join(root, "imgs"), os.path.join(root, "labels", split)

    register_dataset(
        DatasetSpec("tiny_spec_test", ("a", "b"), load, roots, ["x", "y"], [(0,) * 3, (1,) * 3])
    )
    try:
        names = register.register_all(str(tmp_path))
        assert {"tiny_spec_test_a_sem_seg", "tiny_spec_test_b_sem_seg"} <= set(names)
        meta = MetadataCatalog.get("tiny_spec_test_b_sem_seg")
        assert meta.stuff_classes == ["x", "y"] and meta.evaluator_type == "sem_seg"
        assert meta.sem_seg_root == os.path.join(str(tmp_path), "labels", "b")
        assert DatasetCatalog.get("tiny_spec_test_a_sem_seg")[0]["file_name"].endswith("a/a.png")
    finally:
        DATASET_SPECS.pop("tiny_spec_test")
        for split in ("a", "b"):
            DatasetCatalog.remove(f"tiny_spec_test_{split}_sem_seg")
            MetadataCatalog.remove(f"tiny_spec_test_{split}_sem_seg")
