"""Detectron2 registration of the TextKD backbone and heads (one generic adapter over the core).

Registers ``TextKDTimmBackbone`` in ``BACKBONE_REGISTRY`` (``MODEL.SEG_BACKBONE.*`` -> the core
``build_backbone``) and, for every head of the core registry (:mod:`.registry`), its detectron2
name (``TextKDDeepLabV3Head``, ``TextKDPSPHead``, ``TextKDFCNHead``, ``TextKDOCRHead``,
``TextKDSTDCHead``, ...) in ``SEM_SEG_HEADS_REGISTRY``: the entry calls the core class's
``from_config`` with ``MODEL.SEM_SEG_HEAD``. No per-head code lives here. ``build_segmentor_from_cfg(cfg)`` assembles the core :class:`Segmentor`; its state-dict
keys are identical to those of ``build_segmentor(...)`` with the same settings.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, SEM_SEG_HEADS_REGISTRY, Backbone
from detectron2.modeling import build_backbone as d2_build_backbone
from detectron2.utils import comm
from torch import nn

from ..models.backbones import STAGE_NAMES, SegBackbone, build_backbone, norm_name
from ..models.heads import AuxFCNHead
from ..models.registry import D2_HEAD_NAMES, HEADS, build_head_from_config
from ..models.segmentor import Segmentor

logger = logging.getLogger(__name__)

__all__ = [
    "TextKDTimmBackbone",
    "register_d2_heads",
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


def _input_channels(input_shape: Mapping[str, ShapeSpec]) -> dict[str, int]:
    return {name: int(spec.channels) for name, spec in input_shape.items()}


def _d2_head(core_name: str, d2_name: str) -> Callable[[CfgNode, dict[str, ShapeSpec]], nn.Module]:
    """The ``SEM_SEG_HEADS_REGISTRY`` entry of core head ``core_name``: ``(cfg, input_shape) ->``
    the core head class built by its ``from_config`` from ``MODEL.SEM_SEG_HEAD`` (norm:
    :func:`resolve_norm`)."""

    def build(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
        return build_head_from_config(
            core_name, cfg.MODEL.SEM_SEG_HEAD, _input_channels(input_shape), resolve_norm(cfg)
        )

    build.__name__ = build.__qualname__ = d2_name
    build.__doc__ = f"The core head '{core_name}' ({HEADS[core_name].__name__}) from the config."
    return build


def register_d2_heads() -> list[str]:
    """Register every core head registered with a ``d2_name`` (:mod:`.registry`) in
    ``SEM_SEG_HEADS_REGISTRY`` under that name, once (later calls add heads registered since);
    returns the detectron2 names."""
    for core_name, d2_name in D2_HEAD_NAMES.items():
        if d2_name not in SEM_SEG_HEADS_REGISTRY:
            SEM_SEG_HEADS_REGISTRY.register(_d2_head(core_name, d2_name))
    return list(D2_HEAD_NAMES.values())


register_d2_heads()


def build_aux_head_from_cfg(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> AuxFCNHead | None:
    """The auxiliary FCN head of ``MODEL.SEM_SEG_HEAD.AUX*`` (None when AUX is False);
    AUX_CHANNELS <= 0 uses the CIRKD width ``in_channels // 4``."""
    h = cfg.MODEL.SEM_SEG_HEAD
    if not h.AUX:
        return None
    return AuxFCNHead(**AuxFCNHead.from_config(h, _input_channels(input_shape), resolve_norm(cfg)))


_DEPRECATED_HEAD_CLASSES = {
    "TextKDDeepLabV3Head": "deeplabv3",
    "TextKDPSPHead": "pspnet",
    "TextKDFCNHead": "fcn",
    "TextKDOCRHead": "ocrnet",
    "TextKDSTDCHead": "stdc",
}


def __getattr__(name: str) -> Any:
    """``from textkd.d2.build import TextKD<Name>Head`` (removed classes) keeps working for
    one release: the registry entry ``(cfg, input_shape) -> head``, with a deprecation warning."""
    if name in _DEPRECATED_HEAD_CLASSES:
        warnings.warn(
            f"textkd.d2.build.{name} is deprecated: heads are registered once in the core "
            f"registry; use SEM_SEG_HEADS_REGISTRY.get({name!r}) or the core class "
            f"{HEADS[_DEPRECATED_HEAD_CLASSES[name]].__name__}",
            DeprecationWarning,
            stacklevel=2,
        )
        return SEM_SEG_HEADS_REGISTRY.get(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    register_d2_heads()  # core heads registered after this module was imported
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
