"""detectron2 evaluators: confusion-matrix evaluator vs detectron2's SemSegEvaluator, and the
official Cityscapes evaluation on a tiny fake Cityscapes tree."""

import json
import math
import os
import pickle
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.detectron2

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import SemSegEvaluator, print_csv_format  # noqa: E402
from textkd.d2.cityscapes_evaluation import (  # noqa: E402
    TextKDCityscapesSemSegEvaluator,
    train_id_to_label_id,
)
from textkd.d2.sem_seg_evaluation import TextKDSemSegEvaluator  # noqa: E402
from textkd.evaluation.metrics import compute_metrics, confusion_matrix  # noqa: E402

K = 4
CLASSES = ["sky", "road", "car", "person"]


def _register(records, classes=CLASSES, **meta):
    name = f"textkd_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=list(classes), ignore_label=255, **meta)
    return name


@pytest.fixture
def tiny(tmp_path):
    """6 label maps of different sizes; class 3 (person) never occurs in the ground truth."""
    rng = np.random.default_rng(0)
    records, gts = [], []
    for i in range(6):
        h, w = 12 + i, 17 - i
        gt = rng.integers(0, K - 1, size=(h, w)).astype(np.uint8)
        gt[rng.uniform(size=(h, w)) < 0.15] = 255
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(gt).save(path)
        records.append(
            {"file_name": f"/img/{i}.jpg", "sem_seg_file_name": path, "height": h, "width": w}
        )
        gts.append(gt)
    return _register(records), records, gts


def _scores(rng, h, w, gt=None, p_correct=0.0):
    """Random K×H×W scores; with gt, the argmax equals the ground truth on a fraction of
    pixels."""
    s = torch.from_numpy(rng.standard_normal((K, h, w)).astype(np.float32))
    if gt is not None:
        hit = (rng.uniform(size=(h, w)) < p_correct) & (gt != 255)
        cls = torch.from_numpy(np.where(gt == 255, 0, gt).astype(np.int64))
        boost = torch.zeros_like(s).scatter_(0, cls[None], 10.0)
        s = s + boost * torch.from_numpy(hit)[None]
    return s


def _reference_evaluator(name):
    """detectron2's own ``SemSegEvaluator``, runnable as the reference under NumPy 2.

    detectron2 releases before its NumPy 2 fix (the registry's 0.7.2 build among them) read label
    files with ``np.array(Image.open(f), copy=False, dtype=dtype)``, which NumPy 2 refuses
    ("Unable to avoid copy"). NumPy 1's ``copy=False`` meant "copy only if needed", i.e. exactly
    ``np.asarray``: where the installed reader fails that way, the evaluator is given that
    equivalent through its own ``sem_seg_loading_fn`` argument and the rest of its code runs
    unchanged. A detectron2 whose reader works (current main) is used as it is.
    """
    import tempfile

    from detectron2.evaluation import sem_seg_evaluation as d2_sem_seg

    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.png")
        Image.fromarray(np.zeros((2, 3), np.uint8)).save(probe)
        try:
            d2_sem_seg.load_image_into_numpy_array(probe, dtype=int)
            return SemSegEvaluator(name, distributed=False)
        except ValueError as e:
            if "copy" not in str(e):
                raise

    return SemSegEvaluator(name, distributed=False, sem_seg_loading_fn=_load_as_numpy1_did)


def _load_as_numpy1_did(filename, copy=False, dtype=None):
    """detectron2's label reader with NumPy 1's ``copy=False`` semantics (module level: the
    evaluator holding it is pickled by a test)."""
    from detectron2.utils.file_io import PathManager

    with PathManager.open(filename, "rb") as f:
        image = Image.open(f)
        return np.array(image, dtype=dtype) if copy else np.asarray(image, dtype=dtype)


def test_textkd_evaluator_uses_no_numpy2_breaking_detectron2_helper():
    """The project's evaluator reads labels itself (no ``load_image_into_numpy_array``)."""
    import textkd.d2.sem_seg_evaluation as ours

    assert "load_image_into_numpy_array" not in vars(ours)
    assert "copy=False" not in open(ours.__file__).read()


def _assert_same(ours, theirs):
    for key, value in theirs.items():
        if key.startswith(("BoundaryIoU", "min(IoU")):
            continue
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_matches_detectron2_sem_seg_evaluator(tiny):
    name, records, gts = tiny
    rng = np.random.default_rng(1)
    ours = TextKDSemSegEvaluator(name, distributed=False)
    ref = _reference_evaluator(name)
    ours.reset()
    ref.reset()
    for rec, gt in zip(records, gts):
        inputs = [{"file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]}]
        outputs = [{"sem_seg": _scores(rng, *gt.shape, gt, p_correct=0.6)}]
        ours.process(inputs, outputs)
        ref.process(inputs, outputs)
    res_ours = ours.evaluate()
    res_ref = ref.evaluate()
    assert list(res_ours) == ["sem_seg"]
    _assert_same(res_ours["sem_seg"], res_ref["sem_seg"])
    # the absent class is NaN for detectron2's convention and 0 in the all-class mean
    assert math.isnan(res_ours["sem_seg"]["IoU-person"])
    ious = [res_ours["sem_seg"][f"IoU-{c}"] for c in CLASSES[:3]]
    assert res_ours["sem_seg"]["mIoU_all"] == pytest.approx(sum(ious) / 4, rel=1e-6)
    assert 30 < res_ours["sem_seg"]["mIoU"] < 95
    print_csv_format(res_ours)


def test_mapper_label_used_when_sizes_match_else_file(tiny):
    name, records, gts = tiny
    rng = np.random.default_rng(2)
    outs = [_scores(rng, *gt.shape, gt, p_correct=0.5) for gt in gts]

    def run(make_input):
        ev = TextKDSemSegEvaluator(name, distributed=False)
        ev.reset()
        for rec, gt, out in zip(records, gts, outs):
            ev.process([make_input(rec, gt)], [{"sem_seg": out}])
        return ev.evaluate()["sem_seg"]

    from_file = run(lambda rec, gt: {"file_name": rec["file_name"]})
    same_size = run(
        lambda rec, gt: {"file_name": rec["file_name"], "sem_seg": torch.from_numpy(gt).long()}
    )
    # a resized mapper label (different size) must be ignored in favour of the file
    resized = run(
        lambda rec, gt: {
            "file_name": rec["file_name"],
            "sem_seg": torch.zeros(gt.shape[0] * 2, gt.shape[1] * 2, dtype=torch.long),
        }
    )
    # an explicit sem_seg_file_name in the input works without the dataset record
    explicit = run(lambda rec, gt: {"file_name": "unknown", **rec})
    for res in (same_size, resized, explicit):
        _assert_same(res, from_file)
    # and the mapper label really is used when the sizes match: a wrong label changes scores
    wrong = run(
        lambda rec, gt: {"file_name": rec["file_name"], "sem_seg": torch.zeros(gt.shape).long()}
    )
    assert wrong["mIoU"] != pytest.approx(from_file["mIoU"])


def test_multiple_prediction_keys(tiny, tmp_path):
    name, records, gts = tiny
    rng = np.random.default_rng(3)
    ours = TextKDSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    refs = {k: _reference_evaluator(name) for k in ("sem_seg", "zero")}
    ours.reset()
    for r in refs.values():
        r.reset()
    for rec, gt in zip(records, gts):
        good = _scores(rng, *gt.shape, gt, p_correct=0.8)
        bad = _scores(rng, *gt.shape, gt, p_correct=0.2)
        inputs = [{"file_name": rec["file_name"]}]
        ours.process(inputs, [{"sem_seg_zero_label": bad, "sem_seg": good, "other": good}])
        refs["sem_seg"].process(inputs, [{"sem_seg": good}])
        refs["zero"].process(inputs, [{"sem_seg": bad}])
    res = ours.evaluate()
    assert list(res) == ["sem_seg", "sem_seg_zero_label"]
    _assert_same(res["sem_seg"], refs["sem_seg"].evaluate()["sem_seg"])
    _assert_same(res["sem_seg_zero_label"], refs["zero"].evaluate()["sem_seg"])
    assert res["sem_seg"]["mIoU"] > res["sem_seg_zero_label"]["mIoU"]
    with open(tmp_path / "out" / "sem_seg_evaluation.json") as f:
        saved = json.load(f)
    assert saved["sem_seg"]["mIoU"] == pytest.approx(res["sem_seg"]["mIoU"])
    assert saved["sem_seg"]["IoU-person"] is None  # NaN written as null
    mats = np.load(tmp_path / "out" / "sem_seg_confusion.npz")
    assert mats["sem_seg"].sum() == sum(int((g != 255).sum()) for g in gts)


def test_state_does_not_grow_with_images(tiny):
    name, records, gts = tiny
    rng = np.random.default_rng(4)
    ours = TextKDSemSegEvaluator(name, distributed=False)
    ref = _reference_evaluator(name)
    ours.reset()
    ref.reset()

    def step(i):
        rec, gt = records[i % len(records)], gts[i % len(gts)]
        out = [{"sem_seg": _scores(rng, *gt.shape), "sem_seg_zero_label": _scores(rng, *gt.shape)}]
        ours.process([{"file_name": rec["file_name"]}], out)
        ref.process([{"file_name": rec["file_name"]}], out)

    def size(ev):
        return len(pickle.dumps(ev.__dict__))

    for i in range(3):
        step(i)
    ours_before, ref_before = size(ours), size(ref)
    for i in range(3, 30):
        step(i)
    assert size(ours) == ours_before
    assert size(ref) > ref_before  # detectron2's evaluator keeps per-image encodings
    assert sum(m.sum() for m in ours.matrices.values()) > 0


def test_errors(tiny, tmp_path):
    name, records, gts = tiny
    ev = TextKDSemSegEvaluator(name, distributed=False)
    ev.reset()
    with pytest.raises(ValueError, match="differs from label"):
        ev.process([{"file_name": records[0]["file_name"]}], [{"sem_seg": torch.zeros(K, 5, 5)}])
    with pytest.raises(KeyError, match="nope.jpg"):
        ev.process([{"file_name": "nope.jpg"}], [{"sem_seg": torch.zeros(K, 5, 5)}])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ev.process(
            [{"file_name": "x", "sem_seg_file_name": str(tmp_path / "missing.png")}],
            [{"sem_seg": torch.zeros(K, 5, 5)}],
        )
    with pytest.raises(ValueError, match="K=4"):
        ev.process([{"file_name": records[0]["file_name"]}], [{"sem_seg": torch.zeros(3, 5, 5)}])
    with pytest.raises(KeyError, match="sem_seg"):
        ev.process([{"file_name": records[0]["file_name"]}], [{"logits": torch.zeros(K, 5, 5)}])
    with pytest.raises(ValueError, match="num_classes=5"):
        TextKDSemSegEvaluator(name, num_classes=5)
    assert ev.evaluate() == {}  # nothing processed


# ---------------------------------------------------------------------------- Cityscapes
# label ids: 7 road, 11 building, 21 vegetation, 23 sky, 24 person, 26 car; 0 and 4 ignored
CS_IDS = [7, 11, 21, 23, 24, 26]
CS_TRAIN = {7: 0, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13}


def _fake_cityscapes(tmp_path, rng, with_instances=True):
    root = tmp_path / "cityscapes"
    records = []
    for city, frame in (("aachen", "000000_000019"), ("bremen", "000001_000019")):
        img_dir = root / "leftImg8bit" / "val" / city
        gt_dir = root / "gtFine" / "val" / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        stem = f"{city}_{frame}"
        ids = rng.choice(CS_IDS, size=(64, 128)).astype(np.uint8)
        ids[:4] = 0  # unlabeled
        ids[:, :3] = 4  # static
        inst = ids.astype(np.uint16)
        inst[ids == 26] = 26000
        inst[(ids == 26) & (np.arange(128)[None] > 64)] = 26001
        inst[ids == 24] = 24000
        train = np.full(ids.shape, 255, np.uint8)
        for lid, tid in CS_TRAIN.items():
            train[ids == lid] = tid
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(
            img_dir / f"{stem}_leftImg8bit.png"
        )
        Image.fromarray(ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(train).save(gt_dir / f"{stem}_gtFine_labelTrainIds.png")
        if with_instances:
            Image.fromarray(inst).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
        records.append(
            {
                "file_name": str(img_dir / f"{stem}_leftImg8bit.png"),
                "sem_seg_file_name": str(gt_dir / f"{stem}_gtFine_labelTrainIds.png"),
                "height": 64,
                "width": 128,
            }
        )
    return root, records


def _cs_classes():
    from cityscapesscripts.helpers.labels import labels

    return [lab.name for lab in sorted(labels, key=lambda x: x.trainId) if 0 <= lab.trainId < 19]


def _run_cityscapes(name, records, preds):
    ev = TextKDCityscapesSemSegEvaluator(name, distributed=False)
    cm = TextKDSemSegEvaluator(name, distributed=False)
    ev.reset()
    cm.reset()
    for rec, pred in zip(records, preds):
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), 19)
        out = [{"sem_seg": scores.permute(2, 0, 1).float()}]
        ev.process([{"file_name": rec["file_name"]}], out)
        cm.process([{"file_name": rec["file_name"]}], out)
    tmp = ev._tmp
    assert len(os.listdir(tmp)) == len(records)  # one label-id PNG per image
    res = ev.evaluate()
    assert not os.path.exists(tmp)  # the temporary predictions are removed
    return res, cm.evaluate()["sem_seg"]


def test_train_id_to_label_id():
    out = train_id_to_label_id(np.array([[0, 10], [13, 18]]))
    np.testing.assert_array_equal(out, [[7, 23], [26, 33]])
    with pytest.raises(ValueError):
        train_id_to_label_id(np.array([19]))


@pytest.mark.parametrize("use_gt_dir", [True, False])
def test_cityscapes_perfect_prediction(tmp_path, use_gt_dir):
    rng = np.random.default_rng(5)
    root, records = _fake_cityscapes(tmp_path, rng)
    meta = {"gt_dir": str(root / "gtFine" / "val")} if use_gt_dir else {}
    name = _register(records, _cs_classes(), evaluator_type="cityscapes_sem_seg", **meta)
    preds = [np.asarray(Image.open(r["sem_seg_file_name"])).copy() for r in records]
    for p in preds:
        p[p == 255] = 5  # anything on ignored pixels
    res, cm = _run_cityscapes(name, records, preds)
    cs = res["cityscapes_sem_seg"]
    assert cs["IoU"] == pytest.approx(100.0)
    assert cs["iIoU"] == pytest.approx(100.0)
    assert cs["IoU_sup"] == pytest.approx(100.0)
    for tid in CS_TRAIN.values():
        assert cs[f"IoU-{_cs_classes()[tid]}"] == pytest.approx(100.0)
    assert math.isnan(cs["IoU-wall"])  # neither in the ground truth nor predicted
    assert cm["mIoU"] == pytest.approx(100.0)


def test_cityscapes_noisy_prediction_matches_confusion_matrix(tmp_path):
    rng = np.random.default_rng(6)
    root, records = _fake_cityscapes(tmp_path, rng, with_instances=False)
    name = _register(
        records, _cs_classes(), evaluator_type="cityscapes_sem_seg", gt_dir=str(root / "gtFine")
    )
    # gt_dir points one level too high: the official files are not found
    with pytest.raises(FileNotFoundError, match="gtFine_labelIds"):
        _run_cityscapes(name, records, [np.zeros((64, 128), np.uint8)] * 2)

    name = _register(records, _cs_classes(), gt_dir=str(root / "gtFine" / "val"))
    present = sorted(CS_TRAIN.values())
    preds = []
    for rec in records:
        gt = np.asarray(Image.open(rec["sem_seg_file_name"]))
        pred = np.where(rng.uniform(size=gt.shape) < 0.6, gt, rng.choice(present, gt.shape))
        pred[gt == 255] = rng.choice(present)
        preds.append(pred.astype(np.uint8))
    res, cm = _run_cityscapes(name, records, preds)
    cs = res["cityscapes_sem_seg"]
    assert math.isnan(cs["iIoU"])  # no instanceIds files
    assert cs["IoU"] == pytest.approx(cm["mIoU"], rel=1e-9)
    for tid in present:
        cls = _cs_classes()[tid]
        assert cs[f"IoU-{cls}"] == pytest.approx(cm[f"IoU-{cls}"], rel=1e-9)

    # a class predicted but absent from the ground truth: cityscapes averages it in as 0,
    # detectron2's convention skips it
    preds[0][:10, 40:60] = 18  # bicycle
    res, cm = _run_cityscapes(name, records, preds)
    cs = res["cityscapes_sem_seg"]
    ious = [cm[f"IoU-{_cs_classes()[t]}"] for t in present]
    assert cs["IoU-bicycle"] == 0.0
    assert cs["IoU"] == pytest.approx(sum(ious) / (len(present) + 1), rel=1e-9)
    assert cm["mIoU"] == pytest.approx(sum(ious) / len(present), rel=1e-9)
    # and the same confusion matrix written by hand
    conf = sum(
        confusion_matrix(p, np.asarray(Image.open(r["sem_seg_file_name"])), 19)
        for p, r in zip(preds, records)
    )
    assert compute_metrics(conf)["mIoU"] == pytest.approx(cm["mIoU"])
