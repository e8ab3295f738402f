"""The single-model segmentor: backbone -> main head (+ auxiliary FCN head) -> SegOutput.

``build_segmentor(head=..., backbone=..., ...)`` assembles one from names. The head registry
(``HEADS``, :func:`register_head`, :func:`build_head`) lives in :mod:`.registry` and is
re-exported here; each head class registers itself there once. Plain PyTorch, no detectron2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .backbones import NormLayer, build_backbone
from .heads import AuxFCNHead
from .outputs import SegOutput
from .registry import (
    HEADS,
    available_heads,
    build_head,
    default_head_channels,
    register_head,
)

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


# --------------------------------------------------------------------------- assembly


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
    :func:`~.registry.build_head` (e.g. ``ocr_key_channels``, or ``num_convs`` for "fcn").
    ``align_corners`` governs every bilinear resize of the model: its heads' (ASPP/PSP pooling,
    OCR regions) and the segmentor's (:attr:`Segmentor.align_corners`: task loss, final
    upsampling).
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
        feature_channels=bb.out_channels,
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
        aux_node = {
            "NUM_CLASSES": num_classes,
            "AUX_IN_FEATURE": aux_in_feature,
            "AUX_CHANNELS": aux_channels or 0,
            "DROPOUT": dropout,
        }
        aux_head = AuxFCNHead(**AuxFCNHead.from_config(aux_node, bb.out_channels, norm_layer))
    return Segmentor(bb, main, aux_head, align_corners=align_corners)
