"""OCRNet and STDC (framework-free): shapes and strides of the records, the OCR attention against
loop references, the STDC detail ground truth on a hand-made label map and the detail loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from textkd.models.backbones import available_backbones, build_backbone
from textkd.models.losses import segmentation_losses
from textkd.models.ocrnet import OCRHead, ocr_region_loss
from textkd.models.outputs import SegOutput
from textkd.models.segmentor import available_heads, build_segmentor
from textkd.models.stdc import (
    STDCHead,
    detail_targets,
    stdc_detail_loss,
)

K = 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- registration


def test_registered_names():
    assert {"ocrnet", "stdc"} <= set(available_heads())
    assert {"stdc1", "stdc2"} <= set(available_backbones())


# --------------------------------------------------------------------------- OCRNet


@pytest.mark.parametrize("backbone", ["resnet18v1s", "mobilenetv2"])
def test_ocrnet_record_shapes_and_stride(backbone):
    model = build_segmentor(head="ocrnet", backbone=backbone, num_classes=K, aux=False)
    model.train()
    out = model(torch.randn(2, 3, 64, 48))
    assert isinstance(out, SegOutput)
    assert model.output_stride == 8
    assert out.logits.shape == (2, K, 8, 6)
    assert out.feature.shape == (2, model.output_channels["feature"], 8, 6)
    assert out.aux_logits is None
    regions = out.extras["ocr_soft_regions"]
    assert regions.shape == (2, K, 8, 6)
    assert model.output_channels["ocr_soft_regions"] == K
    # small backbones get the narrow reference widths
    assert model.head.out_channels == 256 and model.head.key_channels == 128
    # the region branch learns from the region loss
    y = torch.randint(0, K, (2, 64, 48))
    segmentation_losses(out, y, head=model.head)["loss_ocr_regions"].backward()
    grad = model.head.soft_region.block[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_ocrnet_region_branch_reads_res4():
    model = build_segmentor(head="ocrnet", backbone="resnet18", num_classes=K, aux=False)
    assert model.head.soft_region.in_feature == "res4"
    assert model.head.soft_region.in_channels == model.backbone.out_channels["res4"]
    # hidden width of the region FCN: like the aux head, a quarter of its input (256 -> 64)
    assert model.head.soft_region.out_channels == 64
    # the region logits only depend on res4: perturbing res5 leaves them unchanged
    model.eval()
    feats = model.backbone(torch.randn(1, 3, 32, 32))
    _, _, ex1 = model.head(feats)
    feats2 = dict(feats, res5=feats["res5"] + 1.0)
    logits1, _, _ = model.head(feats)
    logits2, _, ex2 = model.head(feats2)
    assert torch.equal(ex1["ocr_soft_regions"], ex2["ocr_soft_regions"])
    assert not torch.allclose(logits1, logits2)


def test_ocrnet_head_matches_loop_reference():
    """Object regions, pixel-region relation and context computed pixel by pixel."""
    head = OCRHead(
        in_channels=6,
        num_classes=3,
        channels=4,
        key_channels=2,
        region_in_channels=5,
        region_channels=4,
        dropout=0.0,
    ).eval()
    for m in head.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    feats = {"res4": torch.randn(2, 5, 3, 4), "res5": torch.randn(2, 6, 3, 4)}
    with torch.no_grad():
        logits, feature, extras = head(feats)
        x = head.bottleneck(feats["res5"])  # pixel representations N×C×h×w
        m = head.soft_region(feats)  # region logits N×K×h×w
        assert torch.equal(extras["ocr_soft_regions"], m)
        n, c, h, w = x.shape
        # object region representations: f_k = sum_i softmax_i(m_k) x_i
        regions = torch.zeros(n, c, 3, 1)
        for b in range(n):
            for k in range(3):
                weights = torch.exp(m[b, k]) / torch.exp(m[b, k]).sum()
                regions[b, :, k, 0] = (x[b] * weights).sum(dim=(1, 2))
        q = head.object_context.query_project(x)
        key = head.object_context.key_project(regions)
        v = head.object_context.value_project(regions)
        context = torch.zeros(n, 2, h, w)
        for b in range(n):
            for i in range(h):
                for j in range(w):
                    sims = torch.tensor(
                        [float(q[b, :, i, j] @ key[b, :, k, 0]) / math.sqrt(2) for k in range(3)]
                    )
                    wk = torch.softmax(sims, dim=0)
                    context[b, :, i, j] = sum(wk[k] * v[b, :, k, 0] for k in range(3))
        y = head.object_context.out_project(context)
        z = head.fuse(torch.cat([y, x], dim=1))
        expected_logits = head.classifier(z)
    torch.testing.assert_close(feature, z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)


def test_ocr_region_loss_is_weighted_ce():
    regions = torch.randn(2, K, 4, 4)
    out = SegOutput(
        logits=torch.randn(2, K, 4, 4),
        feature=torch.randn(2, 3, 4, 4),
        extras={"ocr_soft_regions": regions},
    )
    y = torch.randint(0, K, (2, 16, 16))
    y[0, :4] = 255
    up = F.interpolate(regions, size=(16, 16), mode="bilinear", align_corners=False)
    logp = torch.log_softmax(up, dim=1)
    valid = y != 255
    picked = logp.gather(1, y.clamp(max=K - 1).unsqueeze(1)).squeeze(1)
    expected = 0.4 * (-(picked[valid]).mean())
    got = ocr_region_loss(out, y, weight=0.4)["loss_ocr_regions"]
    torch.testing.assert_close(got, expected)
    head = OCRHead(8, K, channels=8, key_channels=4, region_in_channels=8, region_channels=4)
    assert head.losses(out, y, aux_weight=0.4).keys() == {"loss_ocr_regions"}
    torch.testing.assert_close(head.losses(out, y, aux_weight=0.4)["loss_ocr_regions"], expected)
    # the task loss adds the head's own loss (none without the head)
    task = segmentation_losses(out, y, aux_weight=0.4, head=head)
    assert task.keys() == {"loss_sem_seg", "loss_ocr_regions"}
    assert segmentation_losses(out, y).keys() == {"loss_sem_seg"}
    assert ocr_region_loss(out, y, weight=0.0) == {}


# --------------------------------------------------------------------------- STDC


@pytest.mark.parametrize("arch,modules", [("stdc1", (2, 2, 2)), ("stdc2", (4, 5, 3))])
def test_stdc_backbone_strides_and_channels(arch, modules):
    bb = build_backbone(arch, output_stride=32)
    feats = bb(torch.randn(1, 3, 64, 96))
    expected = {"res2": (64, 4), "res3": (256, 8), "res4": (512, 16), "res5": (1024, 32)}
    for name, (ch, stride) in expected.items():
        assert feats[name].shape == (1, ch, 64 // stride, 96 // stride), name
        assert bb.out_channels[name] == ch and bb.out_strides[name] == stride
    # stem (2 ConvX) + the STDC modules of the three stages
    assert len(bb.features) == 2 + sum(modules)


def test_stdc_backbone_rejects_dilation():
    with pytest.raises(ValueError, match="output_stride=32"):
        build_backbone("stdc1", output_stride=8)


def test_stdc_module_concatenates_blocks():
    """An STDC module with 4 blocks outputs C/2 + C/4 + C/8 + C/8 = C channels."""
    bb = build_backbone("stdc1", output_stride=32)
    module = bb.features[2]  # first module of the stride-8 stage, stride 2, 64 -> 256
    widths = [blk.conv.out_channels for blk in module.conv_list]
    assert widths == [128, 64, 32, 32]
    x = torch.randn(1, 64, 16, 16)
    assert module(x).shape == (1, 256, 8, 8)


def test_stdc_backbone_extra_input_channel():
    bb = build_backbone("stdc1", output_stride=32, in_chans=4)
    assert bb.features[0].conv.weight.shape[1] == 4
    assert bb(torch.randn(1, 4, 64, 64))["res5"].shape == (1, 1024, 2, 2)


def test_stdc_segmentor_record():
    model = build_segmentor(head="stdc", backbone="stdc1", num_classes=K, output_stride=32)
    assert model.output_stride == 8
    assert model.output_channels == {
        "logits": K,
        "feature": 256,
        "aux_logits": K,
        "detail_logits": 1,
    }
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, K, 8, 8)
    assert out.feature.shape == (2, 256, 8, 8)
    assert out.aux_logits.shape == (2, K, 4, 4)  # aux FCN on res4 (stride 16)
    assert out.extras["detail_logits"].shape == (2, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, K, 8, 8)
    assert "detail_logits" not in out.extras and out.aux_logits is None


def test_stdc_head_without_detail_branch():
    head = STDCHead(16, 32, 64, num_classes=3, channels=8, context_channels=8, detail_channels=0)
    head.train()
    feats = {
        "res3": torch.randn(2, 16, 8, 8),
        "res4": torch.randn(2, 32, 4, 4),
        "res5": torch.randn(2, 64, 2, 2),
    }
    logits, feature, extras = head(feats)
    assert logits.shape == (2, 3, 8, 8) and feature.shape == (2, 8, 8, 8) and extras == {}
    with pytest.raises(KeyError, match="res3, res4, res5"):
        head({"res3": feats["res3"]})


# --------------------------------------------------------------------------- detail loss


def _block_label() -> torch.Tensor:
    """8×8 label: class 0 with a 4×4 block of class 1 at rows/cols 2..5."""
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:6, 2:6] = 1
    return y


def test_detail_targets_by_hand():
    # Laplacian 8·y(p) − Σ neighbours, kept where > 0.1 (only the larger-label side):
    #  stride 1: class-1 pixels with a class-0 neighbour = the 12-pixel ring of the block.
    #  stride 2: centres (0,2,4,6)²; inside the block (2,2), (2,4), (4,2) are on the ring,
    #            (4,4) is interior -> cells (1,1), (1,2), (2,1) of the 4×4 map, nearest-upsampled
    #            to rows/cols {2,3}×{2,3}, {2,3}×{4,5}, {4,5}×{2,3}; adds (3,3), (3,4), (4,3).
    #  stride 4: centres (0,4)²; only (4,4) has class 1 and it is interior -> nothing.
    # fused: 0.6·b1 + 0.3·b2 + 0.1·b4 > 0.1 -> the whole block except its pixel (4,4).
    expected = torch.zeros(1, 8, 8)
    expected[0, 2:6, 2:6] = 1
    expected[0, 4, 4] = 0
    got = detail_targets(_block_label())
    assert torch.equal(got, expected)


def test_detail_targets_stride4_alone_is_below_threshold():
    # 9×9 map of class 0 with one class-1 pixel at (4,4); nearest upsampling n -> 9 takes
    # cell floor(r·n/9) for output row r.
    #  stride 1: only (4,4) fires (8·1 − 0).
    #  stride 2: 5×5 map, centres 0,2,4,6,8: cell (2,2) fires; rows with floor(5r/9) = 2 are
    #            4 and 5 -> {4,5}².
    #  stride 4: 3×3 map, centres 0,4,8: cell (1,1) fires; floor(3r/9) = 1 for r = 3,4,5 ->
    #            {3,4,5}².
    # STDC weights: 0.6·b1 + 0.3·b2 + 0.1·b4 > 0.1 -> b1 ∪ b2 = {4,5}²; the pixels covered by
    # the stride-4 map alone (weight 0.1) are not detail pixels.
    y = torch.zeros(1, 9, 9, dtype=torch.long)
    y[0, 4, 4] = 1
    only4 = torch.zeros(9, 9)
    only4[3:6, 3:6] = 1
    assert torch.equal(detail_targets(y, strides=(4,), fuse_weights=(1.0,))[0], only4)
    assert detail_targets(y, strides=(4,), fuse_weights=(0.1,)).sum() == 0
    expected = torch.zeros(9, 9)
    expected[4:6, 4:6] = 1
    assert torch.equal(detail_targets(y)[0], expected)


def test_detail_loss_matches_formula():
    y = _block_label().repeat(2, 1, 1)
    g = torch.zeros(2, 8, 8)
    g[:, 2:6, 2:6] = 1
    g[:, 4, 4] = 0
    d = torch.randn(2, 1, 8, 8)
    p = torch.sigmoid(d[:, 0])
    bce = -(g * torch.log(p) + (1 - g) * torch.log(1 - p)).mean()
    dice = torch.stack(
        [1 - (2 * (p[n] * g[n]).sum() + 1) / (p[n].sum() + g[n].sum() + 1) for n in range(2)]
    ).mean()
    torch.testing.assert_close(stdc_detail_loss(d, y), bce + dice, rtol=1e-5, atol=1e-6)


def test_detail_loss_upsamples_and_ignores():
    y = torch.randint(0, 3, (2, 16, 16))
    y[:, :, 12:] = 255
    d = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = stdc_detail_loss(d, y)
    loss.backward()
    assert loss.item() > 0 and d.grad is not None
    # the loss does not depend on the logits over ignored pixels: upsampled logits at the
    # ignored columns may change freely
    up = F.interpolate(d.detach(), size=(16, 16), mode="bilinear", align_corners=False)
    changed = up.clone()
    changed[..., 12:] = 50.0
    assert torch.allclose(stdc_detail_loss(up, y), stdc_detail_loss(changed, y))
    assert torch.allclose(stdc_detail_loss(up, y), loss.detach())
    # all ignored: zero, not NaN
    assert stdc_detail_loss(d, torch.full((2, 16, 16), 255)).item() == 0.0


def test_stdc_head_losses_detail_weight():
    d = torch.randn(1, 1, 8, 8)
    out = SegOutput(
        logits=torch.randn(1, K, 8, 8),
        feature=torch.randn(1, 4, 8, 8),
        extras={"detail_logits": d},
    )
    y = _block_label()
    head = STDCHead(8, 16, 32, K, channels=8, context_channels=8, detail_channels=4)
    losses = head.losses(out, y, detail_weight=2.0)
    torch.testing.assert_close(losses["loss_detail"], 2.0 * stdc_detail_loss(d, y))
    assert head.losses(out, y, detail_weight=0.0) == {}
    plain = SegOutput(logits=out.logits, feature=out.feature)
    assert head.losses(plain, y) == {}
    task = segmentation_losses(out, y, detail_weight=2.0, head=head)
    assert task.keys() == {"loss_sem_seg", "loss_detail"}
    torch.testing.assert_close(task["loss_detail"], losses["loss_detail"])


def test_detail_loss_bad_shapes():
    with pytest.raises(ValueError, match="N×1×h×w"):
        stdc_detail_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="N×H×W"):
        stdc_detail_loss(torch.randn(1, 1, 4, 4), torch.zeros(8, 8, dtype=torch.long))
