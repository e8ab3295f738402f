"""A converted CIRKD model evaluated through ``tools/train_net.py --eval-only`` equals CIRKD's own
evaluation of the same images (issue 12).

The expected numbers come from CIRKD's code (``tests/fixtures/make_cirkd_eval_fixture.py``, run
once beside the reference; ``tests/data/reference/cirkd_eval.npz``): CIRKD's DeepLabV3-R18 and
PSPNet-R18 with weights drawn from each (key, shape), evaluated on two synthetic CamVid images by
CIRKD's ``eval.py`` path (BGR minus the Caffe mean, whole image, logits upsampled with
``align_corners=True``). Here the same CIRKD state dict is rebuilt from the stored key/shape
list, written as a CIRKD ``.pth``, converted with ``tools/convert_checkpoint.py``, and evaluated
with the repository's CamVid recipe (``configs/CamVid/*_r18_baseline_40k_bs16.yaml``, its
BGR / Caffe-mean / ALIGN_CORNERS settings unchanged; its ImageNet file is a CIRKD-layout
``resnet18-imagenet.pth`` read as it is) on the same images written as a CamVid split:

* ``camvid_test_sem_seg`` holds the real labels: TextKD's ``mIoU_all`` (CIRKD's convention) must
  equal CIRKD's mIoU to 1e-6;
* ``camvid_val_sem_seg`` holds the same images labelled with CIRKD's predictions, so TextKD's
  pixel accuracy there is the share of pixels where both predict the same class (>= 99.99 %).

A control run with ``ALIGN_CORNERS False`` must disagree on more pixels than that, so the test
sees the setting. The in-process test compares the logits themselves (statistics of the
upsampled scores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _cirkd_eval_data import (
    NUM_CLASSES,
    array_digest,
    synthetic_images,
    synthetic_labels,
    write_camvid,
)
from _d2_helpers import ROOT, load_cfg, one_thread, run_tool, subprocess_env
from _reference_weights import deterministic_state_dict

pytestmark = pytest.mark.detectron2

FIXTURE = Path(__file__).resolve().parent / "data" / "reference" / "cirkd_eval.npz"
RECIPES = {
    "deeplabv3_r18": "configs/CamVid/deeplabv3_r18_baseline_40k_bs16.yaml",
    "pspnet_r18": "configs/CamVid/pspnet_r18_baseline_40k_bs16.yaml",
}
MIN_AGREEMENT = 0.9999


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    data = dict(np.load(FIXTURE))
    images, labels = synthetic_images(2), synthetic_labels(2)
    assert array_digest(images) == str(data["images_sha256"]), "the image generator drifted"
    assert array_digest(labels) == str(data["labels_sha256"]), "the label generator drifted"
    data["images"], data["labels"] = images, labels
    return data


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Per model: the CIRKD .pth, its conversion (by the tool), a CIRKD-layout ImageNet
    backbone file and a dataset root with the two CamVid splits."""
    tmp = tmp_path_factory.mktemp("cirkd_eval")
    out = {}
    for key in RECIPES:
        shapes = json.loads(str(fixture[f"{key}_key_shapes"]))
        state = deterministic_state_dict(shapes)
        src = tmp / f"{key}_cirkd.pth"
        torch.save(state, src)
        # CIRKD's ImageNet file layout: the backbone's keys without "pretrained."
        backbone = {
            k[len("pretrained.") :]: v for k, v in state.items() if k.startswith("pretrained.")
        }
        imagenet = tmp / f"{key}_resnet18-imagenet.pth"
        torch.save(backbone, imagenet)
        root = tmp / f"{key}_datasets"
        write_camvid(str(root), "test", fixture["images"], fixture["labels"])
        write_camvid(str(root), "val", fixture["images"], fixture[f"{key}_pred"])
        dst = tmp / f"{key}_textkd.pth"
        env = subprocess_env(str(root), PYTHONPATH=str(ROOT / "projects" / "TextKD"))
        proc = run_tool("convert_checkpoint.py", [src, dst], env)
        assert "ALIGN_CORNERS: True" in proc.stdout and 'FORMAT: "BGR"' in proc.stdout
        out[key] = {"weights": str(dst), "imagenet": str(imagenet), "root": str(root)}
    return out


def _eval_opts(files: dict[str, str], output_dir: str) -> list[str]:
    return [
        "MODEL.WEIGHTS",
        files["weights"],
        "MODEL.SEG_BACKBONE.PRETRAINED",
        files["imagenet"],
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.TEST",
        '("camvid_test_sem_seg", "camvid_val_sem_seg")',
        "DATALOADER.NUM_WORKERS",
        "0",
        "TEST.VIS_IMAGES",
        "0",
        "OUTPUT_DIR",
        output_dir,
    ]


def _run_eval(files: dict[str, str], recipe: str, output_dir: Path, *extra: str) -> dict:
    env = subprocess_env(files["root"], PYTHONPATH=str(ROOT / "projects" / "TextKD"))
    args = ["--eval-only", "--config-file", recipe, *_eval_opts(files, str(output_dir)), *extra]
    run_tool("train_net.py", args, env)
    inference = output_dir / "inference"
    test = json.loads((inference / "camvid_test_sem_seg" / "sem_seg_evaluation.json").read_text())
    conf = np.load(inference / "camvid_val_sem_seg" / "sem_seg_confusion.npz")["sem_seg"]
    return {"test": test["sem_seg"], "agreement": np.trace(conf) / conf.sum(), "pixels": conf.sum()}


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(RECIPES))
def test_eval_only_equals_cirkd_evaluation(key, fixture, converted, tmp_path):
    res = _run_eval(converted[key], RECIPES[key], tmp_path / "out")
    assert res["pixels"] == fixture[f"{key}_pred"].size
    print(
        f"{key}: TextKD and CIRKD predict the same class on {100 * res['agreement']:.4f} % "
        f"of {res['pixels']} pixels"
    )
    assert res["agreement"] >= MIN_AGREEMENT
    assert res["test"]["mIoU_all"] / 100 == pytest.approx(float(fixture[f"{key}_miou"]), abs=1e-6)
    # (CIRKD's pixAcc is not comparable: its batch_pix_accuracy takes the argmax of the logits
    # truncated to integers, output.long(); the mIoU uses the plain argmax)


@pytest.mark.slow
def test_align_corners_false_disagrees_with_cirkd(fixture, converted, tmp_path):
    """The control: the same model resizing with align_corners=False predicts another class on
    more pixels than the equality test allows."""
    key = "deeplabv3_r18"
    res = _run_eval(
        converted[key], RECIPES[key], tmp_path / "out", "MODEL.SEM_SEG_HEAD.ALIGN_CORNERS", "False"
    )
    print(f"{key} with ALIGN_CORNERS False: {100 * res['agreement']:.4f} % agreement")
    assert res["agreement"] < MIN_AGREEMENT


@pytest.mark.parametrize("key", sorted(RECIPES))
def test_logits_match_cirkd(key, fixture, converted, tmp_path):
    """In-process: the recipe's model on the same images gives CIRKD's upsampled logits
    (per-image mean, std, min, max) and argmax maps."""
    from textkd.engine import TextKDCheckpointer, Trainer

    files = converted[key]
    cfg = load_cfg(str(ROOT / RECIPES[key]), _eval_opts(files, str(tmp_path)))
    with one_thread():
        model = Trainer.build_model(cfg)
        TextKDCheckpointer(model).load(files["weights"])
        model.eval()
        for i, img in enumerate(fixture["images"]):
            bgr = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1)
            with torch.no_grad():
                scores = model([{"image": bgr, "height": img.shape[0], "width": img.shape[1]}])
            scores = scores[0]["sem_seg"].double()
            assert scores.shape == (NUM_CLASSES, *img.shape[:2])
            stats = [scores.mean(), scores.std(), scores.min(), scores.max()]
            np.testing.assert_allclose(
                [float(s) for s in stats], fixture[f"{key}_logit_stats"][i], rtol=1e-4, atol=1e-4
            )
            pred = scores.argmax(0).numpy()
            assert (pred == fixture[f"{key}_pred"][i]).mean() >= MIN_AGREEMENT


def test_fixture_is_small_and_complete(fixture):
    assert os.path.getsize(FIXTURE) < 200_000
    for key in RECIPES:
        assert fixture[f"{key}_pred"].shape == fixture["labels"].shape
        assert len(np.unique(fixture[f"{key}_pred"])) > 1  # not a constant prediction
