"""STDC backbones and the STDC-Seg head (Fan et al., "Rethinking BiSeNet For Real-time Semantic
Segmentation", CVPR 2021), with the detail ground truth and detail loss; framework-free.

Backbones (registered as ``"stdc1"`` and ``"stdc2"``): a stem of two 3×3 stride-2 ConvX
(conv + BN + ReLU, 32 and 64 channels) and three stages of Short-Term Dense Concatenate modules
(STDC1: 2/2/2 modules, STDC2: 4/5/3; 256/512/1024 channels). A module with 4 blocks has widths
C/2 (1×1), C/4, C/8, C/8 (3×3) and outputs the concatenation of all four block outputs; a stride-2
module downsamples its second block's input with a 3×3 depthwise stride-2 conv + BN and its first
block's output with a 3×3 stride-2 average pool. Outputs ``res2..res5`` = strides 4/8/16/32
(64/256/512/1024 channels); the layers live in ``features`` as in the official code, so STDC
ImageNet checkpoints load. STDC is not dilated: the backbone only accepts ``output_stride=32``.

Head (registered as ``"stdc"``): the STDC-Seg context path (attention refinement modules on
``res4``/``res5``, a global-average context added to the ``res5`` branch, nearest upsampling, 3×3
conv + BN + ReLU after each), the feature fusion module with the stride-8 spatial feature
``res3``, and the segmentation output block (3×3 conv + BN + ReLU = the penultimate ``feature``,
1×1 classifier): logits at stride 8, like the dilated models. In training the detail head (3×3
conv + BN + ReLU, 1×1 conv to 1 channel on ``res3``) adds ``extras["detail_logits"]`` (N×1×h×w,
stride 8), supervised by :func:`stdc_detail_loss`. STDC-Seg's extra stride-16/32 segmentation
outputs are not built: the TextKD auxiliary FCN head (``aux_in_feature="res4"``) takes that role.

:meth:`STDCHead.losses` (called by the task loss) reports the detail loss as ``loss_detail``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import NormLayer, SegBackbone, register_backbone, resolve_norm_layer
from .heads import Features
from .outputs import SegOutput
from .registry import cfg_value, head_width, register_head

logger = logging.getLogger(__name__)

__all__ = [
    "ConvX",
    "CatBottleneck",
    "STDCBackbone",
    "STDCHead",
    "STDC_LAYERS",
    "detail_targets",
    "stdc_detail_loss",
    "DETAIL_KEY",
]

DETAIL_KEY = "detail_logits"
# modules per stage (stride 8, 16, 32) of STDC1 (STDCNet813) and STDC2 (STDCNet1446)
STDC_LAYERS = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}
# STDC-Seg's detail ground truth: Laplacian boundaries at strides 1, 2, 4, fused with these
# weights (the initial value of its 1×1 fuse kernel), both steps thresholded at 0.1
STDC_DETAIL_STRIDES = (1, 2, 4)
STDC_DETAIL_FUSE_WEIGHTS = (0.6, 0.3, 0.1)
STDC_DETAIL_THRESHOLD = 0.1


# --------------------------------------------------------------------------- backbone


class ConvX(nn.Module):
    """``ReLU(BN(conv_k×k(x)))`` with padding k//2 and no conv bias."""

    def __init__(self, in_planes: int, out_planes: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_planes, out_planes, kernel, stride=stride, padding=kernel // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class CatBottleneck(nn.Module):
    """Short-Term Dense Concatenate module: blocks ``B_1..B_n`` (1×1 to C/2, then 3×3 to C/4,
    C/8, ..., the last two equal), ``out = cat(B_1(x), B_2(·), ..., B_n(·))`` with each block
    fed by the previous one. With ``stride=2`` the input of ``B_2`` is downsampled by a 3×3
    depthwise stride-2 conv + BN (``avd_layer``) and ``B_1``'s output by 3×3 stride-2 average
    pooling (``skip``) before the concatenation."""

    def __init__(self, in_planes: int, out_planes: int, block_num: int = 4, stride: int = 1):
        super().__init__()
        if block_num < 2:
            raise ValueError(f"CatBottleneck needs block_num >= 2, got {block_num}")
        if stride not in (1, 2):
            raise ValueError(f"CatBottleneck stride must be 1 or 2, got {stride}")
        self.stride = stride
        half = out_planes // 2
        if stride == 2:
            self.avd_layer = nn.Sequential(
                nn.Conv2d(half, half, 3, stride=2, padding=1, groups=half, bias=False),
                nn.BatchNorm2d(half),
            )
            self.skip = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv_list = nn.ModuleList()
        for idx in range(block_num):
            if idx == 0:
                self.conv_list.append(ConvX(in_planes, half, kernel=1))
            elif idx == 1 and block_num == 2:
                self.conv_list.append(ConvX(half, half))
            elif idx == 1:
                self.conv_list.append(ConvX(half, out_planes // 4))
            elif idx < block_num - 1:
                self.conv_list.append(ConvX(out_planes // 2**idx, out_planes // 2 ** (idx + 1)))
            else:
                self.conv_list.append(ConvX(out_planes // 2**idx, out_planes // 2**idx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv_list[0](x)
        out = self.avd_layer(first) if self.stride == 2 else first
        outs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        if self.stride == 2:
            first = self.skip(first)
        return torch.cat([first] + outs, dim=1)


class STDCBackbone(SegBackbone):
    """STDC1/STDC2 backbone (``features`` = stem ConvX ×2 + STDC modules); see the module
    docstring. ``forward(x) -> {"res2": s4, "res3": s8, "res4": s16, "res5": s32}``."""

    pretrained_ignore_prefixes = (
        "conv_last.",
        "fc.",
        "bn.",
        "linear.",
        "classifier.",
        "head.",
        # aliases of ``features`` slices in the official model
        "x2.",
        "x4.",
        "x8.",
        "x16.",
        "x32.",
    )

    def __init__(
        self,
        arch: str,
        layers: Sequence[int],
        in_chans: int = 3,
        output_stride: int = 32,
        base: int = 64,
        block_num: int = 4,
    ) -> None:
        if output_stride != 32:
            raise ValueError(
                f"STDC backbone '{arch}' is not dilated: use output_stride=32 (got "
                f"{output_stride}); the STDC head still predicts at stride 8"
            )
        super().__init__(arch, in_chans, output_stride)
        if len(layers) != 3:
            raise ValueError(f"STDC needs 3 stage depths, got {list(layers)}")
        feats: list[nn.Module] = [ConvX(in_chans, base // 2, 3, 2), ConvX(base // 2, base, 3, 2)]
        for i, n in enumerate(layers):
            for j in range(n):
                if i == 0 and j == 0:
                    feats.append(CatBottleneck(base, base * 4, block_num, 2))
                elif j == 0:
                    feats.append(
                        CatBottleneck(base * 2 ** (i + 1), base * 2 ** (i + 2), block_num, 2)
                    )
                else:
                    feats.append(
                        CatBottleneck(base * 2 ** (i + 2), base * 2 ** (i + 2), block_num, 1)
                    )
        self.features = nn.Sequential(*feats)
        self.layers = tuple(int(n) for n in layers)
        ends = [2 + self.layers[0]]
        ends.append(ends[0] + self.layers[1])
        ends.append(ends[1] + self.layers[2])
        # (start, end) of features for res2 (the second stem conv) .. res5
        self._slices = ((1, 2), (2, ends[0]), (ends[0], ends[1]), (ends[1], ends[2]))
        self.first_conv_key = "features.0.conv.weight"
        self.out_channels = {"res2": base, "res3": base * 4, "res4": base * 8, "res5": base * 16}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.features[0](x)
        out: dict[str, torch.Tensor] = {}
        for name, (start, end) in zip(("res2", "res3", "res4", "res5"), self._slices):
            for i in range(start, end):
                x = self.features[i](x)
            out[name] = x
        return out


def _stdc_builder(arch: str):
    def build(in_chans: int = 3, output_stride: int = 32) -> SegBackbone:
        return STDCBackbone(arch, STDC_LAYERS[arch], in_chans=in_chans, output_stride=output_stride)

    return build


for _arch in STDC_LAYERS:
    register_backbone(_arch, _stdc_builder(_arch))


# --------------------------------------------------------------------------- head


class _ConvBNReLU(nn.Module):
    def __init__(self, in_chan: int, out_chan: int, ks: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, padding=ks // 2, bias=False)
        self.bn = norm(out_chan)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class _OutputBlock(nn.Module):
    """3×3 conv + BN + ReLU (``conv``) and a bias-free 1×1 conv (``conv_out``)."""

    def __init__(self, in_chan: int, mid_chan: int, n_out: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(in_chan, mid_chan, 3, norm)
        self.conv_out = nn.Conv2d(mid_chan, n_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class AttentionRefinement(nn.Module):
    """ARM: ``f = ReLU(BN(conv3×3(x)))``, ``out = f · σ(BN(conv1×1(GAP(f))))``."""

    def __init__(self, in_chan: int, out_chan: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(in_chan, out_chan, 3, norm)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = norm(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class FeatureFusion(nn.Module):
    """FFM: ``f = ReLU(BN(conv1×1([sp, cp])))``, ``a = σ(conv1×1(ReLU(conv1×1(GAP(f)))))``
    (bottleneck C/4), ``out = f · a + f``."""

    def __init__(self, in_chan: int, out_chan: int, norm: NormLayer) -> None:
        super().__init__()
        self.convblk = _ConvBNReLU(in_chan, out_chan, 1, norm)
        self.conv1 = nn.Conv2d(out_chan, max(out_chan // 4, 1), 1, bias=False)
        self.conv2 = nn.Conv2d(max(out_chan // 4, 1), out_chan, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


@register_head("stdc", d2_name="TextKDSTDCHead")
class STDCHead(nn.Module):
    """STDC-Seg decoder; ``forward(features) -> (logits, feature, extras)``.

    Reads ``res3`` (stride 8, ``in_channels``), ``res4`` and ``res5``. ``in_feature`` is
    ``"res3"``: the logits have its stride (8). ``extras["detail_logits"]`` (the detail head on
    ``res3``) is computed in training mode only.

    Args:
        in_channels, mid_channels, deep_channels: channels of res3, res4, res5.
        num_classes: K.
        channels: width of the fused feature and of the output block (``feature``).
        context_channels: width of the context path (ARM outputs).
        detail_channels: hidden width of the detail head (0 disables the detail head).
        dropout: dropout before the 1×1 classifier (STDC-Seg uses none).
    """

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], input_channels: Mapping[str, int], norm_layer: Any = None
    ) -> dict[str, Any]:
        """The backbone's res3/res4/res5 (width CHANNELS, <= 0: 256, STDC-Seg); the detail
        branch exists when STDC_DETAIL_WEIGHT > 0; NUM_CLASSES, DROPOUT. When
        ``input_channels`` names IN_FEATURE only (``build_head(in_channels=...)``), the widths
        follow the STDC (and ResNet) ratio res3 : res4 : res5 = 1 : 2 : 4."""
        in_feature = cfg_value(node, "IN_FEATURE")
        ch = _stdc_feature_channels(in_feature, input_channels)
        return {
            "in_channels": ch["res3"],
            "mid_channels": ch["res4"],
            "deep_channels": ch["res5"],
            "num_classes": int(cfg_value(node, "NUM_CLASSES")),
            "channels": head_width(node, 256),
            "detail_channels": 64 if float(cfg_value(node, "STDC_DETAIL_WEIGHT")) > 0 else 0,
            "dropout": float(cfg_value(node, "DROPOUT")),
            "norm_layer": norm_layer,
        }

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        deep_channels: int,
        num_classes: int,
        channels: int = 256,
        context_channels: int = 128,
        detail_channels: int = 64,
        dropout: float = 0.0,
        norm_layer: str | NormLayer | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("mid_channels", mid_channels),
            ("deep_channels", deep_channels),
            ("num_classes", num_classes),
            ("channels", channels),
            ("context_channels", context_channels),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"STDCHead: {name} must be a positive int, got {value!r}")
        norm = resolve_norm_layer(norm_layer)
        self.in_feature = "res3"
        self.context_features = ("res4", "res5")
        self.in_channels = in_channels
        self.feature_channels = {"res3": in_channels, "res4": mid_channels, "res5": deep_channels}
        self.num_classes = num_classes
        self.out_channels = channels
        self.arm16 = AttentionRefinement(mid_channels, context_channels, norm)
        self.arm32 = AttentionRefinement(deep_channels, context_channels, norm)
        self.conv_head32 = _ConvBNReLU(context_channels, context_channels, 3, norm)
        self.conv_head16 = _ConvBNReLU(context_channels, context_channels, 3, norm)
        self.conv_avg = _ConvBNReLU(deep_channels, context_channels, 1, norm)
        self.ffm = FeatureFusion(in_channels + context_channels, channels, norm)
        self.conv_out = _OutputBlock(channels, channels, num_classes, norm)
        self.dropout = nn.Dropout(dropout)
        self.conv_out_sp8 = (
            _OutputBlock(in_channels, detail_channels, 1, norm) if detail_channels > 0 else None
        )
        self.extra_channels = {DETAIL_KEY: 1} if self.conv_out_sp8 is not None else {}

    def forward(
        self, features: Features
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(features, torch.Tensor) or any(
            k not in features for k in self.feature_channels
        ):
            have = "a tensor" if isinstance(features, torch.Tensor) else list(features)
            raise KeyError(f"STDCHead needs backbone features res3, res4, res5; got {have}")
        f8, f16, f32 = features["res3"], features["res4"], features["res5"]
        avg = self.conv_avg(F.adaptive_avg_pool2d(f32, 1))
        f32_sum = self.arm32(f32) + avg
        f32_up = self.conv_head32(F.interpolate(f32_sum, size=f16.shape[-2:], mode="nearest"))
        f16_sum = self.arm16(f16) + f32_up
        f16_up = self.conv_head16(F.interpolate(f16_sum, size=f8.shape[-2:], mode="nearest"))
        fused = self.ffm(f8, f16_up)
        feature = self.conv_out.conv(fused)
        logits = self.conv_out.conv_out(self.dropout(feature))
        extras: dict[str, torch.Tensor] = {}
        if self.training and self.conv_out_sp8 is not None:
            extras[DETAIL_KEY] = self.conv_out_sp8(f8)
        return logits, feature, extras

    def losses(
        self,
        output: SegOutput,
        targets: torch.Tensor,
        detail_weight: float = 1.0,
        ignore_label: int = 255,
        align_corners: bool = False,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        """The head's own task loss: ``loss_detail = detail_weight · stdc_detail_loss(
        extras["detail_logits"], y)`` when the output has detail logits (training mode) and
        ``detail_weight`` > 0; else ``{}``."""
        detail = output.extras.get(DETAIL_KEY)
        if detail is None or detail_weight <= 0:
            return {}
        return {
            "loss_detail": detail_weight
            * stdc_detail_loss(detail, targets, ignore_label, align_corners)
        }


def _stdc_feature_channels(in_feature: str, input_channels: Mapping[str, int]) -> dict[str, int]:
    names = ("res3", "res4", "res5")
    if set(input_channels) != {in_feature}:
        missing = [k for k in names if k not in input_channels]
        if missing:
            raise ValueError(
                f"the STDC head (TextKDSTDCHead) needs backbone outputs res3/res4/res5; missing "
                f"{missing} in {list(input_channels)}"
            )
        return {k: int(input_channels[k]) for k in names}
    # one width given: STDC (and ResNet) widths of res3 : res4 : res5 are 1 : 2 : 4
    factor = {"res3": 1, "res4": 2, "res5": 4}
    if in_feature not in factor:
        raise ValueError(
            f"cannot infer the STDC head input widths from '{in_feature}': pass feature_channels"
        )
    in_channels = int(input_channels[in_feature])
    unit = in_channels * 1.0 / factor[in_feature]
    if unit != int(unit):
        raise ValueError(f"{in_feature} width {in_channels} is not a multiple of {factor}")
    return {k: int(unit) * f for k, f in factor.items()}


# --------------------------------------------------------------------------- detail loss


def detail_targets(
    targets: torch.Tensor,
    strides: Sequence[int] = STDC_DETAIL_STRIDES,
    fuse_weights: Sequence[float] = STDC_DETAIL_FUSE_WEIGHTS,
    threshold: float = STDC_DETAIL_THRESHOLD,
) -> torch.Tensor:
    """STDC-Seg detail ground truth (N×H×W float in {0, 1}) of label maps ``targets`` (N×H×W).

    For each stride s: ``b_s = [max(0, L_s * y) > threshold]`` with the Laplacian kernel
    ``L = [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]`` applied with stride s and zero padding 1 to the
    label values ``y`` (so ``L*y(p) = 8·y(p) − Σ_{8 neighbours} y``), nearest-upsampled to H×W;
    then ``g = [Σ_s w_s · b_s > threshold]``. With STDC-Seg's weights (0.6, 0.3, 0.1) and
    threshold 0.1, a pixel is a detail pixel iff it is a boundary at stride 1 or 2: the stride-4
    weight alone does not pass the threshold. Like STDC-Seg, the Laplacian marks only the side
    with the larger label value, and non-zero labels on the image border (zero padding). The
    fuse weights are a parameter of STDC-Seg's loss, but the thresholded fused map gives them no
    gradient, so fixed weights are equivalent. Computed in float64 (exact for label values)."""
    if targets.dim() != 3:
        raise ValueError(f"targets must be N×H×W, got shape {tuple(targets.shape)}")
    if len(strides) != len(fuse_weights):
        raise ValueError(
            f"detail strides {list(strides)} and fuse weights {list(fuse_weights)} differ in length"
        )
    y = targets.to(torch.float64).unsqueeze(1)
    size = y.shape[-2:]
    kernel = torch.full((1, 1, 3, 3), -1.0, dtype=torch.float64, device=y.device)
    kernel[0, 0, 1, 1] = 8.0
    fused = torch.zeros_like(y)
    for stride, weight in zip(strides, fuse_weights):
        lap = F.conv2d(y, kernel, stride=int(stride), padding=1).clamp(min=0)
        if lap.shape[-2:] != size:
            lap = F.interpolate(lap, size=size, mode="nearest")
        fused = fused + float(weight) * (lap > threshold).to(torch.float64)
    return (fused > threshold).squeeze(1).to(torch.float32)


def stdc_detail_loss(
    detail_logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_label: int = 255,
    align_corners: bool = False,
) -> torch.Tensor:
    """Detail loss of STDC-Seg: ``BCE(d, g) + dice(σ(d), g)``.

    ``d`` are the detail logits (N×1×h×w) bilinearly upsampled to the label size, ``g =
    detail_targets(y)``; BCE-with-logits is averaged over the non-ignored pixels V (label !=
    ``ignore_label``); ``dice = mean_n [1 − (2 Σ_{p∈V} σ(d)g + 1) / (Σ_{p∈V} σ(d) + Σ_{p∈V} g +
    1)]`` (smoothing 1). Ignored pixels contribute to neither term; 0 when no pixel is valid."""
    if detail_logits.dim() != 4 or detail_logits.shape[1] != 1:
        raise ValueError(f"detail_logits must be N×1×h×w, got shape {tuple(detail_logits.shape)}")
    if targets.dim() != 3 or targets.shape[0] != detail_logits.shape[0]:
        raise ValueError(
            f"targets must be N×H×W with N={detail_logits.shape[0]}, got {tuple(targets.shape)}"
        )
    size = targets.shape[-2:]
    d = detail_logits.float()
    if d.shape[-2:] != size:
        d = F.interpolate(d, size=size, mode="bilinear", align_corners=align_corners)
    d = d[:, 0]
    g = detail_targets(targets)
    valid = (targets != ignore_label).to(d.dtype)
    bce = F.binary_cross_entropy_with_logits(d, g, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp_min(1)
    p = torch.sigmoid(d) * valid
    g = g * valid
    inter = (p * g).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + g.flatten(1).sum(1) + 1)
    if not bool((valid > 0).any()):
        return d.sum() * 0
    return bce + dice.mean()
