"""Decoder heads: DeepLabV3 (ASPP), PSPNet (pyramid pooling), FCN and the auxiliary FCN head.

Module names follow the CIRKD reference code (``aspp.b0..b4``, ``aspp.project``, ``block``,
``psp.conv1..4``, ``classifier``), so converted reference checkpoints map key for key. Every main
head has ``forward(features) -> (logits, feature)`` where ``features`` is the backbone's dict
(the head reads ``features[self.in_feature]``) or a single tensor, ``feature`` is the
penultimate decoder feature (the input of the 1×1 classifier: for DeepLabV3 and PSPNet after
their dropout, as CIRKD's heads return it; FCN's before) and ``out_channels`` its channel count. Each main head is registered once (``@register_head``, :mod:`.registry`) and
computes its arguments from the ``MODEL.SEM_SEG_HEAD`` keys in ``from_config``. A head that
resizes bilinearly does so with its ``align_corners`` attribute (the model's one setting,
``MODEL.SEM_SEG_HEAD.ALIGN_CORNERS``; CIRKD's heads use True). Plain PyTorch, no detectron2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import NormLayer, resolve_norm_layer
from .registry import (
    cfg_value,
    common_head_args,
    feature_channels,
    head_width,
    reference_width,
    register_head,
)

logger = logging.getLogger(__name__)

__all__ = ["DeepLabV3Head", "PSPHead", "FCNHead", "AuxFCNHead", "select_feature"]

Features = Mapping[str, torch.Tensor] | torch.Tensor


def select_feature(features: Features, name: str) -> torch.Tensor:
    """Return ``features[name]`` (or ``features`` itself when it is a tensor); KeyError naming
    the available keys when absent."""
    if isinstance(features, torch.Tensor):
        return features
    if name not in features:
        raise KeyError(f"head input '{name}' not among the backbone features {list(features)}")
    return features[name]


def _conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm_layer: NormLayer,
    dilation: int = 1,
) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class _ASPPConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, rate: int, norm: NormLayer) -> None:
        super().__init__()
        self.block = _conv_bn_relu(in_channels, out_channels, 3, norm, dilation=rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _ASPPPooling(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, norm: NormLayer, align_corners: bool
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.gap = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.gap(x)
        return F.interpolate(
            pooled, x.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch ``b0``, one 3×3 atrous branch per rate
    (``b1..``), an image-pooling branch (global average pool, 1×1 conv, broadcast back),
    concatenated and projected by 1×1 conv + BN + ReLU + Dropout(``project_dropout``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (12, 24, 36),
        norm_layer: NormLayer = nn.BatchNorm2d,
        project_dropout: float = 0.5,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.b0 = _conv_bn_relu(in_channels, out_channels, 1, norm_layer)
        for i, rate in enumerate(dilations, start=1):
            self.add_module(f"b{i}", _ASPPConv(in_channels, out_channels, int(rate), norm_layer))
        self.num_branches = len(dilations) + 2
        self.add_module(
            f"b{len(dilations) + 1}",
            _ASPPPooling(in_channels, out_channels, norm_layer, align_corners),
        )
        self.project = nn.Sequential(
            nn.Conv2d(self.num_branches * out_channels, out_channels, 1, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(project_dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [getattr(self, f"b{i}")(x) for i in range(self.num_branches)]
        return self.project(torch.cat(branches, dim=1))


@register_head("deeplabv3", d2_name="TextKDDeepLabV3Head")
class DeepLabV3Head(nn.Module):
    """DeepLabV3 head as in the CIRKD reference: ASPP(rates ``dilations``) to ``channels``,
    then 3×3 conv + BN + ReLU + Dropout(``dropout``) = the penultimate ``feature`` (after the
    dropout, as CIRKD's ``x_feat_after_aspp``, which its feature distillation reads), 1×1 conv to
    ``num_classes`` logits. The ASPP projection has its own Dropout(``aspp_dropout``)."""

    # reference width: (>= 1024 input channels, ResNet-50/101; ResNet-18 / MobileNetV2)
    DEFAULT_CHANNELS = (256, 128)

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], input_channels: Mapping[str, int], norm_layer: Any = None
    ) -> dict[str, Any]:
        """IN_FEATURE, NUM_CLASSES, DROPOUT, CHANNELS (<= 0: ``DEFAULT_CHANNELS``),
        ASPP_DILATIONS, ASPP_DROPOUT, ALIGN_CORNERS."""
        args = common_head_args(node, input_channels, norm_layer)
        args["channels"] = head_width(node, reference_width(cls, args["in_channels"]))
        args["dilations"] = tuple(int(d) for d in cfg_value(node, "ASPP_DILATIONS"))
        args["aspp_dropout"] = float(cfg_value(node, "ASPP_DROPOUT"))
        args["align_corners"] = bool(cfg_value(node, "ALIGN_CORNERS"))
        return args

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        dilations: Sequence[int] = (12, 24, 36),
        dropout: float = 0.1,
        norm_layer: str | NormLayer | None = None,
        in_feature: str = "res5",
        aspp_dropout: float = 0.5,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, channels=channels)
        if not dilations:
            raise ValueError("DeepLabV3Head needs at least one ASPP dilation")
        norm = resolve_norm_layer(norm_layer)
        self.in_feature = in_feature
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = channels
        self.align_corners = bool(align_corners)
        self.aspp = ASPP(in_channels, channels, dilations, norm, aspp_dropout, align_corners)
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.aspp(select_feature(features, self.in_feature))
        # CIRKD's x_feat_after_aspp: the feature after the dropout (identical in evaluation)
        feature = self.block[0:4](x)
        logits = self.block[4](feature)
        return logits, feature


class PyramidPooling(nn.Module):
    """PSP pyramid pooling: for each bin size b, adaptive average pool to b×b, 1×1 conv + BN +
    ReLU to ``in_channels // len(bins)`` channels, bilinear upsampling back; concatenated with
    the input (``in_channels + len(bins) * (in_channels // len(bins))`` channels)."""

    def __init__(
        self,
        in_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        norm_layer: NormLayer = nn.BatchNorm2d,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if not bins:
            raise ValueError("PyramidPooling needs at least one bin size")
        self.bins = tuple(int(b) for b in bins)
        self.align_corners = align_corners
        reduced = in_channels // len(self.bins)
        if reduced < 1:
            raise ValueError(f"in_channels={in_channels} is too small for {len(bins)} bins")
        for i in range(len(self.bins)):
            self.add_module(f"conv{i + 1}", _conv_bn_relu(in_channels, reduced, 1, norm_layer))
        self.out_channels = in_channels + len(self.bins) * reduced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = [x]
        for i, b in enumerate(self.bins):
            pooled = getattr(self, f"conv{i + 1}")(F.adaptive_avg_pool2d(x, b))
            feats.append(
                F.interpolate(pooled, size, mode="bilinear", align_corners=self.align_corners)
            )
        return torch.cat(feats, dim=1)


@register_head("pspnet", d2_name="TextKDPSPHead")
class PSPHead(nn.Module):
    """PSPNet head (CIRKD reference): pyramid pooling, 3×3 conv + BN + ReLU to ``channels`` +
    Dropout(``dropout``) = the penultimate ``feature`` (after the dropout, as CIRKD's), 1×1
    ``classifier``."""

    DEFAULT_CHANNELS = (512, 128)

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], input_channels: Mapping[str, int], norm_layer: Any = None
    ) -> dict[str, Any]:
        """IN_FEATURE, NUM_CLASSES, DROPOUT, CHANNELS (<= 0: ``DEFAULT_CHANNELS``), PSP_BINS,
        ALIGN_CORNERS."""
        args = common_head_args(node, input_channels, norm_layer)
        args["channels"] = head_width(node, reference_width(cls, args["in_channels"]))
        args["bins"] = tuple(int(b) for b in cfg_value(node, "PSP_BINS"))
        args["align_corners"] = bool(cfg_value(node, "ALIGN_CORNERS"))
        return args

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm_layer: str | NormLayer | None = None,
        in_feature: str = "res5",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, channels=channels)
        norm = resolve_norm_layer(norm_layer)
        self.in_feature = in_feature
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = channels
        self.align_corners = bool(align_corners)
        self.psp = PyramidPooling(in_channels, bins, norm, align_corners)
        self.block = nn.Sequential(
            nn.Conv2d(self.psp.out_channels, channels, 3, padding=1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.psp(select_feature(features, self.in_feature))
        # CIRKD's feature: after the dropout (identical in evaluation)
        feature = self.block[0:4](x)
        logits = self.classifier(feature)
        return logits, feature


@register_head("fcn", d2_name="TextKDFCNHead")
class FCNHead(nn.Module):
    """FCN head in the mmsegmentation style: ``num_convs`` 3×3 conv + BN + ReLU (in ->
    channels -> channels ...); with ``concat_input`` a further 3×3 conv + BN + ReLU on
    ``cat(input, convs(input))`` (``conv_cat``). Its output is the penultimate ``feature``;
    then Dropout(``dropout``) and the 1×1 ``conv_seg`` classifier."""

    DEFAULT_CHANNELS = (512, 128)

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], input_channels: Mapping[str, int], norm_layer: Any = None
    ) -> dict[str, Any]:
        """IN_FEATURE, NUM_CLASSES, DROPOUT, CHANNELS (<= 0: ``DEFAULT_CHANNELS``); 2 convs,
        input concatenated."""
        args = common_head_args(node, input_channels, norm_layer)
        args["channels"] = head_width(node, reference_width(cls, args["in_channels"]))
        return args

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
        norm_layer: str | NormLayer | None = None,
        in_feature: str = "res5",
        kernel_size: int = 3,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, channels=channels)
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(
                f"FCNHead with num_convs=0 needs in_channels == channels "
                f"({in_channels} != {channels})"
            )
        norm = resolve_norm_layer(norm_layer)
        self.in_feature = in_feature
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = channels
        self.concat_input = concat_input
        self.convs = nn.Sequential(
            *[
                _conv_bn_relu(
                    in_channels if i == 0 else channels, channels, kernel_size, norm, dilation
                )
                for i in range(num_convs)
            ]
        )
        if concat_input:
            self.conv_cat = _conv_bn_relu(in_channels + channels, channels, kernel_size, norm)
        self.dropout = nn.Dropout(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        x = select_feature(features, self.in_feature)
        feature = self.convs(x)
        if self.concat_input:
            feature = self.conv_cat(torch.cat([x, feature], dim=1))
        logits = self.conv_seg(self.dropout(feature))
        return logits, feature


class AuxFCNHead(nn.Module):
    """Auxiliary FCN head (CIRKD ``_FCNHead``): 3×3 conv + BN + ReLU to ``channels``,
    Dropout(``dropout``), 1×1 conv to ``num_classes``. ``forward(features) -> logits``.
    Not a registered head: the segmentor's optional second head (``MODEL.SEM_SEG_HEAD.AUX*``)."""

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], input_channels: Mapping[str, int], norm_layer: Any = None
    ) -> dict[str, Any]:
        """AUX_IN_FEATURE, NUM_CLASSES, DROPOUT, AUX_CHANNELS (<= 0: the CIRKD width, a quarter
        of the input's)."""
        feature = cfg_value(node, "AUX_IN_FEATURE")
        in_ch = feature_channels(input_channels, "AUX_IN_FEATURE", feature)
        ch = int(cfg_value(node, "AUX_CHANNELS") or 0)
        return {
            "in_channels": in_ch,
            "num_classes": int(cfg_value(node, "NUM_CLASSES")),
            "channels": ch if ch > 0 else max(in_ch // 4, 1),
            "dropout": float(cfg_value(node, "DROPOUT")),
            "norm_layer": norm_layer,
            "in_feature": feature,
        }

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        dropout: float = 0.1,
        norm_layer: str | NormLayer | None = None,
        in_feature: str = "res4",
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, channels=channels)
        norm = resolve_norm_layer(norm_layer)
        self.in_feature = in_feature
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, features: Features) -> torch.Tensor:
        return self.block(select_feature(features, self.in_feature))
