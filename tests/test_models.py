"""Framework-free tests of the TextKD backbones, heads, segmentor and task loss (no detectron2)."""

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from textkd.models.backbones import (
    available_backbones,
    build_backbone,
    freeze_batchnorm,
    load_pretrained,
)
from textkd.models.heads import AuxFCNHead, DeepLabV3Head, FCNHead, PSPHead
from textkd.models.losses import segmentation_losses, upsample_logits
from textkd.models.outputs import SegOutput
from textkd.models.segmentor import (
    HEADS,
    Segmentor,
    build_head,
    build_segmentor,
    register_head,
)

K = 5
SIZE = 32

# channels of res2..res5 (torchvision / timm reference widths)
RESNET18_CH = {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
RESNET50_CH = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
MOBILENETV2_CH = {"res2": 24, "res3": 32, "res4": 96, "res5": 320}
# head widths of METHODS.md / CIRKD: DeepLabV3 256 (R50/101) or 128 (R18, MNv2), PSP 512 or 128
HEAD_WIDTH = {
    ("deeplabv3", "large"): 256,
    ("deeplabv3", "small"): 128,
    ("pspnet", "large"): 512,
    ("pspnet", "small"): 128,
    ("fcn", "large"): 512,
    ("fcn", "small"): 128,
}


def _channels(arch):
    if arch.startswith("resnet18"):
        return RESNET18_CH, "small"
    if arch == "mobilenetv2":
        return MOBILENETV2_CH, "small"
    return RESNET50_CH, "large"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


COMBOS = [
    (arch, head, os_)
    for arch in ("resnet18", "resnet18d", "resnet18v1s", "mobilenetv2")
    for head in ("deeplabv3", "pspnet", "fcn")
    for os_ in (8, 16)
] + [
    ("resnet101v1s", "deeplabv3", 8),
    ("resnet50d", "pspnet", 16),
]

_BACKBONES = {}


def _cached_backbone(arch, os_):
    """One randomly initialised backbone per (arch, output stride), shared by the shape tests."""
    if (arch, os_) not in _BACKBONES:
        _BACKBONES[(arch, os_)] = build_backbone(arch, output_stride=os_)
    return _BACKBONES[(arch, os_)]


@pytest.mark.parametrize("arch,head,os_", COMBOS)
def test_segmentor_shapes(arch, head, os_):
    bb = _cached_backbone(arch, os_)
    main = build_head(head, in_channels=bb.out_channels["res5"], num_classes=K)
    aux = AuxFCNHead(bb.out_channels["res4"], K)
    model = Segmentor(bb, main, aux).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    stage_ch, size = _channels(arch)
    width = HEAD_WIDTH[(head, size)]
    h = SIZE // os_
    assert out.logits.shape == (2, K, h, h)
    assert out.feature.shape == (2, width, h, h)
    h_aux = SIZE // min(16, os_)
    assert out.aux_logits.shape == (2, K, h_aux, h_aux)
    assert model.output_channels == {"logits": K, "feature": width, "aux_logits": K}
    assert model.num_classes == K
    assert model.output_stride == os_
    # backbone bookkeeping agrees with the actual feature maps
    with torch.no_grad():
        feats = bb(x)
    assert set(feats) == {"res2", "res3", "res4", "res5"}
    expected_strides = {"res2": 4, "res3": 8, "res4": min(16, os_), "res5": os_}
    assert bb.out_strides == expected_strides
    assert bb.out_channels == stage_ch
    for name, f in feats.items():
        assert f.shape[1] == stage_ch[name]
        assert SIZE // f.shape[-1] == expected_strides[name]


@pytest.mark.parametrize("arch,head", [("resnet18d", "deeplabv3"), ("mobilenetv2", "pspnet")])
def test_build_segmentor_end_to_end(arch, head):
    model = build_segmentor(head=head, backbone=arch, num_classes=K).train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.logits.shape == (2, K, SIZE // 8, SIZE // 8)
    assert out.feature.shape[1] == HEAD_WIDTH[(head, "small")]
    assert out.aux_logits.shape == out.logits.shape
    # aux_channels default: CIRKD's width, a quarter of the aux head's input (res4)
    aux_in = model.backbone.out_channels["res4"]
    assert model.aux_head.block[0].out_channels == aux_in // 4


def test_all_archs_listed():
    expected = {f"resnet{d}{v}" for d in (18, 50, 101) for v in ("", "d", "v1s")} | {"mobilenetv2"}
    assert expected <= set(available_backbones())


def test_aux_only_when_asked():
    model = build_segmentor(backbone="resnet18", num_classes=K).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).aux_logits is None
    assert model(x, with_aux=True).aux_logits.shape == (2, K, 4, 4)
    model.train()
    assert model(x).aux_logits is not None
    assert model(x, with_aux=False).aux_logits is None
    no_aux = build_segmentor(backbone="resnet18", num_classes=K, aux=False).train()
    assert no_aux(x, with_aux=True).aux_logits is None
    assert "aux_logits" not in no_aux.output_channels
    assert no_aux.aux_head is None


def test_aux_channels_cirkd_width():
    model = build_segmentor(backbone="resnet18", num_classes=K, aux_channels=None)
    assert model.aux_head.block[0].out_channels == 256 // 4  # res4 has 256 channels


def test_stem_variants():
    v1s = build_backbone("resnet18v1s")
    shapes = {k: tuple(v.shape) for k, v in v1s.state_dict().items()}
    # CIRKD v1s deep stem: 3->64 s2, 64->64, 64->128, then BN(128); no avg-down
    assert shapes["conv1.0.weight"] == (64, 3, 3, 3)
    assert shapes["conv1.3.weight"] == (64, 64, 3, 3)
    assert shapes["conv1.6.weight"] == (128, 64, 3, 3)
    assert shapes["bn1.weight"] == (128,)
    assert isinstance(v1s.layer2[0].downsample[0], nn.Conv2d)
    assert v1s.layer2[0].downsample[0].stride == (2, 2)
    d = build_backbone("resnet18d")
    assert tuple(d.conv1[0].weight.shape) == (32, 3, 3, 3)
    assert isinstance(d.layer2[0].downsample[0], nn.AvgPool2d)
    plain = build_backbone("resnet18")
    assert tuple(plain.conv1.weight.shape) == (64, 3, 7, 7)


def test_dilation_instead_of_stride():
    bb = build_backbone("resnet18", output_stride=8)
    assert bb.layer4[1].conv1.dilation == (4, 4)
    assert bb.layer3[1].conv1.dilation == (2, 2)


def test_in_chans_4():
    model = build_segmentor(backbone="resnet18d", num_classes=K, in_chans=4)
    assert model.backbone.conv1[0].weight.shape[1] == 4
    out = model.eval()(torch.randn(2, 4, 32, 32))
    assert out.logits.shape == (2, K, 4, 4)
    mb = build_backbone("mobilenetv2", in_chans=4)
    assert mb.conv_stem.weight.shape[1] == 4
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 32, 32))


def test_pretrained_round_trip(tmp_path):
    src = build_backbone("resnet18d")
    # give the BN statistics non-default values so the round trip checks them too
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    raw = tmp_path / "raw.pth"
    torch.save(src.state_dict(), raw)
    dst = build_backbone("resnet18d", pretrained=str(raw))
    for (k1, v1), (k2, v2) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k1 == k2
        assert torch.equal(v1, v2), k1
    # wrapped, DDP-prefixed and with an ImageNet classifier: still loads
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    wrapped["module.fc.weight"] = torch.randn(1000, 512)
    wrapped["module.fc.bias"] = torch.randn(1000)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    fresh = build_backbone("resnet18d")
    load_pretrained(fresh, str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    src = build_backbone("resnet18")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = build_backbone("resnet18", pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_timm_mobilenetv2_checkpoint_loads(tmp_path):
    """A timm mobilenetv2_100 checkpoint (with conv_head/bn2/classifier) loads key for key."""
    net = timm.create_model("mobilenetv2_100", pretrained=False)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    path = tmp_path / "mnv2.pth"
    torch.save(net.state_dict(), path)
    bb = build_backbone("mobilenetv2", output_stride=32, pretrained=str(path))
    ref = net.state_dict()
    own = bb.state_dict()
    assert set(own) == {k for k in ref if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    for k, v in own.items():
        assert torch.equal(v, ref[k]), k
    # same computation as timm's own network at output stride 32
    net.eval()
    bb.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_feats = net.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        feats = bb(x)
    for name, r in zip(("res2", "res3", "res4", "res5"), ref_feats):
        torch.testing.assert_close(feats[name], r)


def test_first_conv_adaptation(tmp_path):
    src = build_backbone("resnet18d")
    path = tmp_path / "rgb.pth"
    torch.save(src.state_dict(), path)
    ref = src.state_dict()["conv1.0.weight"]
    stds = {}
    for std in (0.1, 2.0):
        dst = build_backbone(
            "resnet18d", in_chans=4, pretrained=str(path), extra_chans_init_std=std
        )
        w = dst.state_dict()["conv1.0.weight"]
        assert w.shape == (32, 4, 3, 3)
        assert torch.equal(w[:, :3], ref)
        stds[std] = w[:, 3].std().item()
        # everything else is the checkpoint
        for k, v in ref_items(src):
            if k != "conv1.0.weight":
                assert torch.equal(dst.state_dict()[k], v), k
    # 288 draws: the sample std lies within ~4 standard errors of the requested std
    assert 0.08 < stds[0.1] < 0.12
    assert 1.6 < stds[2.0] < 2.4


def ref_items(module):
    return list(module.state_dict().items())


def test_missing_pretrained_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        build_backbone("resnet18", pretrained=str(missing))


def test_mismatched_checkpoint_lists_keys(tmp_path):
    path = tmp_path / "deep.pth"
    torch.save(build_backbone("resnet18d").state_dict(), path)
    with pytest.raises(ValueError) as err:
        build_backbone("resnet18", pretrained=str(path))
    msg = str(err.value)
    assert "conv1.weight" in msg  # missing
    assert "conv1.0.weight" in msg  # unexpected
    assert str(path) in msg
    # same keys, different shapes
    path2 = tmp_path / "v1s.pth"
    torch.save(build_backbone("resnet18v1s").state_dict(), path2)
    with pytest.raises(ValueError, match=r"conv1\.0\.weight: checkpoint \(64, 3, 3, 3\)"):
        build_backbone("resnet18d", pretrained=str(path2))


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_backbone("resnet18", pretrained=str(path))


def test_frozen_bn():
    bb = build_backbone("resnet18d", frozen_bn=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bb.modules())
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.train()
    bb(torch.randn(2, 3, 32, 32))
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_frozen_bn_equals_eval_bn(arch):
    bb = build_backbone(arch)
    with torch.no_grad():
        for m in bb.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    frozen = freeze_batchnorm(copy.deepcopy(bb)).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = bb.eval()(x)
        got = frozen(x)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-4)


def test_sync_bn_conversion_keeps_activations_and_keys():
    model = build_segmentor(backbone="mobilenetv2", num_classes=K).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).logits
    keys = list(model.state_dict())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.backbone.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert list(converted.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(converted(x).logits, ref)


def test_syncbn_norm_layer():
    model = build_segmentor(backbone="resnet18", num_classes=K, norm_layer="SyncBN")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    with pytest.raises(ValueError, match="SyncBN"):
        build_backbone("resnet18", norm_layer="GroupNormX")


def test_unknown_arch_and_head():
    with pytest.raises(ValueError) as err:
        build_backbone("resnet34x")
    assert "resnet34x" in str(err.value) and "resnet18d" in str(err.value)
    assert "mobilenetv2" in str(err.value)
    with pytest.raises(ValueError) as err:
        build_segmentor(head="unet", backbone="resnet18")
    assert "unet" in str(err.value)
    for name in ("deeplabv3", "pspnet", "fcn"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet18", output_stride=4)


def test_heads_feature_is_penultimate():
    x = torch.randn(2, 64, 8, 8)
    for head in (
        DeepLabV3Head(64, K, channels=16, dilations=(1, 2, 3)),
        PSPHead(64, K, channels=16),
        FCNHead(64, K, channels=16),
    ):
        head.eval()
        logits, feature = head({"res5": x})
        assert feature.shape == (2, 16, 8, 8)
        assert logits.shape == (2, K, 8, 8)
        assert head.out_channels == 16
        classifier = [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1]
        torch.testing.assert_close(logits, classifier(feature))
        # a tensor works as the input too
        torch.testing.assert_close(head(x)[0], logits)
    aux = AuxFCNHead(64, K, channels=8).eval()
    assert aux({"res4": x}).shape == (2, K, 8, 8)
    with pytest.raises(KeyError, match="res4"):
        aux({"res5": x})


def test_psp_and_aspp_structure():
    psp = PSPHead(64, K, channels=16, bins=(1, 2, 3, 6))
    # four pyramid branches of 64/4 channels concatenated with the input
    assert psp.psp.out_channels == 64 + 4 * 16
    assert psp.block[0].in_channels == 128
    aspp = DeepLabV3Head(64, K, channels=16, dilations=(12, 24, 36)).aspp
    rates = [aspp.b1.block[0].dilation, aspp.b2.block[0].dilation, aspp.b3.block[0].dilation]
    assert rates == [(12, 12), (24, 24), (36, 36)]
    assert aspp.project[0].in_channels == 5 * 16  # 1x1 + 3 atrous + image pooling


def test_segmentor_checks_channels():
    bb = build_backbone("resnet18")
    with pytest.raises(ValueError, match="512"):
        Segmentor(bb, DeepLabV3Head(256, K, channels=16))
    with pytest.raises(ValueError, match="res6"):
        Segmentor(bb, DeepLabV3Head(512, K, channels=16, in_feature="res6"))


def test_register_head():
    class TinyHead(nn.Module):
        def __init__(self, in_channels, num_classes, in_feature="res5"):
            super().__init__()
            self.in_feature = in_feature
            self.in_channels = in_channels
            self.num_classes = num_classes
            self.out_channels = 8
            self.extra_channels = {"edge": 1}
            self.proj = nn.Conv2d(in_channels, 8, 1)
            self.cls = nn.Conv2d(8, num_classes, 1)
            self.edge = nn.Conv2d(8, 1, 1)

        def forward(self, features):
            f = self.proj(features[self.in_feature])
            return self.cls(f), f, {"edge": self.edge(f)}

    name = "tiny_test_head"
    register_head(
        name,
        lambda in_channels, num_classes, in_feature="res5", **_: TinyHead(
            in_channels, num_classes, in_feature
        ),
    )
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_head(name, lambda **_: None)
        model = build_segmentor(head=name, backbone="resnet18", num_classes=K, aux=False).eval()
        out = model(torch.randn(2, 3, 32, 32))
        assert out.get("edge").shape == (2, 1, 4, 4)
        assert model.output_channels == {"logits": K, "feature": 8, "edge": 1}
        assert isinstance(build_head(name, in_channels=4, num_classes=2), TinyHead)
    finally:
        HEADS.pop(name)


# --------------------------------------------------------------------------- task loss


def _ce_by_hand(logits, targets, ignore=255):
    """Mean over valid pixels of -log softmax(z)[y], written out explicitly."""
    logp = logits.log_softmax(dim=1)
    valid = targets != ignore
    y = targets.clone()
    y[~valid] = 0
    picked = logp.gather(1, y.unsqueeze(1)).squeeze(1)
    return -(picked[valid]).sum() / valid.sum()


def test_segmentation_losses_by_hand():
    logits = torch.randn(2, K, 4, 4, requires_grad=True)
    aux = torch.randn(2, K, 4, 4)
    targets = torch.randint(0, K, (2, 16, 16))
    targets[0, :3] = 255
    out = SegOutput(
        logits=logits,
        feature=torch.randn(2, 3, 4, 4),
        aux_logits=aux,
        extras={"unknown_extra": torch.randn(1)},
    )
    losses = segmentation_losses(out, targets, aux_weight=0.4, ignore_label=255)
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    up_aux = F.interpolate(aux, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(losses["loss_sem_seg"], _ce_by_hand(up, targets))
    torch.testing.assert_close(losses["loss_aux"], 0.4 * _ce_by_hand(up_aux, targets))
    torch.testing.assert_close(
        losses["loss_sem_seg"], F.cross_entropy(up, targets, ignore_index=255)
    )
    losses["loss_sem_seg"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_segmentation_losses_no_aux_and_all_ignored():
    out = SegOutput(logits=torch.randn(1, K, 8, 8), feature=torch.randn(1, 3, 8, 8))
    targets = torch.full((1, 8, 8), 255)
    losses = segmentation_losses(out, targets)
    assert set(losses) == {"loss_sem_seg"}
    assert torch.isfinite(losses["loss_sem_seg"]) and losses["loss_sem_seg"].item() == 0.0
    with pytest.raises(ValueError, match="N×H×W"):
        segmentation_losses(out, targets[0])


def test_upsample_logits():
    z = torch.randn(1, 2, 4, 4)
    assert upsample_logits(z, (4, 4)) is z
    up = upsample_logits(z, (8, 8))
    # align_corners=False bilinear x2: an interior output pixel is 3/4, 1/4 of its neighbours
    expected = 0.75 * (0.75 * z[0, :, 1, 1] + 0.25 * z[0, :, 1, 2]) + 0.25 * (
        0.75 * z[0, :, 2, 1] + 0.25 * z[0, :, 2, 2]
    )
    torch.testing.assert_close(up[0, :, 3, 3], expected)
