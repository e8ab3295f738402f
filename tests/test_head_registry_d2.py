"""The detectron2 side of the head registry: every core head is registered in
SEM_SEG_HEADS_REGISTRY under its (unchanged) name by one generic adapter, and the cfg-built
models have the state-dict keys and outputs recorded before the refactor."""

import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY  # noqa: E402
from test_head_registry import check_against_record  # noqa: E402
from textkd.d2 import build as d2_build  # noqa: E402
from textkd.d2.build import build_segmentor_from_cfg, register_d2_heads  # noqa: E402
from textkd.models.heads import DeepLabV3Head  # noqa: E402
from textkd.models.registry import D2_HEAD_NAMES, HEADS, cfg_value, register_head  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from head_equivalence_cases import CASES, build_cfg  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "reference" / "head_equivalence.pt"


@pytest.fixture(scope="module")
def recorded():
    return torch.load(FIXTURE, weights_only=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cfg_heads_unchanged(name, recorded):
    model = build_segmentor_from_cfg(build_cfg(CASES[name]["cfg"]))
    check_against_record(model, name, "d2", recorded)


def test_d2_names_come_from_the_core_registry():
    for d2_name in D2_HEAD_NAMES.values():
        assert d2_name in SEM_SEG_HEADS_REGISTRY
    head = build_segmentor_from_cfg(build_cfg(CASES["deeplabv3"]["cfg"])).head
    assert type(head) is DeepLabV3Head  # the core class itself, nothing detectron2 in it


def test_old_class_import_warns():
    with pytest.warns(DeprecationWarning, match="TextKDPSPHead"):
        entry = d2_build.TextKDPSPHead
    assert entry is SEM_SEG_HEADS_REGISTRY.get("TextKDPSPHead")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            d2_build.TextKDNoSuchHead  # noqa: B018


def test_new_core_head_needs_no_d2_code():
    class TinyCfgHead(nn.Module):
        @classmethod
        def from_config(cls, node, input_channels, norm_layer=None):
            return {"in_channels": input_channels["res5"], "k": int(cfg_value(node, "NUM_CLASSES"))}

        def __init__(self, in_channels, k):
            super().__init__()
            self.in_feature, self.in_channels, self.num_classes = "res5", in_channels, k
            self.out_channels = in_channels
            self.cls = nn.Conv2d(in_channels, k, 1)

        def forward(self, features):
            f = features["res5"]
            return self.cls(f), f

    register_head("tiny_cfg_test", d2_name="TextKDTinyCfgTestHead")(TinyCfgHead)
    try:
        cfg = build_cfg({"MODEL.SEM_SEG_HEAD.NAME": "TextKDTinyCfgTestHead"})
        model = build_segmentor_from_cfg(cfg)
        assert isinstance(model.head, TinyCfgHead) and model.head.num_classes == 5
        assert "TextKDTinyCfgTestHead" in register_d2_heads()
    finally:
        HEADS.pop("tiny_cfg_test")
        D2_HEAD_NAMES.pop("tiny_cfg_test")
        SEM_SEG_HEADS_REGISTRY._obj_map.pop("TextKDTinyCfgTestHead")


def test_aspp_dropout_from_cfg():
    cfg = build_cfg(CASES["deeplabv3"]["cfg"])
    assert cfg.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT == 0.5
    assert build_segmentor_from_cfg(cfg).head.aspp.project[3].p == 0.5
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.01
    assert build_segmentor_from_cfg(cfg).head.aspp.project[3].p == 0.01
