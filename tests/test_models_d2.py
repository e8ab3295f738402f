"""Detectron2 layer of the models: registry names, CfgNode translation, checkpoint portability."""

import pytest

pytestmark = pytest.mark.detectron2

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, SEM_SEG_HEADS_REGISTRY, Backbone  # noqa: E402
from detectron2.modeling import build_backbone as d2_build_backbone  # noqa: E402
from textkd.config import add_textkd_config  # noqa: E402
from textkd.d2.build import (  # noqa: E402
    build_segmentor_from_cfg,
    check_num_classes,
    resolve_norm,
)
from textkd.models.segmentor import build_segmentor  # noqa: E402

K = 7


def _cfg(head="TextKDDeepLabV3Head", arch="resnet18d", channels=128, **extra):
    cfg = get_cfg()
    add_textkd_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.NAME = head
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = K
    cfg.MODEL.SEM_SEG_HEAD.CHANNELS = channels
    cfg.MODEL.SEG_BACKBONE.ARCH = arch
    cfg.DATASETS.TRAIN = ()
    for key, value in extra.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg


def test_registered_names():
    assert "TextKDTimmBackbone" in BACKBONE_REGISTRY
    for name in ("TextKDDeepLabV3Head", "TextKDPSPHead", "TextKDFCNHead"):
        assert name in SEM_SEG_HEADS_REGISTRY


@pytest.mark.parametrize(
    "head_name,head,arch,channels,os_",
    [
        ("TextKDDeepLabV3Head", "deeplabv3", "resnet18d", 128, 8),
        ("TextKDPSPHead", "pspnet", "mobilenetv2", 0, 16),  # 0 = reference width
        ("TextKDFCNHead", "fcn", "resnet18v1s", 64, 8),
    ],
)
def test_cfg_and_core_state_dicts_match(head_name, head, arch, channels, os_):
    cfg = _cfg(head_name, arch, channels, **{"MODEL.SEG_BACKBONE.OUTPUT_STRIDE": os_})
    from_cfg = build_segmentor_from_cfg(cfg)
    core = build_segmentor(
        head=head,
        backbone=arch,
        num_classes=K,
        output_stride=os_,
        channels=channels or None,
    )
    sd_cfg, sd_core = from_cfg.state_dict(), core.state_dict()
    assert list(sd_cfg) == list(sd_core)
    assert {k: v.shape for k, v in sd_cfg.items()} == {k: v.shape for k, v in sd_core.items()}
    # a core checkpoint loads strictly into the cfg-built model and computes the same thing
    from_cfg.load_state_dict(sd_core, strict=True)
    x = torch.randn(2, 3, 32, 32)
    core.eval()
    from_cfg.eval()
    with torch.no_grad():
        a, b = core(x, with_aux=True), from_cfg(x, with_aux=True)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.aux_logits, b.aux_logits)
    assert from_cfg.output_channels == core.output_channels


def test_d2_build_backbone():
    cfg = _cfg(**{"MODEL.BACKBONE.NAME": "TextKDTimmBackbone", "MODEL.SEG_BACKBONE.IN_CHANS": 4})
    bb = d2_build_backbone(cfg)
    assert isinstance(bb, Backbone)
    shapes = bb.output_shape()
    assert [shapes[k].channels for k in ("res2", "res3", "res4", "res5")] == [64, 128, 256, 512]
    assert [shapes[k].stride for k in ("res2", "res3", "res4", "res5")] == [4, 8, 8, 8]
    feats = bb(torch.randn(2, 4, 32, 32))
    assert feats["res5"].shape == (2, 512, 4, 4)
    assert list(bb.state_dict())[0] == "conv1.0.weight"


def test_aux_settings_from_cfg():
    cfg = _cfg(**{"MODEL.SEM_SEG_HEAD.AUX": False})
    assert build_segmentor_from_cfg(cfg).aux_head is None
    cfg = _cfg(**{"MODEL.SEM_SEG_HEAD.AUX_CHANNELS": 0})
    model = build_segmentor_from_cfg(cfg)
    assert model.aux_head.block[0].out_channels == 256 // 4  # CIRKD width of res4 / 4
    cfg = _cfg(**{"MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE": "res9"})
    with pytest.raises(ValueError, match="res9"):
        build_segmentor_from_cfg(cfg)


def test_unknown_names():
    with pytest.raises(ValueError) as err:
        build_segmentor_from_cfg(_cfg(head="TextKDUNetHead"))
    msg = str(err.value)
    assert "TextKDUNetHead" in msg
    for name in ("TextKDDeepLabV3Head", "TextKDPSPHead", "TextKDFCNHead"):
        assert name in msg
    with pytest.raises(ValueError, match="resnet18d"):
        build_segmentor_from_cfg(_cfg(arch="resnet19"))
    with pytest.raises(ValueError, match="NORM"):
        build_segmentor_from_cfg(_cfg(**{"MODEL.SEG_BACKBONE.NORM": "GN"}))
    with pytest.raises(ValueError, match="not_a_backbone"):
        build_segmentor_from_cfg(_cfg(**{"MODEL.BACKBONE.NAME": "not_a_backbone"}))


def test_norm_resolution():
    assert resolve_norm(_cfg()) == "BN"  # auto, one process
    model = build_segmentor_from_cfg(_cfg(**{"MODEL.SEG_BACKBONE.NORM": "SyncBN"}))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    frozen = build_segmentor_from_cfg(_cfg(**{"MODEL.SEG_BACKBONE.FROZEN_BN": True}))
    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.backbone.modules()
    )


@pytest.fixture
def toy_dataset():
    name = "textkd_test_models_toy_sem_seg"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_num_classes_mismatch(toy_dataset):
    cfg = _cfg()
    cfg.DATASETS.TRAIN = (toy_dataset,)
    with pytest.raises(ValueError) as err:
        check_num_classes(cfg)
    msg = str(err.value)
    assert toy_dataset in msg and str(K) in msg and "3 stuff_classes" in msg
    with pytest.raises(ValueError, match=toy_dataset):
        build_segmentor_from_cfg(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    check_num_classes(cfg)  # agrees: no error
    cfg.DATASETS.TRAIN = ("textkd_test_models_unregistered",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = K
    check_num_classes(cfg)  # unknown dataset: nothing to compare with
