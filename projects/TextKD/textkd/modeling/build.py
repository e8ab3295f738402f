"""Detectron2 registration of the TextKD backbone and heads (thin layer over the core).

Registers ``TextKDTimmBackbone`` in ``BACKBONE_REGISTRY`` and ``TextKDDeepLabV3Head`` /
``TextKDPSPHead`` / ``TextKDFCNHead`` in ``SEM_SEG_HEADS_REGISTRY``; each only translates
``MODEL.SEG_BACKBONE.*`` / ``MODEL.SEM_SEG_HEAD.*`` into the arguments of the framework-free
classes. ``build_segmentor_from_cfg(cfg)`` assembles the core :class:`Segmentor`; its state-dict
keys are identical to those of ``build_segmentor(...)`` with the same settings.
"""

from __future__ import annotations

import logging
from typing import Any

from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, SEM_SEG_HEADS_REGISTRY, Backbone
from detectron2.modeling import build_backbone as d2_build_backbone
from detectron2.utils import comm
from torch import nn

from .backbones import STAGE_NAMES, SegBackbone, build_backbone, norm_name
from .heads import AuxFCNHead, DeepLabV3Head, FCNHead, PSPHead
from .ocrnet import OCRHead, default_ocr_channels
from .segmentor import Segmentor, default_head_channels
from .stdc import STDCHead

logger = logging.getLogger(__name__)

__all__ = [
    "TextKDTimmBackbone",
    "TextKDDeepLabV3Head",
    "TextKDPSPHead",
    "TextKDFCNHead",
    "TextKDOCRHead",
    "TextKDSTDCHead",
    "build_segmentor_from_cfg",
    "build_aux_head_from_cfg",
    "check_num_classes",
    "resolve_norm",
    "as_d2_backbone",
]

# detectron2's default MODEL.BACKBONE.NAME: a TextKD config that does not name a backbone gets
# the TextKD timm backbone described by MODEL.SEG_BACKBONE
_D2_DEFAULT_BACKBONE = "build_resnet_backbone"


def resolve_norm(cfg: CfgNode) -> str:
    """``MODEL.SEG_BACKBONE.NORM`` as "BN" or "SyncBN" (:func:`~.backbones.norm_name` with this
    process group's world size). Used for the backbone and every head."""
    return norm_name(cfg.MODEL.SEG_BACKBONE.NORM, comm.get_world_size(), cfg.MODEL.DEVICE)


# --------------------------------------------------------------------------- backbone


class _D2SegBackbone(Backbone):
    """Mixin that makes a core :class:`SegBackbone` a detectron2 ``Backbone`` (adds
    ``output_shape``) without changing its modules or state-dict keys."""

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self.out_channels[name], stride=self.out_strides[name])
            for name in STAGE_NAMES
            if name in self.out_channels
        }


_D2_CLASSES: dict[type, type] = {}


def as_d2_backbone(core: SegBackbone) -> Backbone:
    """Return ``core`` itself, its class extended by detectron2's ``Backbone`` interface
    (``isinstance(core, Backbone)``, ``output_shape()``), parameters and keys untouched."""
    cls = type(core)
    if isinstance(core, Backbone):
        return core
    d2_cls = _D2_CLASSES.get(cls)
    if d2_cls is None:
        name = f"D2{cls.__name__}"
        d2_cls = type(name, (cls, _D2SegBackbone), {"__module__": __name__})
        d2_cls.__qualname__ = name
        globals()[name] = d2_cls  # picklable by name
        _D2_CLASSES[cls] = d2_cls
    core.__class__ = d2_cls
    return core


def backbone_kwargs_from_cfg(cfg: CfgNode) -> dict[str, Any]:
    """Arguments of the core ``build_backbone`` from ``MODEL.SEG_BACKBONE.*``."""
    b = cfg.MODEL.SEG_BACKBONE
    return {
        "arch": b.ARCH,
        "output_stride": int(b.OUTPUT_STRIDE),
        "in_chans": int(b.IN_CHANS),
        "pretrained": b.PRETRAINED,
        "frozen_bn": bool(b.FROZEN_BN),
        "extra_chans_init_std": float(b.EXTRA_CHANS_INIT_STD),
        "norm_layer": resolve_norm(cfg),
    }


@BACKBONE_REGISTRY.register()
@configurable(from_config=lambda cfg, input_shape=None: backbone_kwargs_from_cfg(cfg))
def TextKDTimmBackbone(  # noqa: N802 - the registry name
    *,
    arch: str,
    output_stride: int = 8,
    in_chans: int = 3,
    pretrained: str = "",
    frozen_bn: bool = False,
    extra_chans_init_std: float = 0.1,
    norm_layer: str = "BN",
) -> Backbone:
    """The core timm backbone as a detectron2 ``Backbone`` (``MODEL.SEG_BACKBONE.*``)."""
    core = build_backbone(
        arch,
        output_stride=output_stride,
        in_chans=in_chans,
        pretrained=pretrained,
        frozen_bn=frozen_bn,
        extra_chans_init_std=extra_chans_init_std,
        norm_layer=norm_layer,
    )
    return as_d2_backbone(core)


# --------------------------------------------------------------------------- heads


def _feature_channels(
    input_shape: dict[str, ShapeSpec], key: str, feature: str, role: str = ""
) -> int:
    """Channels of backbone output ``feature`` (the value of ``MODEL.SEM_SEG_HEAD.{key}``);
    ValueError naming the key, its value (and ``role``) and the available outputs when the
    backbone has no such output."""
    if feature not in input_shape:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.{key}={feature!r}{role} is not a backbone output; "
            f"available: {list(input_shape)}"
        )
    return int(input_shape[feature].channels)


def _head_common_args(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
    h = cfg.MODEL.SEM_SEG_HEAD
    return {
        "in_channels": _feature_channels(input_shape, "IN_FEATURE", h.IN_FEATURE),
        "num_classes": int(h.NUM_CLASSES),
        "dropout": float(h.DROPOUT),
        "norm_layer": resolve_norm(cfg),
        "in_feature": h.IN_FEATURE,
    }


def _head_args(
    cfg: CfgNode, input_shape: dict[str, ShapeSpec], head: str, **extra: Any
) -> dict[str, Any]:
    """The common head arguments, ``channels`` = CHANNELS (<= 0: the reference width of
    ``head``, :func:`default_head_channels`) and ``extra``."""
    args = _head_common_args(cfg, input_shape)
    ch = int(cfg.MODEL.SEM_SEG_HEAD.CHANNELS)
    args["channels"] = ch if ch > 0 else default_head_channels(head, args["in_channels"])
    args.update(extra)
    return args


class _ConfigurableHead:
    """Mixin of the registered heads: ``Head(cfg, input_shape)`` calls the core head's
    constructor with ``from_config(cfg, input_shape)``; ``Head(**kwargs)`` calls it directly."""

    @configurable
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


@SEM_SEG_HEADS_REGISTRY.register()
class TextKDDeepLabV3Head(_ConfigurableHead, DeepLabV3Head):
    """:class:`DeepLabV3Head` from ``MODEL.SEM_SEG_HEAD`` (CHANNELS <= 0: reference width)."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        h = cfg.MODEL.SEM_SEG_HEAD
        return _head_args(
            cfg,
            input_shape,
            "deeplabv3",
            dilations=tuple(h.ASPP_DILATIONS),
            align_corners=bool(h.ALIGN_CORNERS),
        )


@SEM_SEG_HEADS_REGISTRY.register()
class TextKDPSPHead(_ConfigurableHead, PSPHead):
    """:class:`PSPHead` from ``MODEL.SEM_SEG_HEAD`` (CHANNELS <= 0: reference width)."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        h = cfg.MODEL.SEM_SEG_HEAD
        return _head_args(
            cfg, input_shape, "pspnet", bins=tuple(h.PSP_BINS), align_corners=bool(h.ALIGN_CORNERS)
        )


@SEM_SEG_HEADS_REGISTRY.register()
class TextKDFCNHead(_ConfigurableHead, FCNHead):
    """:class:`FCNHead` (2 convs, input concatenated) from ``MODEL.SEM_SEG_HEAD``."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        return _head_args(cfg, input_shape, "fcn")


@SEM_SEG_HEADS_REGISTRY.register()
class TextKDOCRHead(_ConfigurableHead, OCRHead):
    """:class:`OCRHead` from ``MODEL.SEM_SEG_HEAD``: pixel branch on IN_FEATURE (CHANNELS <= 0:
    512 for >= 1024 input channels, else 256), query/key width OCR_KEY_CHANNELS (<= 0: half of
    CHANNELS' default), soft-region FCN on AUX_IN_FEATURE with AUX_CHANNELS hidden channels
    (<= 0: its input width // 4). The soft regions play the auxiliary head's role: OCRNet
    configs set AUX False."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        h = cfg.MODEL.SEM_SEG_HEAD
        args = _head_common_args(cfg, input_shape)
        region_in = _feature_channels(
            input_shape, "AUX_IN_FEATURE", h.AUX_IN_FEATURE, " (OCR soft regions)"
        )
        default_ch, default_key = default_ocr_channels(args["in_channels"])
        args["channels"] = int(h.CHANNELS) if int(h.CHANNELS) > 0 else default_ch
        key = int(h.OCR_KEY_CHANNELS)
        args["key_channels"] = key if key > 0 else default_key
        args["region_in_feature"] = h.AUX_IN_FEATURE
        args["region_in_channels"] = region_in
        args["region_channels"] = int(h.AUX_CHANNELS) if int(h.AUX_CHANNELS) > 0 else region_in // 4
        args["align_corners"] = bool(h.ALIGN_CORNERS)
        return args


@SEM_SEG_HEADS_REGISTRY.register()
class TextKDSTDCHead(_ConfigurableHead, STDCHead):
    """:class:`STDCHead` from ``MODEL.SEM_SEG_HEAD`` on the backbone's res3/res4/res5 (width
    CHANNELS, <= 0: 256); the detail branch exists when STDC_DETAIL_WEIGHT > 0."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        h = cfg.MODEL.SEM_SEG_HEAD
        missing = [k for k in ("res3", "res4", "res5") if k not in input_shape]
        if missing:
            raise ValueError(
                f"TextKDSTDCHead needs backbone outputs res3/res4/res5; missing {missing} in "
                f"{list(input_shape)}"
            )
        return {
            "in_channels": int(input_shape["res3"].channels),
            "mid_channels": int(input_shape["res4"].channels),
            "deep_channels": int(input_shape["res5"].channels),
            "num_classes": int(h.NUM_CLASSES),
            "channels": int(h.CHANNELS) if int(h.CHANNELS) > 0 else 256,
            "detail_channels": 64 if float(h.STDC_DETAIL_WEIGHT) > 0 else 0,
            "dropout": float(h.DROPOUT),
            "norm_layer": resolve_norm(cfg),
        }


def build_aux_head_from_cfg(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> AuxFCNHead | None:
    """The auxiliary FCN head of ``MODEL.SEM_SEG_HEAD.AUX*`` (None when AUX is False);
    AUX_CHANNELS <= 0 uses the CIRKD width ``in_channels // 4``."""
    h = cfg.MODEL.SEM_SEG_HEAD
    if not h.AUX:
        return None
    in_ch = _feature_channels(input_shape, "AUX_IN_FEATURE", h.AUX_IN_FEATURE)
    ch = int(h.AUX_CHANNELS)
    return AuxFCNHead(
        in_ch,
        int(h.NUM_CLASSES),
        channels=ch if ch > 0 else max(in_ch // 4, 1),
        dropout=float(h.DROPOUT),
        norm_layer=resolve_norm(cfg),
        in_feature=h.AUX_IN_FEATURE,
    )


# --------------------------------------------------------------------------- checks and assembly


def check_num_classes(cfg: CfgNode) -> None:
    """Raise ValueError when ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` differs from the number of
    ``stuff_classes`` in the metadata of a registered training dataset (``DATASETS.TRAIN``);
    datasets without metadata or without ``stuff_classes`` are not checked."""
    n = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    known = set(MetadataCatalog.list())
    for name in cfg.DATASETS.TRAIN:
        if name not in known:
            continue
        classes = MetadataCatalog.get(name).get("stuff_classes", None)
        if classes is None:
            continue
        if len(classes) != n:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {n} but dataset '{name}' has "
                f"{len(classes)} stuff_classes: set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}"
            )


def _build_backbone_from_cfg(cfg: CfgNode) -> Backbone:
    name = cfg.MODEL.BACKBONE.NAME
    if name in (_D2_DEFAULT_BACKBONE, "TextKDTimmBackbone"):
        return TextKDTimmBackbone(cfg, ShapeSpec(channels=int(cfg.MODEL.SEG_BACKBONE.IN_CHANS)))
    if name not in BACKBONE_REGISTRY:
        raise ValueError(
            f"unknown MODEL.BACKBONE.NAME {name!r}; registered: {sorted(k for k, _ in BACKBONE_REGISTRY)}"
        )
    return d2_build_backbone(cfg)


def build_segmentor_from_cfg(cfg: CfgNode) -> Segmentor:
    """Build the core :class:`Segmentor` described by a TextKD config: the backbone of
    ``MODEL.BACKBONE.NAME`` (detectron2's default name means ``TextKDTimmBackbone`` with
    ``MODEL.SEG_BACKBONE.*``), the head ``MODEL.SEM_SEG_HEAD.NAME`` and the auxiliary FCN head.
    Checks NUM_CLASSES against the training dataset's metadata first."""
    check_num_classes(cfg)
    head_name = cfg.MODEL.SEM_SEG_HEAD.NAME
    if head_name not in SEM_SEG_HEADS_REGISTRY:
        textkd = sorted(k for k, _ in SEM_SEG_HEADS_REGISTRY if k.startswith("TextKD"))
        raise ValueError(
            f"unknown MODEL.SEM_SEG_HEAD.NAME {head_name!r}; registered TextKD heads: {textkd} "
            f"(all registered: {sorted(k for k, _ in SEM_SEG_HEADS_REGISTRY)})"
        )
    backbone = _build_backbone_from_cfg(cfg)
    shapes = backbone.output_shape()
    head: nn.Module = SEM_SEG_HEADS_REGISTRY.get(head_name)(cfg, shapes)
    if not (hasattr(head, "out_channels") and hasattr(head, "num_classes")):
        raise ValueError(
            f"head {head_name!r} is not a TextKD segmentation head (forward(features) -> "
            "(logits, feature) with out_channels/num_classes attributes)"
        )
    aux_head = build_aux_head_from_cfg(cfg, shapes)
    model = Segmentor(
        backbone, head, aux_head, align_corners=bool(cfg.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS)
    )
    logger.info(
        "built segmentor %s + %s%s (%d classes)",
        cfg.MODEL.SEG_BACKBONE.ARCH,
        head_name,
        " + aux FCN" if aux_head is not None else "",
        model.num_classes,
    )
    return model
