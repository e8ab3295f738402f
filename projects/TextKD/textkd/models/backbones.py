"""Segmentation backbones: one timm-backed wrapper for dilated ResNets and MobileNetV2.

``build_backbone(arch, ...)`` returns a :class:`SegBackbone` whose ``forward(x)`` gives the four
stage outputs ``res2..res5`` (strides 4, 8, 8|16, 8|16|32: the last two stages are dilated
instead of strided for output stride 8 or 16). The wrapper holds the timm modules under their
timm names (``conv1``, ``layer1``.. / ``conv_stem``, ``blocks``..), so ImageNet checkpoints of timm,
torchvision or the CIRKD codebase load with :func:`load_pretrained` from a local file, never from
the network. Everything here is plain PyTorch + timm (no detectron2).

Normalisation layers are plain ``nn.BatchNorm2d`` modules (timm's fused BatchNorm+activation
layers are split into a BN module and its activation, with unchanged state-dict keys), so
``nn.SyncBatchNorm.convert_sync_batchnorm`` and :func:`freeze_batchnorm` work on every
architecture without losing an activation.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .weights import (
    CheckpointFileError,
    check_checkpoint_file,
    compare_state_dicts,
    load_checkpoint_file,
    short_list,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SegBackbone",
    "build_backbone",
    "load_pretrained",
    "unwrap_state_dict",
    "CIRKD_STEM",
    "is_cirkd_backbone_state",
    "cirkd_backbone_key",
    "mobilenetv2_layout",
    "mobilenetv2_to_timm_key",
    "torchvision_mobilenetv2_to_timm_key",
    "freeze_batchnorm",
    "resolve_norm_layer",
    "register_backbone",
    "available_backbones",
    "STAGE_NAMES",
]

STAGE_NAMES = ("res2", "res3", "res4", "res5")
_NOMINAL_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

NormLayer = Callable[[int], nn.Module]


NORM_CHOICES = ("auto", "BN", "SyncBN")


def norm_name(norm: str, world_size: int, device: str) -> str:
    """The norm layer a ``MODEL.SEG_BACKBONE.NORM`` value means for a run: "BN" or "SyncBN";
    "auto" = SyncBN when training on more than one process on CUDA, BN otherwise."""
    if norm not in NORM_CHOICES:
        raise ValueError(
            f"MODEL.SEG_BACKBONE.NORM must be one of {list(NORM_CHOICES)}, got {norm!r}"
        )
    if norm == "auto":
        return "SyncBN" if world_size > 1 and str(device).startswith("cuda") else "BN"
    return norm


def resolve_norm_layer(norm: str | NormLayer | None) -> NormLayer:
    """Map a norm spec to a factory ``f(num_channels) -> nn.Module``.

    ``None``/``"BN"`` -> ``nn.BatchNorm2d``; ``"SyncBN"`` -> ``nn.SyncBatchNorm``; a callable is
    returned unchanged. Any other string raises ValueError naming the choices.
    """
    if norm is None or norm == "BN":
        return nn.BatchNorm2d
    if isinstance(norm, str):
        if norm == "SyncBN":
            return nn.SyncBatchNorm
        raise ValueError(f"unknown norm layer '{norm}'; choices: 'BN', 'SyncBN' or a callable")
    if not callable(norm):
        raise ValueError(f"norm_layer must be 'BN', 'SyncBN' or a callable, got {norm!r}")
    return norm


# --------------------------------------------------------------------------- norm utilities


class _NormAct(nn.Module):
    """A normalisation module followed by dropout and activation (timm's ``BatchNormAct2d``
    split into separate modules). Its state dict uses the keys of the inner norm directly
    (``prefix.weight``, not ``prefix.norm.weight``), so checkpoints stay timm-compatible, while
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` / :func:`freeze_batchnorm` can replace the inner
    norm without dropping the activation."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.drop = drop
        self.act = act
        self.register_state_dict_post_hook(_NormAct._flatten_keys)
        self.register_load_state_dict_pre_hook(_NormAct._nest_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))

    @staticmethod
    def _flatten_keys(
        module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any
    ) -> None:
        inner = prefix + "norm."
        for key in [k for k in state_dict if k.startswith(inner)]:
            state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)

    @staticmethod
    def _nest_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        for key in list(state_dict):
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                if rest and "." not in rest:
                    state_dict[prefix + "norm." + rest] = state_dict.pop(key)


def _copy_norm_state(src: nn.Module, dst: nn.Module) -> None:
    if isinstance(dst, nn.modules.batchnorm._BatchNorm) and isinstance(
        src, nn.modules.batchnorm._BatchNorm
    ):
        dst.eps = src.eps
        dst.momentum = src.momentum
        with torch.no_grad():
            if src.affine and dst.affine:
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            if src.track_running_stats and dst.track_running_stats:
                dst.running_mean.copy_(src.running_mean)
                dst.running_var.copy_(src.running_var)
                dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _convert_norms(module: nn.Module, norm_layer: NormLayer) -> nn.Module:
    """Replace every BatchNorm2d (and timm BatchNormAct2d) below ``module`` by ``norm_layer(C)``,
    keeping parameters/statistics when the new layer is a BatchNorm; fused norm+activation layers
    become :class:`_NormAct`. Returns the (possibly replaced) module."""
    from timm.layers import BatchNormAct2d

    for name, child in list(module.named_children()):
        if isinstance(child, BatchNormAct2d):
            norm = norm_layer(child.num_features)
            _copy_norm_state(child, norm)
            if isinstance(child.act, nn.Identity) and isinstance(child.drop, nn.Identity):
                setattr(module, name, norm)
            else:
                setattr(module, name, _NormAct(norm, child.drop, child.act))
        elif type(child) is nn.BatchNorm2d:
            if norm_layer is not nn.BatchNorm2d:
                norm = norm_layer(child.num_features)
                _copy_norm_state(child, norm)
                setattr(module, name, norm)
        else:
            _convert_norms(child, norm_layer)
    return module


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d``/``SyncBatchNorm`` below (or at) ``module`` by torchvision's
    ``FrozenBatchNorm2d`` with the same affine parameters, running statistics and eps:
    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, nothing updated in
    training. Returns the converted module (a new object when ``module`` itself is a BN)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, nn.BatchNorm1d
    ):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in list(module.named_children()):
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


# --------------------------------------------------------------------------- backbones


class SegBackbone(nn.Module):
    """Base class of TextKD backbones.

    ``forward(x)`` returns ``{"res2", "res3", "res4", "res5"}``. Attributes: ``arch``,
    ``in_chans``, ``output_stride``, ``out_channels`` and ``out_strides`` (dicts keyed by stage
    name), ``extra_chans_init_std``, ``first_conv_key`` (state-dict key of the first conv
    weight, adapted by :func:`load_pretrained` when ``in_chans`` > 3) and
    ``pretrained_ignore_prefixes`` (checkpoint key prefixes that belong to the ImageNet
    classifier and are skipped when loading).
    """

    first_conv_key: str = ""
    # "" (random init), "timm" (timm / torchvision / converted file) or "cirkd" (CIRKD's
    # ResNetV1b or MobileNetV2 ImageNet file, loaded as it is): set by load_pretrained
    pretrained_layout: str = ""
    pretrained_ignore_prefixes: tuple[str, ...] = ("fc.", "classifier.", "head.")

    def __init__(self, arch: str, in_chans: int, output_stride: int) -> None:
        super().__init__()
        self.arch = arch
        self.in_chans = in_chans
        self.output_stride = output_stride
        self.extra_chans_init_std = 0.1
        self.out_strides = {k: min(v, output_stride) for k, v in _NOMINAL_STRIDES.items()}
        self.out_channels: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class ResNetBackbone(SegBackbone):
    """Dilated ResNet from timm's ``ResNet`` class: ``conv1`` (a 7×7 conv, or the 3-layer deep
    stem), ``bn1``, ``act1``, ``maxpool``, ``layer1..4`` = ``res2..res5``."""

    def __init__(
        self,
        arch: str,
        depth: int,
        stem: str,
        in_chans: int = 3,
        output_stride: int = 8,
    ) -> None:
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        super().__init__(arch, in_chans, output_stride)
        block, layers = {
            18: (BasicBlock, [2, 2, 2, 2]),
            50: (Bottleneck, [3, 4, 6, 3]),
            101: (Bottleneck, [3, 4, 23, 3]),
        }[depth]
        stem_kwargs = {
            "": {"stem_type": "", "stem_width": 64, "avg_down": False},
            "d": {"stem_type": "deep", "stem_width": 32, "avg_down": True},
            "v1s": {"stem_type": "deep", "stem_width": 64, "avg_down": False},
        }[stem]
        net = ResNet(
            block=block,
            layers=layers,
            in_chans=in_chans,
            output_stride=output_stride,
            num_classes=0,
            **stem_kwargs,
        )
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.act1 = net.act1
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.first_conv_key = "conv1.0.weight" if stem_kwargs["stem_type"] else "conv1.weight"
        expansion = block.expansion
        self.out_channels = {
            f"res{i + 2}": 64 * (2**i) * expansion for i in range(4)
        }  # 64/128/256/512 × expansion

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        r2 = self.layer1(x)
        r3 = self.layer2(r2)
        r4 = self.layer3(r3)
        r5 = self.layer4(r4)
        return {"res2": r2, "res3": r3, "res4": r4, "res5": r5}


class MobileNetV2Backbone(SegBackbone):
    """Dilated MobileNetV2 (timm ``mobilenetv2_100``): ``conv_stem``, ``bn1``, ``blocks``;
    ``res2..res5`` are the outputs of blocks 1, 2, 4, 6 (24, 32, 96, 320 channels). The 1×1
    ``conv_head`` to 1280 channels and the classifier are not part of the backbone."""

    pretrained_ignore_prefixes = ("conv_head.", "bn2.", "classifier.", "fc.", "head.")

    def __init__(self, arch: str, in_chans: int = 3, output_stride: int = 8) -> None:
        import timm

        super().__init__(arch, in_chans, output_stride)
        net = timm.create_model(
            "mobilenetv2_100",
            pretrained=False,
            in_chans=in_chans,
            output_stride=output_stride,
            num_classes=0,
        )
        self.conv_stem = net.conv_stem
        self.bn1 = net.bn1
        self.blocks = net.blocks
        self.first_conv_key = "conv_stem.weight"
        info = net.feature_info  # strides 2, 4, 8, 16, 32: take the last four
        self._take: dict[int, str] = {}
        for name, entry in zip(STAGE_NAMES, list(info)[1:]):
            idx = int(entry["module"].split(".")[1])
            self._take[idx] = name
            self.out_channels[name] = int(entry["num_chs"])
        self._last = max(self._take)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out: dict[str, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self._take:
                out[self._take[i]] = x
            if i == self._last:
                break
        return out


BackboneBuilder = Callable[..., SegBackbone]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str, builder: BackboneBuilder) -> None:
    """Register ``builder(in_chans=..., output_stride=...) -> SegBackbone`` under ``name``.
    Raises ValueError when the name is taken."""
    if name in _BACKBONES:
        raise ValueError(f"backbone '{name}' is already registered")
    _BACKBONES[name] = builder


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(_BACKBONES)


def _resnet_builder(arch: str, depth: int, stem: str) -> BackboneBuilder:
    def build(in_chans: int = 3, output_stride: int = 8) -> SegBackbone:
        return ResNetBackbone(arch, depth, stem, in_chans=in_chans, output_stride=output_stride)

    return build


for _depth in (18, 50, 101):
    for _stem in ("", "d", "v1s"):
        _name = f"resnet{_depth}{_stem}"
        register_backbone(_name, _resnet_builder(_name, _depth, _stem))
register_backbone(
    "mobilenetv2",
    lambda in_chans=3, output_stride=8: MobileNetV2Backbone("mobilenetv2", in_chans, output_stride),
)


def build_backbone(
    arch: str,
    output_stride: int = 8,
    in_chans: int = 3,
    pretrained: str = "",
    frozen_bn: bool = False,
    extra_chans_init_std: float = 0.1,
    norm_layer: str | NormLayer | None = None,
) -> SegBackbone:
    """Build a randomly initialised (or locally pretrained) dilated backbone.

    Args:
        arch: one of :func:`available_backbones` (resnet18/50/101, their deep-stem ``d`` and
            ``v1s`` variants, mobilenetv2).
        output_stride: 8, 16 or 32; stages past it are dilated instead of strided.
        in_chans: input channels (4 for a label-conditioned LAD teacher).
        pretrained: local checkpoint path ("" = random init); see :func:`load_pretrained`.
        frozen_bn: replace every BatchNorm by ``FrozenBatchNorm2d`` (after loading weights).
        extra_chans_init_std: std of the first-conv filters of input channels beyond the 3
            pretrained ones.
        norm_layer: "BN" (default), "SyncBN" or a factory ``f(num_channels)``.
    """
    if arch not in _BACKBONES:
        raise ValueError(f"unknown backbone arch '{arch}'; choices: {available_backbones()}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    norm = resolve_norm_layer(norm_layer)
    backbone = _BACKBONES[arch](in_chans=in_chans, output_stride=output_stride)
    backbone.extra_chans_init_std = float(extra_chans_init_std)
    _convert_norms(backbone, norm)
    if pretrained:
        load_pretrained(backbone, pretrained)
    if frozen_bn:
        freeze_batchnorm(backbone)
    logger.info(
        "built backbone %s (in_chans=%d, output_stride=%d, pretrained=%s, frozen_bn=%s)",
        arch,
        in_chans,
        output_stride,
        pretrained or "none",
        frozen_bn,
    )
    return backbone


# --------------------------------------------------------------------------- pretrained weights


# containers a checkpoint may nest its weights under, tried in this order
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "model_state")


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint ``obj``: a state dict, or one nested (up to 3 levels)
    under a key of :data:`STATE_DICT_KEYS`; ``module.`` prefixes are removed and non-tensor
    entries dropped. ValueError naming ``source`` (the file) when ``obj`` is not a mapping or
    holds no tensors."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in STATE_DICT_KEYS:
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith("module."):
            key = key[len("module.") :]
        state[key] = value
    if not state:
        raise ValueError(f"{source} holds no tensors")
    return state


# CIRKD's ResNetV1b deep ("v1s") stem module -> the timm deep-stem module of the ``resnet*v1s``
# backbones (CIRKD's ``resnet*-imagenet.pth`` files use the former names)
CIRKD_STEM = {
    "conv1": "conv1.0",
    "bn1": "conv1.1",
    "conv2": "conv1.3",
    "bn2": "conv1.4",
    "conv3": "conv1.6",
    "bn3": "bn1",
}
_CIRKD_STEM_KEYS = frozenset({"conv1.weight", "conv2.weight", "conv3.weight", "bn3.weight"})


def is_cirkd_backbone_state(state: Mapping[str, Any]) -> bool:
    """Whether a backbone state dict uses CIRKD's ResNetV1b "v1s" names (a deep stem
    ``conv1/conv2/conv3`` + ``bn3`` at the top level; no timm or torchvision ResNet has them)."""
    return _CIRKD_STEM_KEYS <= set(state)


def cirkd_backbone_key(key: str) -> str:
    """A CIRKD ResNetV1b key (relative to the backbone) under the ``resnet*v1s`` backbone's name:
    the deep stem is renamed (:data:`CIRKD_STEM`), residual stages and the classifier keep
    theirs."""
    top, dot, rest = key.partition(".")
    if dot and top in CIRKD_STEM:
        return f"{CIRKD_STEM[top]}.{rest}"
    return key


# MobileNetV2 ImageNet files with ``features.N`` keys (torchvision's ``mobilenet_v2`` and CIRKD's
# ``mobilenetv2-imagenet.pth``, the CSAIL semantic-segmentation-pytorch layout of CIRKD's
# ``models/base_models/mobilenetv2.py``): ``features.0`` = stem conv/BN, ``features.1..17`` = the
# 17 inverted-residual blocks of timm's 7 stages, ``features.18`` = 1x1 conv to 1280 + BN,
# ``classifier.*`` = the ImageNet classifier. Blocks: module path -> timm module, for the first
# block (expansion 1: dw conv, BN, pw-linear conv, BN) and the others (pw expand, BN, dw, BN,
# pw-linear, BN). torchvision nests each conv+BN+ReLU6 in a Sequential; CIRKD's blocks are flat
# Sequentials with the ReLU6 at their own indices.
MBV2_REPEATS = (1, 2, 3, 4, 3, 3, 1)
_MBV2_STEM = {"0": "conv_stem", "1": "bn1"}
_MBV2_HEAD = {"0": "conv_head", "1": "bn2"}
_MBV2_BLOCKS = {
    "torchvision": (
        {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"},
        {
            "conv.0.0": "conv_pw",
            "conv.0.1": "bn1",
            "conv.1.0": "conv_dw",
            "conv.1.1": "bn2",
            "conv.2": "conv_pwl",
            "conv.3": "bn3",
        },
    ),
    "cirkd": (
        {"conv.0": "conv_dw", "conv.1": "bn1", "conv.3": "conv_pw", "conv.4": "bn2"},
        {
            "conv.0": "conv_pw",
            "conv.1": "bn1",
            "conv.3": "conv_dw",
            "conv.4": "bn2",
            "conv.6": "conv_pwl",
            "conv.7": "bn3",
        },
    ),
}


def mobilenetv2_layout(state: Mapping[str, Any]) -> str:
    """The ``features.N`` MobileNetV2 layout of a state dict: "torchvision"
    (``features.1.conv.0.0.weight``), "cirkd" (CIRKD's / CSAIL's flat blocks,
    ``features.1.conv.0.weight``) or "" (neither: timm names, a ResNet, STDC, ...)."""
    if "features.0.0.weight" not in state:
        return ""
    if "features.1.conv.0.0.weight" in state:
        return "torchvision"
    if "features.1.conv.0.weight" in state:
        return "cirkd"
    return ""


def _mbv2_stage_block(index: int) -> tuple[int, int]:
    """(stage, block in stage) of the ``index``-th (0-based) inverted-residual block."""
    start = 0
    for stage, n in enumerate(MBV2_REPEATS):
        if index < start + n:
            return stage, index - start
        start += n
    raise KeyError(f"MobileNetV2 block index {index} out of range")


def mobilenetv2_to_timm_key(key: str, layout: str) -> str | None:
    """A ``features.N`` MobileNetV2 key of ``layout`` ("torchvision" or "cirkd",
    :func:`mobilenetv2_layout`) -> the timm ``mobilenetv2_100`` key (``conv_stem``, ``bn1``,
    ``blocks.S.B.*``, ``conv_head``/``bn2`` for ``features.18``); None for the ImageNet
    classifier. Raises KeyError naming the key when it has no place in MobileNetV2."""
    if layout not in _MBV2_BLOCKS:
        raise ValueError(
            f"MobileNetV2 layout must be one of {sorted(_MBV2_BLOCKS)}, got {layout!r}"
        )
    if key.startswith("classifier."):
        return None
    m = re.fullmatch(r"features\.(\d+)\.(.+)\.([^.]+)", key)
    if m is None:
        raise KeyError(f"{layout} MobileNetV2 key '{key}' is not under features./classifier.")
    idx, module, param = int(m.group(1)), m.group(2), m.group(3)
    if idx == 0:
        table, prefix = _MBV2_STEM, ""
    elif idx == 18:
        table, prefix = _MBV2_HEAD, ""
    elif 1 <= idx <= 17:
        stage, block = _mbv2_stage_block(idx - 1)
        table, prefix = _MBV2_BLOCKS[layout][0 if idx == 1 else 1], f"blocks.{stage}.{block}."
    else:
        raise KeyError(f"{layout} MobileNetV2 key '{key}': block index {idx} out of range")
    if module not in table:
        raise KeyError(f"unexpected {layout} MobileNetV2 key '{key}'")
    return f"{prefix}{table[module]}.{param}"


def torchvision_mobilenetv2_to_timm_key(key: str) -> str | None:
    """torchvision ``mobilenet_v2`` key -> timm ``mobilenetv2_100`` key (None for the
    classifier); :func:`mobilenetv2_to_timm_key` with the "torchvision" layout."""
    return mobilenetv2_to_timm_key(key, "torchvision")


def load_pretrained(
    backbone: SegBackbone, path: str, extra_chans_init_std: float | None = None
) -> None:
    """Load ImageNet weights from the local file ``path`` into ``backbone`` (in place).

    Accepts a ``torch.save`` file (raw state dict or one nested under ``state_dict``/``model``)
    or a ``.safetensors`` file; ``module.`` prefixes are stripped and classifier keys
    (``backbone.pretrained_ignore_prefixes``) are skipped. CIRKD's ImageNet files
    (``resnet18/50/101-imagenet.pth``, "v1s" names, :func:`is_cirkd_backbone_state`) load as they
    are into the ``resnet*v1s`` backbones: their keys are renamed in memory
    (:func:`cirkd_backbone_key`, the renaming of ``tools/convert_checkpoint.py``) and
    ``backbone.pretrained_layout`` becomes "cirkd" (those weights expect CIRKD's input: BGR minus
    the Caffe mean, no std). MobileNetV2 files with ``features.N`` keys (:func:`mobilenetv2_layout`:
    torchvision's ``mobilenet_v2`` and CIRKD's ``mobilenetv2-imagenet.pth``) load as they are into
    the ``mobilenetv2`` backbone, renamed by :func:`mobilenetv2_to_timm_key` (the table of
    ``tools/convert_checkpoint.py``); CIRKD's sets ``pretrained_layout`` "cirkd". Keys the
    backbone does not have (the classifier, the 1x1 ``features.18`` conv to 1280 channels) are
    skipped and logged under the file's names. When
    the checkpoint's first conv has 3 input channels and the backbone more, the RGB filters are
    copied and the extra input filters drawn from N(0, std²) with
    ``std = extra_chans_init_std`` (default: ``backbone.extra_chans_init_std``).

    Raises FileNotFoundError when ``path`` is missing and ValueError listing every missing,
    unexpected or shape-mismatched key.
    """
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"pretrained backbone weights not found: '{path}'")
    if path.endswith(".safetensors"):
        check_checkpoint_file(path, "pretrained backbone weights")
        try:
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise CheckpointFileError(f"cannot read pretrained weights '{path}': {e}") from e
    else:
        obj = load_checkpoint_file(path, "pretrained backbone weights", weights_only=True)
    ckpt = unwrap_state_dict(obj, f"pretrained file '{path}'")
    own = backbone.state_dict()
    cirkd = is_cirkd_backbone_state(ckpt)
    if cirkd:
        ckpt = {cirkd_backbone_key(k): v for k, v in ckpt.items()}
    # renamed key -> the file's key, for messages (MobileNetV2 features.N files)
    source: dict[str, str] = {}
    mbv2 = mobilenetv2_layout(ckpt) if "features.0.0.weight" not in own else ""
    if mbv2:
        renamed: dict[str, torch.Tensor] = {}
        for k, v in ckpt.items():
            try:
                new = mobilenetv2_to_timm_key(k, mbv2)
            except KeyError:
                new = None  # no place in MobileNetV2: kept as is, reported as unexpected below
            if new is not None:
                source[new] = k
                k = new
            renamed[k] = v
        ckpt = renamed
    std = backbone.extra_chans_init_std if extra_chans_init_std is None else extra_chans_init_std

    ignored = [
        k
        for k in ckpt
        if k not in own and any(k.startswith(p) for p in backbone.pretrained_ignore_prefixes)
    ]
    skipped = [source.get(k, k) for k in ignored]  # under the file's names
    for k in ignored:
        del ckpt[k]
    for k in [k for k in ckpt if k.endswith("num_batches_tracked") and k not in own]:
        del ckpt[k]  # frozen BN has no batch counter

    key = backbone.first_conv_key
    if key in ckpt and key in own and ckpt[key].shape != own[key].shape:
        src, dst = ckpt[key], own[key]
        if src.shape[1] == 3 and dst.shape[1] > 3 and src.shape[0] == dst.shape[0]:
            if src.shape[2:] == dst.shape[2:]:
                new = torch.empty_like(dst, dtype=src.dtype)
                new[:, :3] = src
                new[:, 3:] = torch.randn_like(new[:, 3:]) * std
                ckpt[key] = new
                logger.info(
                    "%s: adapted first conv '%s' from 3 to %d input channels "
                    "(extra filters ~ N(0, %g^2))",
                    path,
                    key,
                    dst.shape[1],
                    std,
                )

    missing, unexpected, mismatched = compare_state_dicts(ckpt, own)
    # old checkpoints have no num_batches_tracked
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k}{f' (file: {source[k]})' if k in source else ''}: checkpoint {cs} vs model {ms}"
        for k, cs, ms in mismatched
    ]
    unexpected = [f"{k} (file: {source[k]})" if k in source else k for k in unexpected]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {short_list(missing, 20)}")
        if unexpected:
            parts.append(f"unexpected keys: {short_list(unexpected, 20)}")
        if mismatched:
            parts.append(f"shape mismatches: {short_list(mismatched, 20)}")
        hint = ""
        if cirkd and not backbone.arch.endswith("v1s"):
            hint = (
                ". The file holds CIRKD ResNetV1b weights, which fit the deep-stem 'resnet*v1s' "
                "backbones: set MODEL.SEG_BACKBONE.ARCH to resnet18v1s / resnet50v1s / resnet101v1s"
            )
        if mbv2 and not isinstance(backbone, MobileNetV2Backbone):
            hint = (
                f". The file holds {mbv2} MobileNetV2 weights (features.N keys): set "
                "MODEL.SEG_BACKBONE.ARCH to mobilenetv2"
            )
        raise ValueError(
            f"pretrained weights '{path}' do not fit backbone '{backbone.arch}' "
            f"(in_chans={backbone.in_chans}): " + "; ".join(parts) + hint
        )
    for k in own:
        if k not in ckpt:  # num_batches_tracked absent from old checkpoints
            ckpt[k] = own[k]
    backbone.load_state_dict(ckpt, strict=True)
    backbone.pretrained_layout = "cirkd" if cirkd or mbv2 == "cirkd" else "timm"
    kind = (
        "CIRKD ResNetV1b "
        if cirkd
        else {"cirkd": "CIRKD MobileNetV2 ", "torchvision": "torchvision MobileNetV2 "}.get(
            mbv2, ""
        )
    )
    logger.info(
        "loaded pretrained %sbackbone weights from %s (%d tensors, skipped keys the backbone "
        "does not have (classifier, last 1x1 conv): %s)",
        kind,
        path,
        len(ckpt),
        skipped or "none",
    )
