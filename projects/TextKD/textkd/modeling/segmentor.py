"""The single-model segmentor: backbone -> main head (+ auxiliary FCN head) -> SegOutput.

``build_segmentor(head=..., backbone=..., ...)`` assembles one from names; the head registry
``HEADS`` maps a head name to a factory so more heads (OCRNet, STDC, ...) can be added with
:func:`register_head`. Plain PyTorch, no detectron2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .backbones import NormLayer, build_backbone
from .heads import AuxFCNHead, DeepLabV3Head, FCNHead, PSPHead
from .outputs import SegOutput

logger = logging.getLogger(__name__)

__all__ = [
    "Segmentor",
    "build_segmentor",
    "build_head",
    "register_head",
    "available_heads",
    "default_head_channels",
    "HEADS",
]


class Segmentor(nn.Module):
    """Backbone + main head (+ optional auxiliary head), input already normalised.

    ``forward(x, with_aux=None)`` returns :class:`SegOutput` with ``logits`` and ``feature``
    from the main head (at the backbone's output stride) and ``aux_logits`` from the auxiliary
    head when ``with_aux`` (default: ``self.training``) and an auxiliary head exists. A head may
    return ``(logits, feature)`` or ``(logits, feature, extras_dict)``; extras go to
    ``SegOutput.extras``.

    Attributes: ``num_classes``, ``output_channels`` (``{"logits": K, "feature": C}`` plus
    ``"aux_logits": K`` when there is an auxiliary head, plus the head's ``extra_channels``),
    ``output_stride`` (stride of the logits w.r.t. the input), ``align_corners``: the
    ``align_corners`` of every bilinear resize of this model's maps outside its heads (the task
    loss, the final upsampling, a student map resized to its teacher's) — the one setting
    (``MODEL.SEM_SEG_HEAD.ALIGN_CORNERS``) that its heads' own resizes use too.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        in_feature: str | None = None,
        aux_in_feature: str | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = bool(align_corners)
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        if in_feature is not None:
            head.in_feature = in_feature
        if aux_head is not None and aux_in_feature is not None:
            aux_head.in_feature = aux_in_feature
        out_channels: dict[str, int] = dict(getattr(backbone, "out_channels", {}))
        for name, module in (("head", head), ("aux_head", aux_head)):
            if module is None:
                continue
            feat = getattr(module, "in_feature", None)
            if out_channels and feat not in out_channels:
                raise ValueError(
                    f"{name} reads backbone feature '{feat}', "
                    f"but the backbone provides {list(out_channels)}"
                )
            expected = getattr(module, "in_channels", None)
            if out_channels and expected is not None and out_channels[feat] != expected:
                raise ValueError(
                    f"{name} expects {expected} input channels but backbone feature '{feat}' "
                    f"has {out_channels[feat]}"
                )
        for name, module in (("head", head), ("aux_head", aux_head)):
            own = getattr(module, "align_corners", None)
            if own is not None and bool(own) != self.align_corners:
                raise ValueError(
                    f"{name} resizes with align_corners={bool(own)} but the segmentor with "
                    f"align_corners={self.align_corners}: one setting "
                    "(MODEL.SEM_SEG_HEAD.ALIGN_CORNERS) governs every resize of a model"
                )
        self.num_classes = int(head.num_classes)
        if aux_head is not None and int(aux_head.num_classes) != self.num_classes:
            raise ValueError(
                f"aux head has {aux_head.num_classes} classes, main head {self.num_classes}"
            )
        self.output_channels: dict[str, int] = {
            "logits": self.num_classes,
            "feature": int(head.out_channels),
        }
        if aux_head is not None:
            self.output_channels["aux_logits"] = self.num_classes
        self.output_channels.update(getattr(head, "extra_channels", {}))
        strides = getattr(backbone, "out_strides", {})
        self.output_stride = int(strides.get(head.in_feature, 0)) or None

    def forward(self, x: torch.Tensor, with_aux: bool | None = None) -> SegOutput:
        """Run backbone and heads on normalised images ``x`` (N×C×H×W)."""
        if x.dim() != 4:
            raise ValueError(f"Segmentor expects an N×C×H×W tensor, got shape {tuple(x.shape)}")
        features = self.backbone(x)
        out = self.head(features)
        extras: dict[str, torch.Tensor] = {}
        if len(out) == 3:
            logits, feature, extras = out
        else:
            logits, feature = out
        if with_aux is None:
            with_aux = self.training
        aux_logits = None
        if with_aux and self.aux_head is not None:
            aux_logits = self.aux_head(features)
        return SegOutput(logits=logits, feature=feature, aux_logits=aux_logits, extras=extras)


# --------------------------------------------------------------------------- head registry

HeadFactory = Callable[..., nn.Module]
HEADS: dict[str, HeadFactory] = {}

# (width for a large backbone with >= 1024 input channels, width for a small one)
_DEFAULT_CHANNELS = {"deeplabv3": (256, 128), "pspnet": (512, 128), "fcn": (512, 128)}


def register_head(name: str, factory: HeadFactory | None = None) -> Any:
    """Register a head factory under ``name`` (usable as a decorator).

    The factory is called as ``factory(in_channels=..., num_classes=..., channels=... | None,
    dropout=..., norm_layer=..., in_feature=..., aspp_dilations=..., psp_bins=...,
    align_corners=..., **extra)`` and must accept (and may ignore) every keyword; ``channels``
    None means the head's own default for that input width.
    """

    def _register(f: HeadFactory) -> HeadFactory:
        if name in HEADS:
            raise ValueError(f"head '{name}' is already registered")
        HEADS[name] = f
        return f

    return _register(factory) if factory is not None else _register


def available_heads() -> list[str]:
    """Names accepted by :func:`build_segmentor` / :func:`build_head`."""
    return sorted(HEADS)


def default_head_channels(head: str, in_channels: int) -> int:
    """Reference head width: DeepLabV3 256 (ResNet-50/101, >= 1024 input channels) or 128
    (ResNet-18, MobileNetV2); PSPNet and FCN 512 or 128 (CIRKD / mmsegmentation)."""
    large, small = _DEFAULT_CHANNELS.get(head, (256, 128))
    return large if in_channels >= 1024 else small


@register_head("deeplabv3")
def _deeplabv3(
    in_channels: int,
    num_classes: int,
    channels: int | None = None,
    aspp_dilations: Sequence[int] = (12, 24, 36),
    dropout: float = 0.1,
    norm_layer: str | NormLayer | None = None,
    in_feature: str = "res5",
    align_corners: bool = False,
    **_: Any,
) -> nn.Module:
    return DeepLabV3Head(
        in_channels,
        num_classes,
        channels=channels or default_head_channels("deeplabv3", in_channels),
        dilations=tuple(aspp_dilations),
        dropout=dropout,
        norm_layer=norm_layer,
        in_feature=in_feature,
        align_corners=align_corners,
    )


@register_head("pspnet")
def _pspnet(
    in_channels: int,
    num_classes: int,
    channels: int | None = None,
    psp_bins: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    norm_layer: str | NormLayer | None = None,
    in_feature: str = "res5",
    align_corners: bool = False,
    **_: Any,
) -> nn.Module:
    return PSPHead(
        in_channels,
        num_classes,
        channels=channels or default_head_channels("pspnet", in_channels),
        bins=tuple(psp_bins),
        dropout=dropout,
        norm_layer=norm_layer,
        in_feature=in_feature,
        align_corners=align_corners,
    )


@register_head("fcn")
def _fcn(
    in_channels: int,
    num_classes: int,
    channels: int | None = None,
    dropout: float = 0.1,
    norm_layer: str | NormLayer | None = None,
    in_feature: str = "res5",
    num_convs: int = 2,
    concat_input: bool = True,
    **_: Any,
) -> nn.Module:
    return FCNHead(
        in_channels,
        num_classes,
        channels=channels or default_head_channels("fcn", in_channels),
        num_convs=num_convs,
        concat_input=concat_input,
        dropout=dropout,
        norm_layer=norm_layer,
        in_feature=in_feature,
    )


def build_head(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered head ``name`` (see :func:`register_head` for the keywords).
    Unknown names raise ValueError listing the choices."""
    if name not in HEADS:
        raise ValueError(f"unknown segmentation head '{name}'; choices: {available_heads()}")
    return HEADS[name](**kwargs)


def build_segmentor(
    head: str = "deeplabv3",
    backbone: str = "resnet18d",
    num_classes: int = 19,
    output_stride: int = 8,
    in_chans: int = 3,
    pretrained: str = "",
    frozen_bn: bool = False,
    extra_chans_init_std: float = 0.1,
    channels: int | None = None,
    aspp_dilations: Sequence[int] = (12, 24, 36),
    psp_bins: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    aux: bool = True,
    aux_channels: int | None = None,
    norm_layer: str | NormLayer | None = None,
    in_feature: str = "res5",
    aux_in_feature: str = "res4",
    align_corners: bool = False,
    **head_kwargs: Any,
) -> Segmentor:
    """Build ``backbone`` + ``head`` (+ AuxFCNHead on ``aux_in_feature`` when ``aux``).

    ``channels`` None (or 0) uses :func:`default_head_channels`; ``aux_channels`` None (or 0)
    uses the CIRKD width ``in_channels // 4`` of the auxiliary input. ``head_kwargs`` go to
    the head factory (e.g. ``num_convs`` for "fcn"). ``align_corners`` governs every bilinear
    resize of the model: its heads' (ASPP/PSP pooling, OCR regions) and the segmentor's
    (:attr:`Segmentor.align_corners`: task loss, final upsampling).
    """
    if head not in HEADS:
        raise ValueError(f"unknown segmentation head '{head}'; choices: {available_heads()}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    bb = build_backbone(
        backbone,
        output_stride=output_stride,
        in_chans=in_chans,
        pretrained=pretrained,
        frozen_bn=frozen_bn,
        extra_chans_init_std=extra_chans_init_std,
        norm_layer=norm_layer,
    )
    if in_feature not in bb.out_channels:
        raise ValueError(f"in_feature '{in_feature}' not among {list(bb.out_channels)}")
    main = build_head(
        head,
        in_channels=bb.out_channels[in_feature],
        num_classes=num_classes,
        channels=channels or None,
        aspp_dilations=aspp_dilations,
        psp_bins=psp_bins,
        dropout=dropout,
        norm_layer=norm_layer,
        in_feature=in_feature,
        align_corners=align_corners,
        **head_kwargs,
    )
    aux_head = None
    if aux:
        if aux_in_feature not in bb.out_channels:
            raise ValueError(f"aux_in_feature '{aux_in_feature}' not among {list(bb.out_channels)}")
        aux_in = bb.out_channels[aux_in_feature]
        aux_head = AuxFCNHead(
            aux_in,
            num_classes,
            channels=aux_channels or max(aux_in // 4, 1),
            dropout=dropout,
            norm_layer=norm_layer,
            in_feature=aux_in_feature,
        )
    return Segmentor(bb, main, aux_head, align_corners=align_corners)
