"""One setting, ``MODEL.SEM_SEG_HEAD.ALIGN_CORNERS`` (``Segmentor.align_corners``), governs every
bilinear resize of a model (issue 12): heads, task loss, final upsampling, OCR regions and the
student -> teacher resize of the distillation terms; and CIRKD's ImageNet ResNet files load as
``MODEL.SEG_BACKBONE.PRETRAINED`` as they are, with a check of the input normalisation.
Framework-free (no detectron2)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from textkd.deploy import DeployableSegmentor
from textkd.distill.base import TermContext
from textkd.distill.losses import pixel_kd
from textkd.distill.terms import Distiller
from textkd.distill.text_plugins import text_probe_ce
from textkd.models.backbones import CIRKD_STEM, build_backbone
from textkd.models.convert import CIRKD_PIXEL_MEAN
from textkd.models.heads import DeepLabV3Head
from textkd.models.losses import segmentation_losses
from textkd.models.outputs import SegOutput
from textkd.models.segmentor import Segmentor, build_segmentor
from textkd.validate import ConfigError, validate_config

K = 5


def _segmentor(head: str, align_corners: bool, seed: int = 0) -> Segmentor:
    torch.manual_seed(seed)
    return build_segmentor(
        head=head,
        backbone="resnet18v1s",
        num_classes=K,
        channels=16,
        aux_channels=8,
        aspp_dilations=(1, 2, 3),
        align_corners=align_corners,
    ).eval()


@pytest.mark.parametrize("head", ["deeplabv3", "pspnet", "ocrnet"])
def test_build_segmentor_threads_the_setting_to_head_and_segmentor(head):
    for value in (True, False):
        seg = _segmentor(head, value)
        assert seg.align_corners is value
        assert seg.head.align_corners is value
    ocr = _segmentor("ocrnet", True)
    assert ocr.head.spatial_gather.align_corners is True
    aspp = _segmentor("deeplabv3", True).head.aspp
    assert aspp.b4.align_corners is True


def test_segmentor_refuses_a_head_with_another_setting():
    seg = _segmentor("deeplabv3", False)
    head = DeepLabV3Head(512, K, channels=16, dilations=(1, 2, 3), align_corners=True)
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.ALIGN_CORNERS"):
        Segmentor(seg.backbone, head, seg.aux_head, align_corners=False)


def test_export_and_loss_upsample_with_the_segmentor_setting():
    torch.manual_seed(1)
    image = torch.rand(1, 3, 40, 56) * 255
    targets = torch.randint(0, K, (1, 40, 56))
    outs = {}
    for value in (True, False):
        seg = _segmentor("deeplabv3", value)
        deploy = DeployableSegmentor(seg, CIRKD_PIXEL_MEAN, (1.0, 1.0, 1.0))
        with torch.no_grad():
            logits = seg(image - torch.tensor(CIRKD_PIXEL_MEAN).view(1, 3, 1, 1)).logits
            up = deploy(image)
        want = F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=value)
        torch.testing.assert_close(up, want, rtol=1e-5, atol=1e-5)
        out = SegOutput(logits=logits, feature=logits)
        loss = segmentation_losses(out, targets, align_corners=seg.align_corners)["loss_sem_seg"]
        want_loss = F.cross_entropy(want, targets)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        outs[value] = up
    assert not torch.allclose(outs[True], outs[False], atol=1e-3)


def test_distillation_resizes_the_student_with_its_setting():
    torch.manual_seed(2)
    s = torch.randn(2, K, 5, 7)
    t = torch.randn(2, K, 9, 13)
    terms = {"kd": {"METHOD": "kd", "INPUT": "logits", "WEIGHT": 1.0, "TEMPERATURE": 1.0}}
    losses = {}
    for value in (True, False):
        ctx = TermContext(
            num_classes=K,
            student_channels={"logits": K},
            teacher_channels={"logits": K},
            align_corners=value,
        )
        d = Distiller.from_config(terms, ctx)
        got = d(SegOutput(logits=s, feature=s), SegOutput(logits=t, feature=t))["loss_kd"]
        up = F.interpolate(s, size=(9, 13), mode="bilinear", align_corners=value)
        torch.testing.assert_close(got, pixel_kd(up, t))
        losses[value] = got
    assert abs(float(losses[True]) - float(losses[False])) > 1e-5
    labels = torch.randint(0, K, (2, 18, 26))
    ce = {v: text_probe_ce(s, labels, align_corners=v) for v in (True, False)}
    want = F.cross_entropy(
        F.interpolate(s, size=(18, 26), mode="bilinear", align_corners=True), labels
    )
    torch.testing.assert_close(ce[True], want)
    assert abs(float(ce[True]) - float(ce[False])) > 1e-5


# --------------------------------------------------------------------------- CIRKD ImageNet files


def _cirkd_imagenet_file(tmp_path, seed: int = 3) -> tuple[str, dict[str, torch.Tensor]]:
    """A backbone state dict under CIRKD's ResNetV1b names (deep stem conv1/bn1/conv2/bn2/conv3/
    bn3, plus the ImageNet classifier fc.*), as CIRKD's resnet18-imagenet.pth."""
    torch.manual_seed(seed)
    ref = build_backbone("resnet18v1s", output_stride=32)
    for p in ref.parameters():
        p.data.normal_()
    inverse = {v: k for k, v in CIRKD_STEM.items()}
    state = {}
    for key, value in ref.state_dict().items():
        for ours, theirs in sorted(inverse.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(ours + "."):
                key = theirs + key[len(ours) :]
                break
        state[key] = value.clone()
    assert {"conv1.weight", "conv2.weight", "conv3.weight", "bn3.weight"} <= set(state)
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    path = str(tmp_path / "resnet18-imagenet.pth")
    torch.save(state, path)
    return path, ref.state_dict()


def test_pretrained_reads_cirkd_imagenet_file_as_it_is(tmp_path):
    path, want = _cirkd_imagenet_file(tmp_path)
    bb = build_backbone("resnet18v1s", pretrained=path)
    assert bb.pretrained_layout == "cirkd"
    got = bb.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    lad = build_backbone("resnet18v1s", pretrained=path, in_chans=4)  # first conv adapted
    torch.testing.assert_close(lad.state_dict()["conv1.0.weight"][:, :3], want["conv1.0.weight"])
    with pytest.raises(ValueError, match="resnet18v1s"):
        build_backbone("resnet18d", pretrained=path)


def _train_cfg(path: str, fmt: str, mean, std) -> dict:
    return {
        "MODEL": {
            "PIXEL_MEAN": list(mean),
            "PIXEL_STD": list(std),
            "SEG_BACKBONE": {"PRETRAINED": path, "NORM": "BN"},
        },
        "INPUT": {"FORMAT": fmt},
        "SOLVER": {"IMS_PER_BATCH": 16},
    }


def test_validate_refuses_cirkd_weights_with_another_normalisation(tmp_path):
    path, _ = _cirkd_imagenet_file(tmp_path)
    good = _train_cfg(path, "BGR", CIRKD_PIXEL_MEAN, (1.0, 1.0, 1.0))
    validate_config(good, "train")
    imagenet = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    for fmt, mean, std in (
        ("RGB", *imagenet),
        ("RGB", CIRKD_PIXEL_MEAN, (1.0, 1.0, 1.0)),
        ("BGR", CIRKD_PIXEL_MEAN, imagenet[1]),
    ):
        with pytest.raises(ConfigError) as e:
            validate_config(_train_cfg(path, fmt, mean, std), "train")
        msg = str(e.value)
        assert "MODEL.SEG_BACKBONE.PRETRAINED" in msg and 'INPUT.FORMAT "BGR"' in msg
        assert "MODEL.PIXEL_STD [1.0, 1.0, 1.0]" in msg
    # a timm-layout file carries no statistics: not checked
    other = str(tmp_path / "timm.pth")
    torch.save(build_backbone("resnet18v1s", output_stride=32).state_dict(), other)
    validate_config(_train_cfg(other, "RGB", *imagenet), "train")
    evaluation = copy.deepcopy(_train_cfg(path, "RGB", *imagenet))
    evaluation["TEXTKD"] = {"ALLOW_RANDOM_WEIGHTS": True}
    validate_config(evaluation, "eval")  # checked for training only
