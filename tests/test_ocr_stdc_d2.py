"""Detectron2 layer of OCRNet/STDC and of converted checkpoints: registry names, CfgNode
translation (same state dict as the core builder), the repository configs, and a converted CIRKD
checkpoint loading as MODEL.WEIGHTS with the settings the converter prints."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model  # noqa: E402
from textkd.config import add_textkd_config  # noqa: E402
from textkd.d2 import meta_arch  # noqa: E402, F401 - registers the meta-architectures
from textkd.d2.build import build_segmentor_from_cfg  # noqa: E402
from textkd.engine import TextKDCheckpointer, load_config  # noqa: E402
from textkd.models.convert import (  # noqa: E402
    convert_checkpoint,
    save_converted,
    to_cirkd_state_dict,
)
from textkd.models.segmentor import build_segmentor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K = 6


def _cfg(**extra):
    cfg = get_cfg()
    add_textkd_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = K
    cfg.DATASETS.TRAIN = ()
    for key, value in extra.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registered_heads():
    assert "TextKDOCRHead" in SEM_SEG_HEADS_REGISTRY
    assert "TextKDSTDCHead" in SEM_SEG_HEADS_REGISTRY


def test_ocr_cfg_matches_core():
    cfg = _cfg(
        **{
            "MODEL.SEM_SEG_HEAD.NAME": "TextKDOCRHead",
            "MODEL.SEG_BACKBONE.ARCH": "resnet18v1s",
            "MODEL.SEM_SEG_HEAD.CHANNELS": 64,
            "MODEL.SEM_SEG_HEAD.OCR_KEY_CHANNELS": 32,
            "MODEL.SEM_SEG_HEAD.AUX": False,
            "MODEL.SEM_SEG_HEAD.AUX_CHANNELS": 48,
        }
    )
    from_cfg = build_segmentor_from_cfg(cfg)
    core = build_segmentor(
        head="ocrnet",
        backbone="resnet18v1s",
        num_classes=K,
        channels=64,
        ocr_key_channels=32,
        region_channels=48,
        aux=False,
    )
    assert _shapes(from_cfg) == _shapes(core)
    assert from_cfg.aux_head is None
    assert from_cfg.head.soft_region.in_feature == "res4"
    from_cfg.train()
    out = from_cfg(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, K, 8, 8)
    assert out.extras["ocr_soft_regions"].shape == (2, K, 8, 8)


def test_ocr_cfg_default_widths_match_core():
    cfg = _cfg(
        **{
            "MODEL.SEM_SEG_HEAD.NAME": "TextKDOCRHead",
            "MODEL.SEG_BACKBONE.ARCH": "mobilenetv2",
            "MODEL.SEM_SEG_HEAD.CHANNELS": 0,
            "MODEL.SEM_SEG_HEAD.OCR_KEY_CHANNELS": 0,
            "MODEL.SEM_SEG_HEAD.AUX": False,
            "MODEL.SEM_SEG_HEAD.AUX_CHANNELS": 0,
        }
    )
    from_cfg = build_segmentor_from_cfg(cfg)
    core = build_segmentor(head="ocrnet", backbone="mobilenetv2", num_classes=K, aux=False)
    assert _shapes(from_cfg) == _shapes(core)
    # MobileNetV2: res4 has 96 channels -> region FCN width 24; pixel/key widths 256/128
    assert from_cfg.head.soft_region.in_channels == 96
    assert from_cfg.head.soft_region.out_channels == 24
    assert (from_cfg.head.out_channels, from_cfg.head.key_channels) == (256, 128)


def test_stdc_cfg_matches_core():
    cfg = _cfg(
        **{
            "MODEL.SEM_SEG_HEAD.NAME": "TextKDSTDCHead",
            "MODEL.SEG_BACKBONE.ARCH": "stdc1",
            "MODEL.SEG_BACKBONE.OUTPUT_STRIDE": 32,
            "MODEL.SEM_SEG_HEAD.CHANNELS": 0,  # reference width 256
            "MODEL.SEM_SEG_HEAD.AUX_CHANNELS": 128,
        }
    )
    from_cfg = build_segmentor_from_cfg(cfg)
    core = build_segmentor(
        head="stdc", backbone="stdc1", num_classes=K, output_stride=32, aux_channels=128
    )
    assert _shapes(from_cfg) == _shapes(core)
    assert from_cfg.output_stride == 8
    from_cfg.train()
    out = from_cfg(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, K, 8, 8)
    assert out.extras["detail_logits"].shape == (2, 1, 8, 8)
    # no detail weight: no detail branch (nothing unused under DDP)
    cfg.MODEL.SEM_SEG_HEAD.STDC_DETAIL_WEIGHT = 0.0
    no_detail = build_segmentor_from_cfg(cfg)
    assert no_detail.head.conv_out_sp8 is None
    assert not any(k.startswith("head.conv_out_sp8") for k in no_detail.state_dict())


def test_stdc_cfg_needs_output_stride_32():
    cfg = _cfg(**{"MODEL.SEM_SEG_HEAD.NAME": "TextKDSTDCHead", "MODEL.SEG_BACKBONE.ARCH": "stdc1"})
    with pytest.raises(ValueError, match="output_stride=32"):
        build_segmentor_from_cfg(cfg)


MY_CONFIGS = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "configs").rglob("*.yaml")
    if p.name.startswith(("ocrnet_", "stdc1_")) or p.name.endswith("cirkd_converted_teacher.yaml")
)


def test_my_configs_exist():
    names = {Path(p).name for p in MY_CONFIGS}
    assert {"ocrnet_r18_baseline.yaml", "stdc1_baseline.yaml"} <= names
    assert "deeplabv3_r101_cirkd_converted_teacher.yaml" in names
    for stem in ("ocrnet_r18_lad", "stdc1_lad"):
        assert f"configs/Cityscapes/lad/{stem}_teacher_40k_bs16.yaml" in MY_CONFIGS
        assert f"configs/Cityscapes/lad/{stem}_cwd_40k_bs16.yaml" in MY_CONFIGS


@pytest.mark.parametrize("rel", [p for p in MY_CONFIGS if "/Synthetic/" in p])
def test_synthetic_configs_build(rel):
    cfg = load_config(str(REPO / rel))
    model = build_segmentor_from_cfg(cfg)
    model.train()
    crop = cfg.INPUT.CROP.SIZE
    out = model(torch.randn(2, 3, crop[0], crop[1]))
    assert out.logits.shape[-2:] == (crop[0] // 8, crop[1] // 8)


@pytest.mark.parametrize("rel", [p for p in MY_CONFIGS if "/Synthetic/" not in p])
def test_reference_configs_settings(rel):
    cfg = load_config(str(REPO / rel))
    h = cfg.MODEL.SEM_SEG_HEAD
    if "ocrnet" in rel:
        assert h.NAME == "TextKDOCRHead" and not h.AUX
        assert cfg.MODEL.SEG_BACKBONE.ARCH == "resnet18v1s"
    elif "stdc1" in rel:
        assert h.NAME == "TextKDSTDCHead" and h.STDC_DETAIL_WEIGHT == 1.0
        assert cfg.MODEL.SEG_BACKBONE.ARCH == "stdc1"
        assert cfg.MODEL.SEG_BACKBONE.OUTPUT_STRIDE == 32
    else:  # the converted CIRKD teacher: CIRKD's input statistics and head widths
        assert cfg.INPUT.FORMAT == "BGR" and list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
        assert cfg.MODEL.SEG_BACKBONE.ARCH == "resnet101v1s"
        assert (h.CHANNELS, h.AUX_CHANNELS) == (256, 256)
    if "_lad_teacher" in rel:
        assert cfg.MODEL.LAD.ENABLED and cfg.MODEL.SEG_BACKBONE.IN_CHANS == 4
    if "_lad_cwd" in rel:
        assert cfg.MODEL.META_ARCHITECTURE == "DistillSemanticSegmentor"
        tcfg = load_config(str(REPO / cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE))
        assert tcfg.MODEL.LAD.ENABLED
        assert tcfg.MODEL.SEM_SEG_HEAD.NAME == h.NAME
    # a model of these settings (random init, narrow) builds
    small = cfg.clone()
    small.MODEL.SEG_BACKBONE.PRETRAINED = ""
    with torch.device("meta"):
        build_segmentor_from_cfg(small)


def test_converted_cirkd_checkpoint_loads_as_model_weights(tmp_path):
    """Convert a CIRKD PSPNet-R18 (random tensors with the recorded names), apply the printed
    overrides to a config and load the file with TextKD's strict checkpointer."""
    with open(REPO / "tests" / "data" / "convert" / "cirkd_pspnet_r18.json") as f:
        keys = json.load(f)["keys"]
    g = torch.Generator().manual_seed(0)
    source = {
        k: (
            torch.randint(0, 9, (), generator=g)
            if k.endswith("num_batches_tracked")
            else torch.rand(shape, generator=g) + 0.5
        )
        for k, shape in keys
    }
    conv = convert_checkpoint(source)
    path = save_converted(conv, str(tmp_path / "cirkd_psp_r18.pth"))
    cfg = _cfg()
    cfg.merge_from_list(conv.config_opts())
    cfg.MODEL.META_ARCHITECTURE = "TextKDSemanticSegmentor"
    model = build_model(cfg)
    TextKDCheckpointer(model).load(path, checkpointables=[])
    back = to_cirkd_state_dict(model.segmentor.state_dict())
    assert all(torch.equal(back[k], v) for k, v in source.items())
    assert model.pixel_std.flatten().tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "settings, key",
    [
        (
            {
                "MODEL.SEM_SEG_HEAD.NAME": "TextKDOCRHead",
                "MODEL.SEG_BACKBONE.ARCH": "resnet18v1s",
                "MODEL.SEM_SEG_HEAD.CHANNELS": 32,
                "MODEL.SEM_SEG_HEAD.OCR_KEY_CHANNELS": 16,
                "MODEL.SEM_SEG_HEAD.AUX": False,
            },
            "loss_ocr_regions",
        ),
        (
            {
                "MODEL.SEM_SEG_HEAD.NAME": "TextKDSTDCHead",
                "MODEL.SEG_BACKBONE.ARCH": "stdc1",
                "MODEL.SEG_BACKBONE.OUTPUT_STRIDE": 32,
                "MODEL.SEM_SEG_HEAD.CHANNELS": 32,
                "MODEL.SEM_SEG_HEAD.AUX_CHANNELS": 32,
            },
            "loss_detail",
        ),
    ],
)
def test_training_step_reports_the_heads_own_loss(settings, key):
    """The meta-architecture's task loss calls the head's ``losses()``: the training step of an
    OCRNet / STDC model reports that head's loss, equal to ``head.losses`` on the same output."""
    cfg = _cfg(**settings)
    cfg.MODEL.META_ARCHITECTURE = "TextKDSemanticSegmentor"
    model = build_model(cfg)
    model.train()
    torch.manual_seed(0)
    image = (torch.rand(3, 64, 64) * 255).to(torch.uint8)
    label = torch.randint(0, K, (64, 64))
    batch = [{"image": image, "sem_seg": label, "height": 64, "width": 64}] * 2
    losses = model(batch)
    assert key in losses and torch.isfinite(losses[key]) and losses[key] > 0
    # the same value from the head itself, on an output of the same (seeded) forward
    images, targets = model.preprocess(batch, need_targets=True)
    out = model.run_segmentor(images.tensor, with_aux=True)
    own = model.segmentor.head.losses(
        out, targets, aux_weight=model.aux_weight, detail_weight=model.detail_weight
    )
    assert set(own) == {key}
    again = model.task_losses(out, targets)
    torch.testing.assert_close(again[key], own[key])
