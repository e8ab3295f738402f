"""Checkpoint conversion (framework-free): CIRKD round trips on state dicts generated from the
recorded key names/shapes (tests/data/convert/*.json), refusal of mismatched keys, and
torchvision/timm/CIRKD ImageNet backbones giving the source model's features."""

import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from textkd.models.backbones import build_backbone
from textkd.models.convert import (
    CIRKD_PIXEL_MEAN,
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    convert_checkpoint,
    detect_format,
    load_source_state_dict,
    save_converted,
    textkd_to_cirkd_key,
    to_cirkd_state_dict,
    torchvision_mobilenetv2_to_timm_key,
)
from textkd.models.segmentor import build_segmentor
from textkd.models.weights import load_segmentor_checkpoint

DATA = Path(__file__).parent / "data" / "convert"


def _fixture(name: str) -> list[tuple[str, list[int]]]:
    with open(DATA / name) as f:
        return [(k, shape) for k, shape in json.load(f)["keys"]]


def _random_state(keys: list[tuple[str, list[int]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the recorded names and shapes (BN variances positive, counters
    integer)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys:
        if k.endswith("num_batches_tracked"):
            out[k] = torch.randint(0, 1000, (), generator=g)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g)
    return out


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


# --------------------------------------------------------------------------- CIRKD models

# fixture -> what its constructor line says about the CIRKD model
CIRKD_CASES = {
    # models/deeplabv3.py @ first commit: ASPP width 256 for R101, aux FCN 1024 -> 256
    "cirkd_deeplabv3_r101.json": {
        "arch": "resnet101v1s",
        "head": "TextKDDeepLabV3Head",
        "classes": 19,
        "channels": 256,
        "aux": True,
        "aux_channels": 256,
    },
    # models/pspnet.py: head width 128 for R18, aux FCN 256 -> 64
    "cirkd_pspnet_r18.json": {
        "arch": "resnet18v1s",
        "head": "TextKDPSPHead",
        "classes": 21,
        "channels": 128,
        "aux": True,
        "aux_channels": 64,
    },
    # models/deeplabv3.py @ latest: ASPP width 512, no aux head
    "cirkd_deeplabv3_r18.json": {
        "arch": "resnet18v1s",
        "head": "TextKDDeepLabV3Head",
        "classes": 19,
        "channels": 512,
        "aux": False,
        "aux_channels": None,
    },
}


@pytest.mark.parametrize("fixture", sorted(CIRKD_CASES))
def test_cirkd_round_trip(fixture, tmp_path):
    case = CIRKD_CASES[fixture]
    source = _random_state(_fixture(fixture))
    assert detect_format(source) == "cirkd"
    conv = convert_checkpoint(source)
    assert conv.kind == "segmentor" and conv.dropped == {} and conv.filled == []
    s = conv.settings
    assert s["MODEL.SEG_BACKBONE.ARCH"] == case["arch"]
    assert s["MODEL.SEM_SEG_HEAD.NAME"] == case["head"]
    assert s["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] == case["classes"]
    assert s["MODEL.SEM_SEG_HEAD.CHANNELS"] == case["channels"]
    assert s["MODEL.SEM_SEG_HEAD.AUX"] is case["aux"]
    assert s.get("MODEL.SEM_SEG_HEAD.AUX_CHANNELS") == case["aux_channels"]
    # CIRKD input: cv2 BGR minus the Caffe mean, no std
    assert s["INPUT.FORMAT"] == "BGR"
    assert s["MODEL.PIXEL_MEAN"] == list(CIRKD_PIXEL_MEAN)
    assert s["MODEL.PIXEL_STD"] == [1.0, 1.0, 1.0]
    assert s["MODEL.SEM_SEG_HEAD.ALIGN_CORNERS"] is True

    # the settings build a model into which the converted tensors load strictly
    head = {"TextKDDeepLabV3Head": "deeplabv3", "TextKDPSPHead": "pspnet"}[case["head"]]
    with torch.device("meta"):  # no time spent on initialising weights that get replaced
        model = build_segmentor(
            head=head,
            backbone=case["arch"],
            num_classes=case["classes"],
            channels=case["channels"],
            aux=case["aux"],
            aux_channels=case["aux_channels"],
        )
    model.to_empty(device="cpu")
    path = save_converted(conv, str(tmp_path / "converted.pth"), source_path="cirkd.pth")
    load_segmentor_checkpoint(model, path, what="teacher")
    # and back to CIRKD names: every tensor identical
    back = to_cirkd_state_dict(model.state_dict())
    assert set(back) == set(source)
    for k, v in source.items():
        assert torch.equal(back[k], v), k
    saved = torch.load(path, weights_only=True)
    assert all(k.startswith("segmentor.") for k in saved["model"])
    assert saved["textkd_convert"]["source_format"] == "cirkd"


def test_cirkd_stem_names():
    # CIRKD ResNetV1b deep stem -> timm deep stem (Sequential indices 0, 1, 3, 4, 6 + bn1)
    pairs = {
        "backbone.conv1.0.weight": "pretrained.conv1.weight",
        "backbone.conv1.1.running_var": "pretrained.bn1.running_var",
        "backbone.conv1.3.weight": "pretrained.conv2.weight",
        "backbone.conv1.4.bias": "pretrained.bn2.bias",
        "backbone.conv1.6.weight": "pretrained.conv3.weight",
        "backbone.bn1.weight": "pretrained.bn3.weight",
        "backbone.layer3.0.bn1.weight": "pretrained.layer3.0.bn1.weight",
        "aux_head.block.4.bias": "auxlayer.block.4.bias",
        "head.aspp.b4.gap.1.weight": "head.aspp.b4.gap.1.weight",
    }
    for ours, theirs in pairs.items():
        assert textkd_to_cirkd_key(ours) == theirs


def _r18_source() -> dict[str, torch.Tensor]:
    return _random_state(_fixture("cirkd_pspnet_r18.json"))


def test_cirkd_refuses_unknown_key():
    source = _r18_source()
    source["head.psp.conv9.0.weight"] = source.pop("head.psp.conv2.0.weight")
    with pytest.raises(ValueError) as err:
        convert_checkpoint(source)
    msg = str(err.value)
    assert "head.psp.conv9.0.weight" in msg  # the source key without a target
    assert "head.psp.conv2.0.weight" in msg  # the model key without a source


def test_cirkd_refuses_missing_key():
    source = _r18_source()
    del source["pretrained.layer2.1.conv2.weight"]
    with pytest.raises(ValueError, match=r"backbone\.layer2\.1\.conv2\.weight"):
        convert_checkpoint(source)


def test_cirkd_refuses_shape_mismatch():
    source = _r18_source()
    source["pretrained.layer2.0.conv1.weight"] = torch.randn(128, 32, 3, 3)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight.*\(128, 32, 3, 3\)"):
        convert_checkpoint(source)


def test_cirkd_refuses_foreign_module():
    source = _r18_source()
    source["projector.0.weight"] = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"projector\.0\.weight"):
        convert_checkpoint(source)


def test_cirkd_backbone_imagenet_file(tmp_path):
    """A CIRKD ImageNet backbone (ResNetV1b names + fc) -> resnet18v1s, fc dropped and listed."""
    source = {
        k[len("pretrained.") :]: v for k, v in _r18_source().items() if k.startswith("pretrained.")
    }
    source["fc.weight"] = torch.randn(1000, 512)
    source["fc.bias"] = torch.randn(1000)
    src_path = tmp_path / "resnet18-imagenet.pth"
    torch.save(source, src_path)
    state = load_source_state_dict(str(src_path))
    assert detect_format(state) == "cirkd-backbone"
    conv = convert_checkpoint(state)
    assert conv.kind == "backbone"
    assert conv.settings["MODEL.SEG_BACKBONE.ARCH"] == "resnet18v1s"
    assert set(conv.dropped) == {"fc.weight", "fc.bias"}
    path = save_converted(conv, str(tmp_path / "bb.pth"))
    assert conv.settings["MODEL.SEG_BACKBONE.PRETRAINED"] == path
    bb = build_backbone("resnet18v1s", pretrained=path)
    own = bb.state_dict()
    assert torch.equal(own["conv1.3.weight"], source["conv2.weight"])
    assert torch.equal(own["bn1.running_mean"], source["bn3.running_mean"])
    assert torch.equal(own["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])


# --------------------------------------------------------------------------- ImageNet backbones


def _save(model: torch.nn.Module, path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def _convert_to_file(src: str, out: str, source_format: str = "auto"):
    conv = convert_checkpoint(load_source_state_dict(src), source_format)
    save_converted(conv, out)
    return conv


def test_torchvision_resnet18_features_identical(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    _randomize_bn(tv)
    tv.eval()
    conv = _convert_to_file(_save(tv, tmp_path / "tv.pth"), str(tmp_path / "out.pth"))
    assert conv.settings["MODEL.SEG_BACKBONE.ARCH"] == "resnet18"
    assert set(conv.dropped) == {"fc.weight", "fc.bias"}
    assert conv.settings["INPUT.FORMAT"] == "RGB"
    assert conv.settings["MODEL.PIXEL_MEAN"] == list(IMAGENET_PIXEL_MEAN)
    assert conv.settings["MODEL.PIXEL_STD"] == list(IMAGENET_PIXEL_STD)
    ours = build_backbone("resnet18", output_stride=32, pretrained=str(tmp_path / "out.pth"))
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        t2 = tv.layer1(t)
        t3 = tv.layer2(t2)
        t5 = tv.layer4(tv.layer3(t3))
        o = ours(x)
    torch.testing.assert_close(o["res2"], t2)
    torch.testing.assert_close(o["res3"], t3)
    torch.testing.assert_close(o["res5"], t5)


def test_torchvision_mobilenet_v2_features_identical(tmp_path):
    tv = torchvision.models.mobilenet_v2(weights=None)
    _randomize_bn(tv)
    tv.eval()
    src = _save(tv, tmp_path / "tv_mbv2.pth")
    conv = _convert_to_file(src, str(tmp_path / "out.pth"))
    assert conv.source_format == "torchvision-mobilenetv2"
    assert conv.settings["MODEL.SEG_BACKBONE.ARCH"] == "mobilenetv2"
    # the 1×1 conv to 1280 (features.18) and the classifier are not part of the backbone
    assert {k for k in conv.dropped if not k.startswith("features.18.")} == {
        "classifier.1.weight",
        "classifier.1.bias",
    }
    assert "features.18.0.weight" in conv.dropped
    ours = build_backbone("mobilenetv2", output_stride=32, pretrained=str(tmp_path / "out.pth"))
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tv.features[:18](x)  # stem + the 17 inverted-residual blocks (320 channels)
        o = ours(x)
    assert o["res5"].shape == ref.shape
    torch.testing.assert_close(o["res5"], ref)


def test_torchvision_mobilenet_v2_key_map():
    assert torchvision_mobilenetv2_to_timm_key("features.0.0.weight") == "conv_stem.weight"
    assert torchvision_mobilenetv2_to_timm_key("features.1.conv.1.weight") == (
        "blocks.0.0.conv_pw.weight"
    )
    # features.4 is the first block of the third stage (1 + 2 blocks before it)
    assert torchvision_mobilenetv2_to_timm_key("features.4.conv.1.0.weight") == (
        "blocks.2.0.conv_dw.weight"
    )
    assert torchvision_mobilenetv2_to_timm_key("features.17.conv.3.bias") == "blocks.6.0.bn3.bias"
    assert torchvision_mobilenetv2_to_timm_key("classifier.1.weight") is None


@pytest.mark.parametrize(
    "timm_name,arch", [("resnet18d", "resnet18d"), ("mobilenetv2_100", "mobilenetv2")]
)
def test_timm_backbone_features_identical(timm_name, arch, tmp_path):
    src = timm.create_model(timm_name, pretrained=False)
    _randomize_bn(src)
    src.eval()
    conv = _convert_to_file(_save(src, tmp_path / "timm.pth"), str(tmp_path / "out.pth"))
    assert conv.settings["MODEL.SEG_BACKBONE.ARCH"] == arch
    ours = build_backbone(arch, output_stride=32, pretrained=str(tmp_path / "out.pth"))
    ours.eval()
    feats = timm.create_model(timm_name, pretrained=False, features_only=True)
    feats.load_state_dict(src.state_dict(), strict=False)
    feats.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = feats(x)[-1]  # the stride-32 stage
        o = ours(x)["res5"]
    torch.testing.assert_close(o, ref)


# --------------------------------------------------------------------------- CLI


def test_cli_converts_and_prints_config(tmp_path, capsys):
    import convert_checkpoint as cli

    tv = torchvision.models.resnet18(weights=None)
    src = _save(tv, tmp_path / "tv.pth")
    out = tmp_path / "bb.pth"
    assert cli.main([src, str(out), "--source", "torchvision"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file()
    assert 'ARCH: "resnet18"' in printed
    assert f'PRETRAINED: "{out}"' in printed
    assert 'FORMAT: "RGB"' in printed
    assert "fc.weight" in printed  # dropped keys are listed


def test_cli_refuses_with_key_names(tmp_path, capsys):
    import convert_checkpoint as cli

    state = _r18_source()
    state["head.extra.weight"] = torch.randn(3)
    src = tmp_path / "cirkd.pth"
    torch.save(state, src)
    out = tmp_path / "never.pth"
    assert cli.main([str(src), str(out)]) == 1
    assert "head.extra.weight" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main([str(tmp_path / "missing.pth"), str(out)]) == 1
    assert "missing.pth" in capsys.readouterr().err


def test_stdc_imagenet_checkpoint(tmp_path):
    """STDC-Seg ImageNet files hold ``features.*`` plus the classifier (conv_last, fc, bn, linear)
    and ``x2..x32`` aliases of feature slices: the features load, the rest is dropped and listed."""
    src = build_backbone("stdc1", output_stride=32)
    _randomize_bn(src)
    src.eval()
    state = dict(src.state_dict())
    state["x2.0.0.conv.weight"] = state["features.0.conv.weight"].clone()
    state["conv_last.conv.weight"] = torch.randn(1024, 1024, 1, 1)
    state["fc.weight"] = torch.randn(1024, 1024)
    state["bn.running_mean"] = torch.randn(1024)
    state["linear.weight"] = torch.randn(1000, 1024)
    torch.save({"state_dict": state, "epoch": 300}, tmp_path / "STDCNet813M.tar")
    loaded = load_source_state_dict(str(tmp_path / "STDCNet813M.tar"))
    assert detect_format(loaded) == "stdc"
    conv = _convert_to_file(str(tmp_path / "STDCNet813M.tar"), str(tmp_path / "out.pth"))
    assert conv.settings["MODEL.SEG_BACKBONE.ARCH"] == "stdc1"
    assert set(conv.dropped) == {
        "x2.0.0.conv.weight",
        "conv_last.conv.weight",
        "fc.weight",
        "bn.running_mean",
        "linear.weight",
    }
    ours = build_backbone("stdc1", output_stride=32, pretrained=str(tmp_path / "out.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), src(x)
    for k in ("res2", "res3", "res4", "res5"):
        assert torch.equal(a[k], b[k]), k


def test_compare_state_dicts_is_the_one_strict_key_match():
    """weights.compare_state_dicts, which the backbone loader, the converter and the segmentor
    loader all use: missing, unexpected and mis-shaped keys, in order; short_list cuts long lists.
    """
    from textkd.models.weights import compare_state_dicts, short_list

    own = {"a": torch.zeros(2), "b": torch.zeros(3, 1), "c": torch.zeros(1)}
    state = {"b": torch.zeros(3, 2), "a": torch.zeros(2), "x": torch.zeros(1)}
    missing, unexpected, mismatched = compare_state_dicts(state, own)
    assert missing == ["c"] and unexpected == ["x"]
    assert mismatched == [("b", (3, 2), (3, 1))]
    assert compare_state_dicts(own, own) == ([], [], [])
    assert short_list([f"k{i}" for i in range(5)], 3) == "k0, k1, k2, ... (5 in all)"
    assert short_list(["k0", "k1"], 3) == "k0, k1"


# --------------------------------------------------------------------------- MobileNetV2 files
# loaded as they are by MODEL.SEG_BACKBONE.PRETRAINED (backbones.load_pretrained)

MBV2_REFERENCE = Path(__file__).parent / "data" / "reference" / "cirkd_mobilenetv2.pt"


def _mbv2_extras(layout: str) -> dict[str, torch.Tensor]:
    """What a full ImageNet MobileNetV2 file holds beyond the 17 blocks: the 1x1 conv to 1280
    channels (``features.18``) and the classifier (same names in both layouts)."""
    g = torch.Generator().manual_seed(7)
    extras = {
        "features.18.0.weight": torch.randn(1280, 320, 1, 1, generator=g),
        "features.18.1.weight": torch.rand(1280, generator=g) + 0.5,
        "features.18.1.bias": torch.randn(1280, generator=g),
        "features.18.1.running_mean": torch.randn(1280, generator=g),
        "features.18.1.running_var": torch.rand(1280, generator=g) + 0.5,
        "classifier.1.weight": torch.randn(1000, 1280, generator=g),
        "classifier.1.bias": torch.randn(1000, generator=g),
    }
    if layout == "torchvision":
        extras["features.18.1.num_batches_tracked"] = torch.tensor(0)
    return extras


def _cirkd_mbv2_state() -> tuple[dict[str, torch.Tensor], dict]:
    from _reference_weights import deterministic_state_dict

    ref = torch.load(MBV2_REFERENCE, weights_only=True)
    return deterministic_state_dict(ref["key_shapes"]), ref


@pytest.mark.parametrize("full_file", [True, False], ids=["with_head_and_classifier", "cirkd"])
def test_cirkd_mobilenetv2_imagenet_file_loads_as_cirkd_computes(tmp_path, caplog, full_file):
    """CIRKD's ``mobilenetv2-imagenet.pth`` layout (flat ``features.N.conv.K`` blocks) loads into
    the ``mobilenetv2`` backbone as it is, and the OS-8 backbone's res5 equals CIRKD's
    MobileNetV2Dilated output with the same weights (tests/data/reference/cirkd_mobilenetv2.pt,
    tests/fixtures/make_mobilenetv2_fixture.py). The 1x1 conv to 1280 and the classifier of a
    full ImageNet file are skipped and logged."""
    from fixtures.make_mobilenetv2_fixture import fixed_input

    state, ref = _cirkd_mbv2_state()
    assert "features.1.conv.3.weight" in state  # the CIRKD layout, not torchvision's
    if full_file:
        state.update(_mbv2_extras("cirkd"))
    path = tmp_path / "mobilenetv2-imagenet.pth"
    torch.save(state, path)
    x = fixed_input()
    torch.testing.assert_close(
        (float(x.sum()), float(x.norm())), tuple(ref["input_check"]), rtol=1e-6, atol=1e-3
    )
    with caplog.at_level("INFO", logger="textkd.models.backbones"):
        bb = build_backbone("mobilenetv2", output_stride=8, pretrained=str(path))
    assert bb.pretrained_layout == "cirkd"
    assert "CIRKD MobileNetV2" in caplog.text
    if full_file:
        assert "features.18.0.weight" in caplog.text and "classifier.1.weight" in caplog.text
    own = bb.state_dict()
    assert torch.equal(own["blocks.0.0.conv_pw.weight"], state["features.1.conv.3.weight"])
    assert torch.equal(own["blocks.6.0.bn3.running_var"], state["features.17.conv.7.running_var"])
    bb.eval()
    with torch.no_grad():
        out = bb(x)["res5"]
    assert out.shape == ref["output"].shape
    torch.testing.assert_close(out, ref["output"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("restricted", [False, True], ids=["torchvision", "features0_17"])
def test_torchvision_mobilenetv2_file_loads_directly(tmp_path, restricted):
    """torchvision's ``mobilenet_v2`` state dict as MODEL.SEG_BACKBONE.PRETRAINED gives the
    backbone the converter path (convert_checkpoint -> save_converted) gives, and torchvision's
    features; so does the file restricted to ``features.0..17`` (no 1x1 conv, no classifier)."""
    tv = torchvision.models.mobilenet_v2(weights=None)
    _randomize_bn(tv)
    tv.eval()
    state = tv.state_dict()
    if restricted:
        state = {
            k: v
            for k, v in state.items()
            if k.startswith("features.") and int(k.split(".")[1]) <= 17
        }
    src = tmp_path / "tv_mbv2.pth"
    torch.save(state, src)
    conv = _convert_to_file(str(src), str(tmp_path / "converted.pth"))
    assert conv.source_format == "torchvision-mobilenetv2"
    direct = build_backbone("mobilenetv2", output_stride=32, pretrained=str(src))
    converted = build_backbone(
        "mobilenetv2", output_stride=32, pretrained=str(tmp_path / "converted.pth")
    )
    assert direct.pretrained_layout == "timm"
    a, b = direct.state_dict(), converted.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    direct.eval()
    converted.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        o_direct = direct(x)
        o_conv = converted(x)
        ref = tv.features[:18](x)
    for name in o_conv:
        torch.testing.assert_close(o_direct[name], o_conv[name], rtol=0, atol=0)
    torch.testing.assert_close(o_direct["res5"], ref)


def test_cirkd_mobilenetv2_key_map():
    from textkd.models.backbones import mobilenetv2_layout, mobilenetv2_to_timm_key

    state, _ = _cirkd_mbv2_state()
    assert mobilenetv2_layout(state) == "cirkd"
    assert mobilenetv2_layout(torchvision.models.mobilenet_v2().state_dict()) == "torchvision"
    assert mobilenetv2_layout(build_backbone("mobilenetv2").state_dict()) == ""
    # the same key means different modules in the two layouts
    assert mobilenetv2_to_timm_key("features.2.conv.3.weight", "cirkd") == (
        "blocks.1.0.conv_dw.weight"
    )
    assert mobilenetv2_to_timm_key("features.2.conv.3.weight", "torchvision") == (
        "blocks.1.0.bn3.weight"
    )
    assert mobilenetv2_to_timm_key("features.1.conv.4.bias", "cirkd") == "blocks.0.0.bn2.bias"
    assert mobilenetv2_to_timm_key("features.18.1.running_mean", "cirkd") == "bn2.running_mean"
    assert mobilenetv2_to_timm_key("classifier.1.bias", "cirkd") is None
    with pytest.raises(KeyError, match="features.1.conv.6.weight"):
        mobilenetv2_to_timm_key("features.1.conv.6.weight", "cirkd")  # block 1 has no conv.6
    with pytest.raises(KeyError, match="out of range"):
        mobilenetv2_to_timm_key("features.19.0.weight", "cirkd")


def test_cirkd_mobilenetv2_converts_like_it_loads(tmp_path):
    """tools/convert_checkpoint.py recognises the CIRKD layout ("cirkd-backbone", CIRKD input
    settings) and writes the tensors the direct load gives."""
    state, _ = _cirkd_mbv2_state()
    state.update(_mbv2_extras("cirkd"))
    src = tmp_path / "mobilenetv2-imagenet.pth"
    torch.save(state, src)
    assert detect_format(state) == "cirkd-backbone"
    conv = _convert_to_file(str(src), str(tmp_path / "converted.pth"))
    assert conv.source_format == "cirkd-mobilenetv2"
    assert conv.settings["MODEL.SEG_BACKBONE.ARCH"] == "mobilenetv2"
    assert conv.settings["INPUT.FORMAT"] == "BGR"
    assert conv.settings["MODEL.PIXEL_MEAN"] == list(CIRKD_PIXEL_MEAN)
    assert set(conv.dropped) == {k for k in _mbv2_extras("cirkd")}
    direct = build_backbone("mobilenetv2", pretrained=str(src)).state_dict()
    converted = build_backbone("mobilenetv2", pretrained=str(tmp_path / "converted.pth"))
    for k, v in converted.state_dict().items():
        assert torch.equal(v, direct[k]), k


def _mbv2_error(tmp_path, state, arch="mobilenetv2") -> str:
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        build_backbone(arch, pretrained=str(path))
    assert str(path) in str(info.value)
    return str(info.value)


def test_mobilenetv2_file_refuses_with_key_names(tmp_path):
    """Keys other than the 1x1 conv / classifier are never dropped: an unknown key, a missing
    key and a shape mismatch are errors naming the keys (the file's names where renamed); a
    MobileNetV2 file for a ResNet backbone says which ARCH fits."""
    state, _ = _cirkd_mbv2_state()
    bad = dict(state, **{"features.3.conv.9.weight": torch.zeros(3)})
    assert "unexpected keys" in _mbv2_error(tmp_path, bad)
    assert "features.3.conv.9.weight" in _mbv2_error(tmp_path, bad)
    missing = {k: v for k, v in state.items() if k != "features.5.conv.6.weight"}
    assert "blocks.2.1.conv_pwl.weight" in _mbv2_error(tmp_path, missing)
    wrong = dict(state, **{"features.5.conv.6.weight": torch.zeros(32, 192, 3, 3)})
    msg = _mbv2_error(tmp_path, wrong)
    assert "shape mismatches" in msg and "features.5.conv.6.weight" in msg
    msg = _mbv2_error(tmp_path, state, arch="resnet18")
    assert "MODEL.SEG_BACKBONE.ARCH to mobilenetv2" in msg


# numbers compared with fixtures computed in one thread (conftest.single_thread)
pytestmark = pytest.mark.single_thread
