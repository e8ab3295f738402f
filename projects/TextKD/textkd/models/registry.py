"""The core head registry: one class per head, registered once.

A head is an ``nn.Module`` class with a classmethod ``from_config(node, input_channels,
norm_layer=None) -> constructor kwargs``; ``node`` is a mapping of the ``MODEL.SEM_SEG_HEAD``
keys (a plain dict, or a detectron2 CfgNode read with ``[]`` only; a missing key takes its
default, see :func:`cfg_value`), ``input_channels`` maps backbone output names to channels,
``norm_layer`` is the resolved norm ("BN"/"SyncBN"/a class). The class is registered with
``@register_head("<name>", d2_name="TextKD<Name>Head")``: the core name is the one of
:func:`~textkd.models.segmentor.build_segmentor`, the detectron2 name the one of
``MODEL.SEM_SEG_HEAD.NAME``, whose registration ``d2/build.py`` derives from this registry
(no per-head code there). Plain PyTorch, no detectron2.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn

__all__ = [
    "HEADS",
    "D2_HEAD_NAMES",
    "register_head",
    "available_heads",
    "build_head",
    "build_head_from_config",
    "default_head_channels",
    "reference_width",
    "cfg_value",
    "feature_channels",
    "head_width",
    "common_head_args",
]

HeadFactory = Callable[..., nn.Module]
# core name -> head class (with from_config) or, for heads registered the old way, a factory
# called with build_segmentor's keywords
HEADS: dict[str, HeadFactory] = {}
# core name -> name in detectron2's SEM_SEG_HEADS_REGISTRY (MODEL.SEM_SEG_HEAD.NAME)
D2_HEAD_NAMES: dict[str, str] = {}

# defaults of the MODEL.SEM_SEG_HEAD keys the heads read (the values of textkd/config.py)
HEAD_KEY_DEFAULTS: dict[str, Any] = {
    "IN_FEATURE": "res5",
    "CHANNELS": 0,
    "ASPP_DILATIONS": (12, 24, 36),
    "ASPP_DROPOUT": 0.5,
    "PSP_BINS": (1, 2, 3, 6),
    "DROPOUT": 0.1,
    "OCR_KEY_CHANNELS": 0,
    "STDC_DETAIL_WEIGHT": 1.0,
    "AUX_IN_FEATURE": "res4",
    "AUX_CHANNELS": 0,
    "ALIGN_CORNERS": False,
}

# build_segmentor / build_head keyword -> MODEL.SEM_SEG_HEAD key it stands for
KEYWORD_KEYS: dict[str, str] = {
    "num_classes": "NUM_CLASSES",
    "channels": "CHANNELS",
    "aspp_dilations": "ASPP_DILATIONS",
    "aspp_dropout": "ASPP_DROPOUT",
    "psp_bins": "PSP_BINS",
    "dropout": "DROPOUT",
    "in_feature": "IN_FEATURE",
    "align_corners": "ALIGN_CORNERS",
    "ocr_key_channels": "OCR_KEY_CHANNELS",
    "region_in_feature": "AUX_IN_FEATURE",
    "region_channels": "AUX_CHANNELS",
}


def cfg_value(node: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``node[key]``, or the default (``default``, else :data:`HEAD_KEY_DEFAULTS`) when the node
    has no such key; KeyError naming the key when it is required (no default)."""
    if key in node:
        return node[key]
    if default is not None:
        return default
    if key in HEAD_KEY_DEFAULTS:
        return HEAD_KEY_DEFAULTS[key]
    raise KeyError(f"MODEL.SEM_SEG_HEAD.{key} is required (a head config without it)")


def feature_channels(
    input_channels: Mapping[str, int], key: str, feature: str, role: str = ""
) -> int:
    """Channels of backbone output ``feature`` (the value of ``MODEL.SEM_SEG_HEAD.{key}``);
    ValueError naming the key, its value (and ``role``) and the available outputs when absent."""
    if feature not in input_channels:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.{key}={feature!r}{role} is not a backbone output; "
            f"available: {list(input_channels)}"
        )
    return int(input_channels[feature])


def head_width(node: Mapping[str, Any], default: int) -> int:
    """``CHANNELS`` when > 0, else ``default`` (the head's reference width)."""
    ch = int(cfg_value(node, "CHANNELS") or 0)
    return ch if ch > 0 else int(default)


def common_head_args(
    node: Mapping[str, Any], input_channels: Mapping[str, int], norm_layer: Any = None
) -> dict[str, Any]:
    """``in_channels`` (of IN_FEATURE), ``num_classes``, ``dropout``, ``norm_layer``,
    ``in_feature``: the arguments every single-input head takes."""
    in_feature = cfg_value(node, "IN_FEATURE")
    return {
        "in_channels": feature_channels(input_channels, "IN_FEATURE", in_feature),
        "num_classes": int(cfg_value(node, "NUM_CLASSES")),
        "dropout": float(cfg_value(node, "DROPOUT")),
        "norm_layer": norm_layer,
        "in_feature": in_feature,
    }


def register_head(
    name: str, factory: HeadFactory | None = None, *, d2_name: str | None = None
) -> Any:
    """Register head ``name`` (usable as a class decorator): a class with ``from_config`` (see
    the module docstring), registered in detectron2 as ``d2_name`` when given; or, as before, a
    factory called as ``factory(in_channels=..., num_classes=..., channels=... | None,
    dropout=..., norm_layer=..., in_feature=..., aspp_dilations=..., psp_bins=...,
    align_corners=..., feature_channels=..., **extra)`` that accepts (and may ignore) every
    keyword."""

    def _register(f: HeadFactory) -> HeadFactory:
        if name in HEADS:
            raise ValueError(f"head '{name}' is already registered")
        if d2_name is not None:
            if d2_name in D2_HEAD_NAMES.values():
                raise ValueError(f"detectron2 head name '{d2_name}' is already registered")
            D2_HEAD_NAMES[name] = d2_name
        HEADS[name] = f
        return f

    return _register(factory) if factory is not None else _register


def available_heads() -> list[str]:
    """Names accepted by :func:`build_segmentor` / :func:`build_head`."""
    return sorted(HEADS)


def _lookup(name: str) -> HeadFactory:
    if name not in HEADS:
        raise ValueError(f"unknown segmentation head '{name}'; choices: {available_heads()}")
    return HEADS[name]


def reference_width(head: Any, in_channels: int) -> int:
    """Reference width of the head class ``head`` for an input of ``in_channels``: its class
    attribute ``DEFAULT_CHANNELS = (large, small)`` (large for >= 1024 input channels,
    ResNet-50/101; small for ResNet-18 / MobileNetV2), (256, 128) without one."""
    large, small = getattr(head, "DEFAULT_CHANNELS", (256, 128))
    return large if in_channels >= 1024 else small


def default_head_channels(head: str, in_channels: int) -> int:
    """:func:`reference_width` of the registered head ``head``: DeepLabV3 256 (ResNet-50/101,
    >= 1024 input channels) or 128 (ResNet-18, MobileNetV2); PSPNet and FCN 512 or 128 (CIRKD /
    mmsegmentation)."""
    return reference_width(HEADS.get(head), in_channels)


def build_head_from_config(
    name: str,
    node: Mapping[str, Any],
    input_channels: Mapping[str, int],
    norm_layer: Any = None,
    **overrides: Any,
) -> nn.Module:
    """Build the registered head ``name`` from ``cls.from_config(node, input_channels,
    norm_layer)``; ``overrides`` replace constructor arguments (ValueError naming a keyword the
    head's constructor does not take)."""
    cls = _lookup(name)
    if not hasattr(cls, "from_config"):
        raise ValueError(f"head '{name}' was registered as a factory without from_config")
    args = cls.from_config(node, dict(input_channels), norm_layer)
    if overrides:
        params = inspect.signature(cls.__init__).parameters
        bad = sorted(k for k in overrides if k not in params or k == "self")
        if bad:
            accepted = sorted(k for k in params if k != "self")
            raise ValueError(
                f"head '{name}' ({cls.__name__}) takes no keyword {bad}; its arguments: "
                f"{accepted}, plus the config keywords {sorted(KEYWORD_KEYS)}"
            )
        args.update(overrides)
    return cls(**args)


def build_head(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered head ``name`` from :func:`build_segmentor`'s keywords:
    ``in_channels`` (of ``in_feature``) and/or ``feature_channels`` (every backbone output),
    ``norm_layer``, the keywords of :data:`KEYWORD_KEYS` (None: the key's default) and
    constructor arguments of the head class. Unknown names raise ValueError listing the
    choices."""
    factory = _lookup(name)
    if not hasattr(factory, "from_config"):
        return factory(**kwargs)
    kwargs = dict(kwargs)
    in_channels = kwargs.pop("in_channels", None)
    input_channels = dict(kwargs.pop("feature_channels", None) or {})
    norm_layer = kwargs.pop("norm_layer", None)
    region_in_channels = kwargs.pop("region_in_channels", None)
    node: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in KEYWORD_KEYS:
            if value is not None:
                node[KEYWORD_KEYS[key]] = value
        else:
            overrides[key] = value
    in_feature = cfg_value(node, "IN_FEATURE")
    if in_channels is not None:
        input_channels[in_feature] = int(in_channels)
    if region_in_channels is not None:
        input_channels[cfg_value(node, "AUX_IN_FEATURE")] = int(region_in_channels)
    return build_head_from_config(name, node, input_channels, norm_layer, **overrides)
