"""The built-in synthetic dataset (framework-free)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from textkd.data import synthetic
from textkd.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    ensure_synthetic,
    load_synthetic,
    render_scene,
)
from textkd.evaluation.metrics import compute_metrics, confusion_matrix

K = len(SYNTHETIC_CLASSES)


def _files(base):
    out = {}
    for dirpath, _, names in os.walk(base):
        for n in names:
            if n.endswith((".png", ".json")):
                p = os.path.join(dirpath, n)
                with open(p, "rb") as f:
                    out[os.path.relpath(p, base)] = f.read()
    return out


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    """The default train split (300 images of 128×128), generated once for this module."""
    root = str(tmp_path_factory.mktemp("synthetic_default"))
    return root, load_synthetic(root, "train")


def _read(records):
    imgs = np.stack([np.asarray(Image.open(r["file_name"])) for r in records])
    labs = np.stack([np.asarray(Image.open(r["sem_seg_file_name"])) for r in records])
    return imgs, labs


def test_class_names_and_colours():
    assert 6 <= K <= 10
    assert len(set(SYNTHETIC_CLASSES)) == K
    assert all(n.replace(" ", "").isalpha() and n == n.lower() for n in SYNTHETIC_CLASSES)
    assert len(SYNTHETIC_COLORS) == K and len(set(SYNTHETIC_COLORS)) == K
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in SYNTHETIC_COLORS)


def test_default_train_split(train_split):
    root, records = train_split
    assert len(records) == 300
    base = os.path.join(root, "textkd_synthetic")
    for r in records[:3] + records[-3:]:
        assert set(r) == {"file_name", "sem_seg_file_name", "height", "width"}
        assert r["file_name"].startswith(os.path.join(base, "images", "train"))
        assert r["sem_seg_file_name"].startswith(os.path.join(base, "labels", "train"))
        assert (r["height"], r["width"]) == (128, 128)
    imgs, labs = _read(records)
    assert imgs.shape == (300, 128, 128, 3) and imgs.dtype == np.uint8
    assert labs.shape == (300, 128, 128) and labs.dtype == np.uint8
    values = set(np.unique(labs).tolist())
    assert values <= set(range(K)) | {255}
    # every class occurs, in a good share of the images, and ignore stays a small minority
    per_image = np.stack([(labs == k).any(axis=(1, 2)) for k in range(K)], 1)
    assert per_image.all(axis=0).sum() >= 2  # sky and grass-like background everywhere
    assert (per_image.mean(axis=0) > 0.2).all(), per_image.mean(axis=0)
    ignore = (labs == 255).mean()
    assert 0.001 < ignore < 0.03
    with open(os.path.join(base, "manifest_train.json")) as f:
        manifest = json.load(f)
    assert manifest["num_images"] == 300 and manifest["size"] == 128 and manifest["seed"] == 0


def test_colour_alone_is_not_enough(train_split):
    """The best per-pixel colour lookup (a 4096-bin RGB histogram, argmax class per bin, fit
    on train and scored on val) must stay far from solving the task."""
    root, records = train_split
    imgs, labs = _read(records)
    vimgs, vlabs = _read(load_synthetic(root, "val"))

    def q(x):
        return (x[..., 0] // 16).astype(int) * 256 + (x[..., 1] // 16) * 16 + x[..., 2] // 16

    keep = labs != 255
    hist = np.zeros((4096, K))
    np.add.at(hist, (q(imgs)[keep], labs[keep].astype(int)), 1)
    pred = hist.argmax(1)[q(vimgs)]
    res = compute_metrics(confusion_matrix(pred, vlabs, K))
    assert res["mIoU"] < 50, res["mIoU"]
    assert res["pACC"] < 85, res["pACC"]


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = ensure_synthetic(str(tmp_path / "a"), "val", num_images=6, size=64, seed=3)
    b = ensure_synthetic(str(tmp_path / "b"), "val", num_images=6, size=64, seed=3)
    fa, fb = _files(a), _files(b)
    assert len(fa) == 6 * 2 + 1
    assert fa == fb  # byte-identical
    c = ensure_synthetic(str(tmp_path / "c"), "val", num_images=6, size=64, seed=4)
    assert _files(c)["images/val/00000.png"] != fa["images/val/00000.png"]
    d = ensure_synthetic(str(tmp_path / "c"), "train", num_images=6, size=64, seed=3)
    assert _files(d)["images/train/00000.png"] != fa["images/val/00000.png"]
    # image i depends only on (seed, split, i): a longer split starts with the same images
    e = ensure_synthetic(str(tmp_path / "e"), "val", num_images=8, size=64, seed=3)
    assert _files(e)["labels/val/00005.png"] == fa["labels/val/00005.png"]


def test_render_scene_direct():
    img, lab = render_scene(np.random.default_rng(0), size=48)
    assert img.shape == (48, 48, 3) and lab.shape == (48, 48)
    img2, lab2 = render_scene(np.random.default_rng(0), size=48)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    with pytest.raises(ValueError, match="at least 32"):
        render_scene(np.random.default_rng(0), size=16)


def test_regenerates_when_parameters_or_version_change(tmp_path, monkeypatch):
    root = str(tmp_path)
    recs = load_synthetic(root, "val", num_images=4, size=64)
    assert len(recs) == 4 and Image.open(recs[0]["file_name"]).size == (64, 64)
    before = os.path.getmtime(recs[0]["file_name"])
    # unchanged parameters: nothing is rewritten
    load_synthetic(root, "val", num_images=4, size=64)
    assert os.path.getmtime(recs[0]["file_name"]) == before
    recs = load_synthetic(root, "val", num_images=3, size=48)
    assert len(recs) == 3 and Image.open(recs[0]["file_name"]).size == (48, 48)
    assert not os.path.exists(os.path.join(root, "textkd_synthetic", "images", "val", "00003.png"))
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    base = ensure_synthetic(root, "val", num_images=3, size=48)
    with open(os.path.join(base, "manifest_val.json")) as f:
        assert json.load(f)["version"] == synthetic.GENERATOR_VERSION
    # a deleted file makes the split incomplete: it is regenerated
    os.remove(recs[1]["sem_seg_file_name"])
    ensure_synthetic(root, "val", num_images=3, size=48)
    assert os.path.exists(recs[1]["sem_seg_file_name"])
    assert not [n for n in os.listdir(base) if n.startswith(".tmp")]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="test"):
        ensure_synthetic(str(tmp_path), "test")
    with pytest.raises(ValueError, match="num_images"):
        ensure_synthetic(str(tmp_path), "train", num_images=0)
    with pytest.raises(ValueError, match="size"):
        load_synthetic(str(tmp_path), "train", size=8)


def test_concurrent_ensure_leaves_a_complete_dataset(tmp_path):
    """Two processes (like two DDP ranks) ask for the same split at once; both must return
    only when the split is complete, and it is generated once."""
    root = str(tmp_path)
    script = textwrap.dedent(f"""
        import os, sys
        from textkd.data.synthetic import ensure_synthetic, _is_complete, _params
        base = ensure_synthetic({root!r}, "train", num_images=120, size=64, seed=1)
        names = sorted(os.listdir(os.path.join(base, "labels", "train")))
        ok = _is_complete(base, "train", _params("train", 120, 64, 1)) and len(names) == 120
        sys.stdout.write("OK" if ok else "INCOMPLETE")
        """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
        assert out.decode() == "OK", err.decode()
    base = os.path.join(root, "textkd_synthetic")
    assert not [n for n in os.listdir(base) if n.startswith(".tmp")]
    assert len(os.listdir(os.path.join(base, "images", "train"))) == 120
    # and it equals a single-process generation
    single = ensure_synthetic(str(tmp_path / "single"), "train", num_images=120, size=64, seed=1)
    assert _files(single) == _files(base)
