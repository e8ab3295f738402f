"""OCRNet head: object-contextual representations (Yuan et al., ECCV 2020), framework-free.

The head reads two backbone features: ``region_in_feature`` (default ``res4``, the stage before
the last, as in the paper's ResNet setting and mmsegmentation's ``ocrnet_r50-d8``) for the soft
object regions and ``in_feature`` (``res5``) for the pixel representations:

1. soft object regions ``m = FCN(res4)``: an :class:`~textkd.models.heads.AuxFCNHead`
   (3×3 conv + BN + ReLU, dropout, 1×1 conv to K classes). Its logits are returned in
   ``SegOutput.extras["ocr_soft_regions"]`` (N×K×h×w, the resolution of the pixel feature) and
   are supervised like the auxiliary head, ``aux_weight · CE(upsample(m), y)`` with
   ``aux_weight = 0.4``, by :func:`ocr_region_loss`, which :meth:`OCRHead.losses` (called by
   the task loss) reports as ``loss_ocr_regions``. Because the
   region branch plays the role of the auxiliary head, OCRNet configs use ``AUX: False``;
   ``SegOutput.aux_logits`` then stays None.
2. pixel representations ``x = ReLU(BN(conv3×3(res5)))`` (``channels`` wide).
3. object region representations ``f_k = Σ_i softmax_i(s · m_{k,i}) x_i`` (spatial softmax of
   each region's logits over the h·w pixels, ``s`` = ``scale``).
4. pixel-region relation ``w_{ik} = softmax_k(⟨φ(x_i), ψ(f_k)⟩ / √C_key)`` with query ``φ`` and
   key ``ψ`` two 1×1 conv + BN + ReLU each (``channels -> key_channels -> key_channels``), and the
   object contextual representation ``y_i = ρ(Σ_k w_{ik} δ(f_k))`` with value ``δ`` and output
   ``ρ`` one 1×1 conv + BN + ReLU each (``channels -> key_channels -> channels``).
5. augmented representation ``z_i = ReLU(BN(conv1×1([y_i, x_i])))`` = the penultimate
   ``feature``; then Dropout and the 1×1 ``classifier`` give the logits.

Module names follow mmsegmentation's ``OCRHead`` where they have a counterpart. Registered in the
core head registry as ``"ocrnet"``. Plain PyTorch, no detectron2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import NormLayer, resolve_norm_layer
from .heads import AuxFCNHead, Features, select_feature
from .losses import cross_entropy_ignore, upsample_logits
from .outputs import SegOutput
from .registry import cfg_value, common_head_args, head_width, register_head

logger = logging.getLogger(__name__)

__all__ = [
    "SpatialGather",
    "ObjectAttention",
    "OCRHead",
    "ocr_region_loss",
    "default_ocr_channels",
    "OCR_REGIONS_KEY",
]

OCR_REGIONS_KEY = "ocr_soft_regions"


def _conv1x1_bn_relu(in_channels: int, out_channels: int, norm: NormLayer) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        norm(out_channels),
        nn.ReLU(inplace=True),
    )


class SpatialGather(nn.Module):
    """Object region representations: for every class k,
    ``f_k = Σ_i softmax_i(scale · m_{k,i}) · x_i`` (softmax over the h·w pixels).

    ``forward(feats N×C×h×w, region_logits N×K×h×w) -> N×C×K×1`` (region logits of another
    size are bilinearly resized to the feature map first, with ``align_corners``)."""

    def __init__(self, scale: float = 1.0, align_corners: bool = False) -> None:
        super().__init__()
        self.scale = float(scale)
        self.align_corners = bool(align_corners)

    def forward(self, feats: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
        if region_logits.shape[-2:] != feats.shape[-2:]:
            region_logits = F.interpolate(
                region_logits, feats.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )
        n, c = feats.shape[:2]
        k = region_logits.shape[1]
        probs = F.softmax(self.scale * region_logits.reshape(n, k, -1).float(), dim=2)
        regions = torch.bmm(probs.to(feats.dtype), feats.reshape(n, c, -1).transpose(1, 2))
        return regions.transpose(1, 2).unsqueeze(3)  # N×C×K×1


class ObjectAttention(nn.Module):
    """Pixel-region relation and object contextual representation.

    ``q = φ(x)`` (N×C_key×h×w), ``k = ψ(f)``, ``v = δ(f)`` (N×C_key×K×1);
    ``w_{ik} = softmax_k(q_i·k_k / √C_key)``, ``y_i = ρ(Σ_k w_{ik} v_k)`` (N×C×h×w). ``φ`` and
    ``ψ`` are two 1×1 conv + BN + ReLU layers, ``δ`` and ``ρ`` one each."""

    def __init__(self, channels: int, key_channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.query_project = nn.Sequential(
            _conv1x1_bn_relu(channels, key_channels, norm_layer),
            _conv1x1_bn_relu(key_channels, key_channels, norm_layer),
        )
        self.key_project = nn.Sequential(
            _conv1x1_bn_relu(channels, key_channels, norm_layer),
            _conv1x1_bn_relu(key_channels, key_channels, norm_layer),
        )
        self.value_project = _conv1x1_bn_relu(channels, key_channels, norm_layer)
        self.out_project = _conv1x1_bn_relu(key_channels, channels, norm_layer)

    def relation(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """``w`` (N×hw×K): ``softmax_k(φ(x_i)·ψ(f_k) / √C_key)``."""
        n = pixels.shape[0]
        query = self.query_project(pixels).reshape(n, self.key_channels, -1).transpose(1, 2)
        key = self.key_project(regions).reshape(n, self.key_channels, -1)
        sim = torch.bmm(query, key) * (self.key_channels**-0.5)
        return F.softmax(sim.float(), dim=-1).to(pixels.dtype)

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        n, _, h, w = pixels.shape
        sim = self.relation(pixels, regions)  # N×hw×K
        value = self.value_project(regions).reshape(n, self.key_channels, -1).transpose(1, 2)
        context = torch.bmm(sim, value).transpose(1, 2).reshape(n, self.key_channels, h, w)
        return self.out_project(context)


@register_head("ocrnet", d2_name="TextKDOCRHead")
class OCRHead(nn.Module):
    """OCRNet head; ``forward(features) -> (logits, feature, {"ocr_soft_regions": m})``.

    Args:
        in_channels: channels of ``in_feature`` (pixel branch, ``res5``).
        num_classes: K.
        channels: width of the pixel / augmented representations (``feature``).
        key_channels: width of the query/key/value transforms.
        region_in_channels: channels of ``region_in_feature`` (soft-region FCN input).
        region_channels: hidden width of the soft-region FCN.
        dropout: dropout before both classifiers.
        scale: multiplier of the region logits in the spatial softmax.
        align_corners: of the bilinear resize of the soft regions to the pixel features (and,
            through the model's setting, of their loss).
    """

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], input_channels: Mapping[str, int], norm_layer: Any = None
    ) -> dict[str, Any]:
        """Pixel branch on IN_FEATURE (CHANNELS <= 0: :func:`default_ocr_channels`), query/key
        width OCR_KEY_CHANNELS (<= 0: the default), soft-region FCN on AUX_IN_FEATURE with
        AUX_CHANNELS hidden channels (<= 0: its input width // 4). The soft regions play the
        auxiliary head's role: OCRNet configs set AUX False.

        The region input width is ``input_channels[AUX_IN_FEATURE]``; when ``input_channels``
        names IN_FEATURE only (``build_head(in_channels=...)``), the width of ``res4`` of the
        registered backbones whose ``res5`` has that width (ResNets/STDC: half, MobileNetV2: 96).
        """
        args = common_head_args(node, input_channels, norm_layer)
        in_ch, in_feature = args["in_channels"], args["in_feature"]
        region_feature = cfg_value(node, "AUX_IN_FEATURE")
        region_in = _region_in_channels(in_ch, in_feature, region_feature, input_channels)
        default_ch, default_key = default_ocr_channels(in_ch)
        key = int(cfg_value(node, "OCR_KEY_CHANNELS") or 0)
        region_ch = int(cfg_value(node, "AUX_CHANNELS") or 0)
        args.update(
            channels=head_width(node, default_ch),
            key_channels=key if key > 0 else default_key,
            region_in_feature=region_feature,
            region_in_channels=region_in,
            region_channels=region_ch if region_ch > 0 else max(region_in // 4, 1),
            align_corners=bool(cfg_value(node, "ALIGN_CORNERS")),
        )
        return args

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        key_channels: int = 256,
        region_in_channels: int = 1024,
        region_channels: int = 256,
        dropout: float = 0.1,
        norm_layer: str | NormLayer | None = None,
        in_feature: str = "res5",
        region_in_feature: str = "res4",
        scale: float = 1.0,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("channels", channels),
            ("key_channels", key_channels),
            ("region_in_channels", region_in_channels),
            ("region_channels", region_channels),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"OCRHead: {name} must be a positive int, got {value!r}")
        norm = resolve_norm_layer(norm_layer)
        self.in_feature = in_feature
        self.region_in_feature = region_in_feature
        self.in_channels = in_channels
        self.region_in_channels = region_in_channels
        self.num_classes = num_classes
        self.out_channels = channels
        self.key_channels = key_channels
        self.align_corners = bool(align_corners)
        self.extra_channels = {OCR_REGIONS_KEY: num_classes}
        self.soft_region = AuxFCNHead(
            region_in_channels,
            num_classes,
            channels=region_channels,
            dropout=dropout,
            norm_layer=norm,
            in_feature=region_in_feature,
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
        )
        self.spatial_gather = SpatialGather(scale, align_corners)
        self.object_context = ObjectAttention(channels, key_channels, norm)
        self.fuse = _conv1x1_bn_relu(2 * channels, channels, norm)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(
        self, features: Features
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(features, torch.Tensor):
            raise TypeError(
                "OCRHead reads two backbone features "
                f"('{self.region_in_feature}' and '{self.in_feature}'): pass the feature dict"
            )
        pixels = self.bottleneck(select_feature(features, self.in_feature))
        regions_logits = self.soft_region(features)
        if regions_logits.shape[-2:] != pixels.shape[-2:]:
            regions_logits = F.interpolate(
                regions_logits, pixels.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )
        regions = self.spatial_gather(pixels, regions_logits)
        context = self.object_context(pixels, regions)
        feature = self.fuse(torch.cat([context, pixels], dim=1))
        logits = self.classifier(self.dropout(feature))
        return logits, feature, {OCR_REGIONS_KEY: regions_logits}

    def losses(
        self,
        output: SegOutput,
        targets: torch.Tensor,
        aux_weight: float = 0.4,
        ignore_label: int = 255,
        align_corners: bool = False,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        """The head's own task loss: ``loss_ocr_regions`` (:func:`ocr_region_loss`, the soft
        regions supervised like the auxiliary head, × ``aux_weight``)."""
        return ocr_region_loss(output, targets, aux_weight, ignore_label, align_corners)


def default_ocr_channels(in_channels: int) -> tuple[int, int]:
    """Reference widths ``(channels, key_channels)``: (512, 256) for a large backbone (>= 1024
    input channels, mmsegmentation's OCRNet-R50/R101), (256, 128) for ResNet-18 / MobileNetV2."""
    return (512, 256) if in_channels >= 1024 else (256, 128)


# res5 -> res4 widths of the registered backbones whose ratio is not 2 (ResNets and STDC are 2:1)
_RES4_OF_RES5 = {320: 96}  # MobileNetV2


def _region_in_channels(
    in_channels: int,
    in_feature: str,
    region_in_feature: str,
    input_channels: Mapping[str, int],
) -> int:
    if region_in_feature in input_channels:
        return int(input_channels[region_in_feature])
    if set(input_channels) != {in_feature}:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE={region_in_feature!r} (OCR soft regions) is not a "
            f"backbone output; available: {list(input_channels)}"
        )
    if region_in_feature == in_feature:
        return in_channels
    if in_feature == "res5" and region_in_feature == "res4":
        return _RES4_OF_RES5.get(in_channels, in_channels // 2)
    raise ValueError(
        f"cannot infer the channels of OCR region_in_feature '{region_in_feature}' from "
        f"'{in_feature}' ({in_channels} channels): pass feature_channels or region_in_channels"
    )


def ocr_region_loss(
    output: SegOutput,
    targets: torch.Tensor,
    weight: float = 0.4,
    ignore_label: int = 255,
    align_corners: bool = False,
) -> dict[str, torch.Tensor]:
    """``{"loss_ocr_regions": weight · CE(upsample(m), y)}`` for the soft-region logits
    ``m = output.extras["ocr_soft_regions"]`` (pixel-averaged cross-entropy over the non-ignored
    pixels, logits bilinearly upsampled to the label size); ``{}`` when the record has no soft
    regions or ``weight`` is 0."""
    regions = output.extras.get(OCR_REGIONS_KEY)
    if regions is None or weight == 0:
        return {}
    logits = upsample_logits(regions, targets.shape[-2:], align_corners)
    return {"loss_ocr_regions": weight * cross_entropy_ignore(logits, targets.long(), ignore_label)}
