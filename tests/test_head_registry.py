"""The core head registry (no detectron2): every head built by ``build_segmentor`` has the state-dict
keys and computes the outputs it had before the registry refactor (fixture recorded by
tests/fixtures/make_head_equivalence_fixture.py at commit 8e4d423), and a head is one class
registered once."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _reference_weights import deterministic_state_dict
from textkd.models.registry import (
    D2_HEAD_NAMES,
    HEADS,
    build_head,
    build_head_from_config,
    cfg_value,
    register_head,
)
from textkd.models.segmentor import build_segmentor

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from head_equivalence_cases import CASES, inputs  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "reference" / "head_equivalence.pt"


@pytest.fixture(scope="module")
def recorded():
    return torch.load(FIXTURE, weights_only=False)


def check_against_record(model: nn.Module, name: str, kind: str, recorded: dict) -> None:
    """State-dict keys (order included) and shapes as recorded; with the deterministic weights,
    the eval outputs equal the recorded ones."""
    entry = recorded[name]
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(entry["shapes"])
    assert shapes == entry["shapes"]
    model.load_state_dict(deterministic_state_dict(entry["shapes"]), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(inputs(CASES[name]), with_aux=True)
    rec = entry[kind]
    torch.testing.assert_close(out.logits, rec["logits"], rtol=1e-5, atol=1e-5)
    assert list(out.feature.shape) == rec["feature_shape"]
    torch.testing.assert_close(out.feature[:, :4], rec["feature_head"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.feature.mean(1), rec["feature_mean"], rtol=1e-5, atol=1e-5)
    if rec["aux_logits"] is None:
        assert out.aux_logits is None
    else:
        torch.testing.assert_close(out.aux_logits, rec["aux_logits"], rtol=1e-5, atol=1e-5)
    assert set(out.extras) == set(rec["extras"])
    for key, value in rec["extras"].items():
        torch.testing.assert_close(out.extras[key], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_core_heads_unchanged(name, recorded):
    check_against_record(build_segmentor(**CASES[name]["core"]), name, "core", recorded)


def test_every_head_registered_once_with_its_d2_name():
    assert D2_HEAD_NAMES == {
        "deeplabv3": "TextKDDeepLabV3Head",
        "pspnet": "TextKDPSPHead",
        "fcn": "TextKDFCNHead",
        "ocrnet": "TextKDOCRHead",
        "stdc": "TextKDSTDCHead",
    }
    for name in D2_HEAD_NAMES:
        assert isinstance(HEADS[name], type) and hasattr(HEADS[name], "from_config")
    with pytest.raises(ValueError, match="already registered"):
        register_head("deeplabv3", HEADS["fcn"])


def test_from_config_plain_mapping_and_defaults():
    # a plain dict of MODEL.SEM_SEG_HEAD keys; the missing ones take the config defaults
    head = build_head_from_config(
        "deeplabv3", {"NUM_CLASSES": 3, "CHANNELS": 16}, {"res4": 64, "res5": 96}
    )
    assert (head.in_channels, head.out_channels, head.num_classes) == (96, 16, 3)
    assert head.aspp.project[3].p == 0.5
    assert [getattr(head.aspp, f"b{i}").block[0].dilation for i in (1, 2, 3)] == [
        (12, 12),
        (24, 24),
        (36, 36),
    ]
    with pytest.raises(KeyError, match="NUM_CLASSES"):
        build_head_from_config("deeplabv3", {}, {"res5": 96})
    with pytest.raises(ValueError, match="IN_FEATURE='res6'"):
        build_head_from_config("pspnet", {"NUM_CLASSES": 3, "IN_FEATURE": "res6"}, {"res5": 8})
    with pytest.raises(ValueError, match=r"AUX_IN_FEATURE='res3' \(OCR soft regions\)"):
        build_head_from_config(
            "ocrnet", {"NUM_CLASSES": 3, "AUX_IN_FEATURE": "res3"}, {"res4": 8, "res5": 16}
        )
    assert cfg_value({"DROPOUT": 0.3}, "DROPOUT") == 0.3
    assert cfg_value({}, "DROPOUT") == 0.1


def test_unknown_keyword_is_named():
    with pytest.raises(ValueError, match=r"takes no keyword \['num_convz'\]"):
        build_head("fcn", in_channels=32, num_classes=3, num_convz=1)
    # constructor arguments that are not config keys pass through
    fcn = build_head("fcn", in_channels=32, num_classes=3, channels=8, num_convs=1)
    assert len(fcn.convs) == 1


def test_new_head_is_one_registered_class():
    class TinyHead(nn.Module):
        DEFAULT_CHANNELS = (16, 8)

        @classmethod
        def from_config(cls, node, input_channels, norm_layer=None):
            feature = cfg_value(node, "IN_FEATURE")
            return {
                "in_channels": input_channels[feature],
                "num_classes": int(cfg_value(node, "NUM_CLASSES")),
                "in_feature": feature,
            }

        def __init__(self, in_channels, num_classes, in_feature="res5"):
            super().__init__()
            self.in_feature, self.in_channels, self.num_classes = (
                in_feature,
                in_channels,
                num_classes,
            )
            self.out_channels = 8
            self.proj = nn.Conv2d(in_channels, 8, 1)
            self.cls = nn.Conv2d(8, num_classes, 1)

        def forward(self, features):
            f = self.proj(features[self.in_feature])
            return self.cls(f), f

    register_head("tiny_registry_test", d2_name="TextKDTinyRegistryTestHead")(TinyHead)
    try:
        model = build_segmentor(head="tiny_registry_test", backbone="resnet18", num_classes=3)
        assert isinstance(model.head, TinyHead)
        assert model.eval()(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3, 4, 4)
    finally:
        HEADS.pop("tiny_registry_test")
        D2_HEAD_NAMES.pop("tiny_registry_test")


def test_aspp_dropout_key():
    # MODEL.SEM_SEG_HEAD.ASPP_DROPOUT reaches the ASPP projection's dropout (default 0.5)
    node = {"NUM_CLASSES": 3, "CHANNELS": 8, "ASPP_DROPOUT": 0.01}
    head = build_head_from_config("deeplabv3", node, {"res5": 16})
    assert head.aspp.project[3].p == 0.01
    assert head.block[3].p == 0.1  # DROPOUT, the classifier's, is separate
    core = build_segmentor(head="deeplabv3", backbone="resnet18", num_classes=3, aspp_dropout=0.2)
    assert core.head.aspp.project[3].p == 0.2
    assert build_segmentor(backbone="resnet18", num_classes=3).head.aspp.project[3].p == 0.5


# numbers compared with fixtures computed in one thread (conftest.single_thread)
pytestmark = pytest.mark.single_thread
