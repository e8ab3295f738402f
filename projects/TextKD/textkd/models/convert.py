"""Convert checkpoints of other codebases into TextKD checkpoints (framework-free).

Two kinds of sources:

* **CIRKD segmentation models** (github.com/winycg/CIRKD, ``models/deeplabv3.py`` and
  ``models/pspnet.py`` on dilated ``ResNetV1b`` backbones): state dicts with keys
  ``pretrained.*`` (backbone), ``head.*`` and ``auxlayer.*``. They become full TextKD model
  checkpoints ``{"model": {"segmentor.<key>": tensor}}`` loadable as ``MODEL.WEIGHTS`` or
  ``MODEL.DISTILL.TEACHER.WEIGHTS``. The "v1s" deep stem (``conv1/bn1/conv2/bn2/conv3/bn3``) maps
  to timm's ``conv1.0/conv1.1/conv1.3/conv1.4/conv1.6`` + ``bn1``; residual stages, heads and the
  auxiliary FCN keep their names (``auxlayer`` -> ``aux_head``). The dilation pattern of CIRKD's
  dilated ResNetV1b (first block of the res4/res5 stage at dilation 1/2, the others 2/4) is the
  one of timm's ``output_stride=8`` ResNet, so the converted model computes the same function.
  CIRKD feeds BGR images minus the Caffe mean ``[104.008, 116.669, 122.679]`` without dividing by
  a std (``dataset/*.py``), and its heads upsample with ``align_corners=True``: the printed config
  says so (``INPUT.FORMAT BGR``, ``MODEL.PIXEL_STD [1, 1, 1]``, ``ALIGN_CORNERS True``).
* **ImageNet backbones** of torchvision (``resnet18/50/101``, ``mobilenet_v2``), timm
  (``resnet18/50/101`` and their ``d``/``s`` deep-stem variants, ``mobilenetv2_100``) and CIRKD
  (``resnet18-imagenet.pth`` etc., "v1s" names; ``mobilenetv2-imagenet.pth``, ``features.N``
  names), and STDC-Seg's STDC1/STDC2 ImageNet weights
  (``STDCNet813M_73.91.tar``, ``STDCNet1446_76.47.tar``). They become backbone-only files
  ``{"state_dict": {...}}`` for ``MODEL.SEG_BACKBONE.PRETRAINED``; ImageNet classifier keys are
  dropped and listed.

Every conversion is checked against the TextKD model it is meant for (built on the ``meta``
device: no memory, no weights): a source key without a target, a target key without a source or
a shape mismatch raises ValueError naming the keys; nothing is dropped silently. No detectron2.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .backbones import (
    CIRKD_STEM,
    build_backbone,
    cirkd_backbone_key,
    is_cirkd_backbone_state,
    mobilenetv2_layout,
    mobilenetv2_to_timm_key,
    torchvision_mobilenetv2_to_timm_key,
    unwrap_state_dict,
)
from .stdc import STDC_LAYERS  # also registers the stdc1/stdc2 backbones
from .weights import compare_state_dicts, load_checkpoint_file, short_list

logger = logging.getLogger(__name__)

__all__ = [
    "SOURCE_FORMATS",
    "CIRKD_PIXEL_MEAN",
    "CIRKD_PIXEL_STD",
    "IMAGENET_PIXEL_MEAN",
    "IMAGENET_PIXEL_STD",
    "ConvertedCheckpoint",
    "load_source_state_dict",
    "detect_format",
    "cirkd_to_textkd_key",
    "textkd_to_cirkd_key",
    "to_cirkd_state_dict",
    "torchvision_mobilenetv2_to_timm_key",
    "infer_backbone_arch",
    "infer_cirkd_model",
    "convert_cirkd_segmentor",
    "convert_backbone",
    "convert_checkpoint",
    "check_state_dict",
    "save_converted",
]

SOURCE_FORMATS = ("auto", "cirkd", "cirkd-backbone", "torchvision", "timm", "stdc")

# CIRKD dataset loaders: cv2.imread (BGR) minus this BGR Caffe mean, no division by a std
CIRKD_PIXEL_MEAN = (104.00698793, 116.66876762, 122.67891434)
CIRKD_PIXEL_STD = (1.0, 1.0, 1.0)
# torchvision / timm ImageNet models: RGB, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)
IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)

# CIRKD deep ("v1s") stem module -> TextKD (timm deep stem) module (one table, in backbones.py,
# which loads CIRKD's ImageNet files directly), and back
_TEXTKD_STEM = {v: k for k, v in CIRKD_STEM.items()}
_CIRKD_TOP = {"pretrained": "backbone", "head": "head", "auxlayer": "aux_head"}
_TEXTKD_TOP = {v: k for k, v in _CIRKD_TOP.items()}

# (depth, bottleneck) -> ResNet depth from the blocks per stage
_RESNET_DEPTHS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
}


# --------------------------------------------------------------------------- result record


@dataclass
class ConvertedCheckpoint:
    """A converted checkpoint and what the user needs to know about it.

    Attributes:
        kind: ``"segmentor"`` (full model, keys of the core Segmentor) or ``"backbone"``.
        source_format: one of :data:`SOURCE_FORMATS` (resolved, never "auto"), plus a detail
            such as ``"torchvision-mobilenetv2"``.
        state_dict: converted tensors under TextKD keys (without the ``segmentor.`` prefix).
        key_map: source key -> TextKD key for every converted tensor.
        dropped: source key -> reason, for source keys deliberately left out (ImageNet
            classifier, layers the segmentation backbone does not have).
        filled: TextKD keys the source lacks that were filled with defaults (only BN
            ``num_batches_tracked`` counters of old checkpoints).
        settings: config values the converted weights need (flat ``SECTION.KEY`` names).
    """

    kind: str
    source_format: str
    state_dict: dict[str, torch.Tensor]
    key_map: dict[str, str]
    dropped: dict[str, str] = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def config_yaml(self) -> str:
        """The settings as a YAML fragment for a detectron2 config file."""
        tree: dict[str, Any] = {}
        for key, value in self.settings.items():
            node = tree
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        lines: list[str] = []

        def emit(node: Mapping[str, Any], indent: int) -> None:
            for k, v in node.items():
                if isinstance(v, Mapping):
                    lines.append(" " * indent + f"{k}:")
                    emit(v, indent + 2)
                else:
                    lines.append(" " * indent + f"{k}: {_yaml_value(v)}")

        emit(tree, 0)
        return "\n".join(lines)

    def config_opts(self) -> list[str]:
        """The settings as ``KEY VALUE`` command-line overrides (also usable in
        ``MODEL.DISTILL.TEACHER.OPTS``)."""
        out: list[str] = []
        for key, value in self.settings.items():
            out += [key, _opts_value(value)]
        return out

    def to_checkpoint(self, source_path: str = "") -> dict[str, Any]:
        """What :func:`save_converted` writes: ``{"model": {"segmentor.<k>": t}}`` for a
        segmentor, ``{"state_dict": {...}}`` for a backbone, plus ``textkd_convert`` metadata
        (plain Python types only, loadable with ``weights_only=True``)."""
        meta = {
            "source": source_path,
            "source_format": self.source_format,
            "kind": self.kind,
            "dropped": dict(self.dropped),
            "config": self.config_opts(),
        }
        if self.kind == "segmentor":
            model = {f"segmentor.{k}": v for k, v in self.state_dict.items()}
            return {"model": model, "textkd_convert": meta}
        return {"state_dict": dict(self.state_dict), "textkd_convert": meta}


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return repr(v)


def _opts_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_opts_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


# --------------------------------------------------------------------------- reading


def load_source_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint of another codebase: a state dict, or one nested under ``state_dict`` /
    ``model`` / ``state_dict_ema`` / ... (:func:`backbones.unwrap_state_dict`); ``module.``
    prefixes are removed and non-tensor entries ignored. Loaded with ``weights_only=True``
    (tensors and plain containers only). Raises FileNotFoundError / ValueError naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint to convert not found: {path}")
    obj = load_checkpoint_file(path, "checkpoint to convert", weights_only=True)
    return unwrap_state_dict(obj, path)


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """Guess the source format of a state dict: ``"cirkd"`` (``pretrained.*`` + ``head.*``),
    ``"cirkd-backbone"`` (CIRKD ResNetV1b deep stem ``conv1/conv2/conv3`` + ``bn3``, or CIRKD's
    MobileNetV2 ``features.N`` layout, :func:`backbones.mobilenetv2_layout`),
    ``"torchvision"`` (MobileNetV2 ``features.*``; torchvision ResNets use timm's names and are
    reported as ``"timm"``), ``"stdc"`` (STDC-Seg ``features.*.conv_list``) or ``"timm"``.
    Raises ValueError when nothing fits."""
    keys = set(state)
    if any(k.startswith("pretrained.") for k in keys) and any(k.startswith("head.") for k in keys):
        return "cirkd"
    if is_cirkd_backbone_state(state):
        return "cirkd-backbone"
    mbv2 = mobilenetv2_layout(state)
    if mbv2:
        return "cirkd-backbone" if mbv2 == "cirkd" else "torchvision"
    if "features.0.conv.weight" in keys and "features.2.conv_list.0.conv.weight" in keys:
        return "stdc"
    if "conv_stem.weight" in keys or "conv1.weight" in keys or "conv1.0.weight" in keys:
        return "timm"
    raise ValueError(
        "cannot recognise the checkpoint format (expected CIRKD pretrained./head. keys, a CIRKD, "
        f"torchvision or timm ImageNet backbone); first keys: {sorted(keys)[:8]}"
    )


# --------------------------------------------------------------------------- key maps


def _split_first(key: str, table: Mapping[str, str], max_parts: int = 2) -> tuple[str, str] | None:
    parts = key.split(".")
    for n in range(min(max_parts, len(parts) - 1), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return table[head], ".".join(parts[n:])
    return None


def _cirkd_backbone_key(key: str, deep_stem: bool) -> str:
    """CIRKD ResNetV1b key (relative to the backbone) -> TextKD backbone key."""
    return cirkd_backbone_key(key) if deep_stem else key


def cirkd_to_textkd_key(key: str, deep_stem: bool = True) -> str:
    """Map a CIRKD segmentation-model key to the core Segmentor key: ``pretrained.`` ->
    ``backbone.`` (deep stem ``conv1,bn1,conv2,bn2,conv3,bn3`` -> ``conv1.0, conv1.1, conv1.3,
    conv1.4, conv1.6, bn1``), ``head.`` unchanged, ``auxlayer.`` -> ``aux_head.``. Raises
    KeyError for a key outside these modules."""
    top, _, rest = key.partition(".")
    if top not in _CIRKD_TOP or not rest:
        raise KeyError(f"CIRKD key '{key}' is not under pretrained./head./auxlayer.")
    if top == "pretrained":
        rest = _cirkd_backbone_key(rest, deep_stem)
    return f"{_CIRKD_TOP[top]}.{rest}"


def textkd_to_cirkd_key(key: str, deep_stem: bool = True) -> str:
    """Inverse of :func:`cirkd_to_textkd_key` (core Segmentor key -> CIRKD key)."""
    top, _, rest = key.partition(".")
    if top not in _TEXTKD_TOP or not rest:
        raise KeyError(f"TextKD key '{key}' is not under backbone./head./aux_head.")
    if top == "backbone" and deep_stem:
        hit = _split_first(rest, _TEXTKD_STEM, max_parts=2)
        if hit is not None:
            rest = f"{hit[0]}.{hit[1]}"
    return f"{_TEXTKD_TOP[top]}.{rest}"


def to_cirkd_state_dict(
    state: Mapping[str, torch.Tensor], deep_stem: bool = True
) -> dict[str, torch.Tensor]:
    """A core Segmentor state dict (optionally under ``segmentor.``) under CIRKD key names."""
    out = {}
    for k, v in state.items():
        if k.startswith("segmentor."):
            k = k[len("segmentor.") :]
        out[textkd_to_cirkd_key(k, deep_stem)] = v
    return out


# --------------------------------------------------------------------------- inference


def _resnet_depth(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    counts = []
    for i in range(1, 5):
        blocks = {
            int(m.group(1))
            for k in state
            if (m := re.match(rf"{re.escape(prefix)}layer{i}\.(\d+)\.", k)) is not None
        }
        counts.append(len(blocks))
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    depth = _RESNET_DEPTHS.get((tuple(counts), bottleneck))
    if depth is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ValueError(
            f"unsupported ResNet: {kind} blocks per stage {counts} (TextKD has ResNet-18/50/101)"
        )
    return depth


def infer_backbone_arch(state: Mapping[str, torch.Tensor], source_format: str) -> str:
    """The TextKD backbone arch of an ImageNet backbone state dict: ``resnet{18,50,101}``
    (7×7 stem), ``...d`` (timm deep stem of width 32 with average-pool downsampling), ``...v1s``
    (deep stem of width 64: timm ``resnet*s`` and CIRKD backbones), ``mobilenetv2`` or
    ``stdc1``/``stdc2`` (from the number of STDC modules)."""
    if mobilenetv2_layout(state) or (
        source_format == "torchvision" and "features.0.0.weight" in state
    ):
        return "mobilenetv2"
    if "features.0.conv.weight" in state:
        n = len({int(k.split(".")[1]) for k in state if re.match(r"features\.\d+\.", k)})
        for arch, layers in STDC_LAYERS.items():
            if n == 2 + sum(layers):
                return arch
        raise ValueError(f"unsupported STDC backbone with {n} feature modules")
    if "conv_stem.weight" in state:
        return "mobilenetv2"
    if source_format == "cirkd-backbone":
        return f"resnet{_resnet_depth(state, '')}v1s"
    depth = _resnet_depth(state, "")
    if "conv1.0.weight" in state:
        width = int(state["conv1.0.weight"].shape[0])
        if width == 32:
            return f"resnet{depth}d"
        if width == 64:
            return f"resnet{depth}v1s"
        raise ValueError(f"unsupported deep-stem width {width} (conv1.0.weight)")
    return f"resnet{depth}"


def infer_cirkd_model(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read a CIRKD segmentation state dict's architecture from its keys and shapes.

    Returns ``build_segmentor`` keywords: ``head`` ("deeplabv3"/"pspnet"), ``backbone``
    (``resnet{18,50,101}v1s``, or ``resnet{18,50,101}`` for CIRKD's ``*_vanilla`` backbones),
    ``num_classes``, ``channels`` (head width), ``aux``, ``aux_channels``, ``output_stride`` 8,
    ``aspp_dilations`` (12, 24, 36), ``psp_bins`` (1, 2, 3, 6), ``align_corners`` True."""
    resnet_modules = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"} | {
        f"layer{i}" for i in range(1, 5)
    }
    other = [
        k for k in state if k.startswith("pretrained.") and k.split(".")[1] not in resnet_modules
    ]
    if other:
        raise ValueError(
            "only CIRKD models on ResNetV1b backbones (deeplabv3/psp with resnet18/50/101) are "
            f"supported; backbone keys of another kind: {short_list(other)}"
        )
    deep_stem = "pretrained.conv2.weight" in state
    depth = _resnet_depth(state, "pretrained.")
    arch = f"resnet{depth}v1s" if deep_stem else f"resnet{depth}"
    if any(k.startswith("head.aspp.") for k in state):
        head = "deeplabv3"
        cls_key, feat_key = "head.block.4.weight", "head.block.0.weight"
    elif any(k.startswith("head.psp.") for k in state):
        head = "pspnet"
        cls_key, feat_key = "head.classifier.weight", "head.block.0.weight"
    else:
        head_keys = sorted(k for k in state if k.startswith("head."))[:6]
        raise ValueError(
            f"unsupported CIRKD head (neither head.aspp.* nor head.psp.*): {head_keys}"
        )
    for k in (cls_key, feat_key):
        if k not in state:
            raise ValueError(f"CIRKD {head} checkpoint lacks '{k}'")
    aux = "auxlayer.block.0.weight" in state
    return {
        "head": head,
        "backbone": arch,
        "num_classes": int(state[cls_key].shape[0]),
        "channels": int(state[feat_key].shape[0]),
        "aux": aux,
        "aux_channels": int(state["auxlayer.block.0.weight"].shape[0]) if aux else 256,
        "output_stride": 8,
        "aspp_dilations": (12, 24, 36),
        "psp_bins": (1, 2, 3, 6),
        "align_corners": True,
        "deep_stem": deep_stem,
    }


# --------------------------------------------------------------------------- checking


def check_state_dict(
    converted: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    what: str,
    source_of: Mapping[str, str] | None = None,
) -> list[str]:
    """Compare converted tensors with the state dict ``expected`` of the target model (keys and
    shapes). Missing BN ``num_batches_tracked`` counters are allowed and returned (to be
    filled); any other missing key, any key the model lacks and any shape mismatch raises
    ValueError naming the keys (with their source names when ``source_of`` maps them)."""
    source_of = source_of or {}

    def name(k: str) -> str:
        return f"{k} (from {source_of[k]})" if k in source_of else k

    missing, unexpected, mismatched = compare_state_dicts(converted, expected)
    fill = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in fill]
    unexpected = [name(k) for k in unexpected]
    mismatched = [f"{name(k)}: {cs} vs {ms} in the model" for k, cs, ms in mismatched]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"model keys with no source tensor: {short_list(missing)}")
        if unexpected:
            parts.append(f"converted keys the model does not have: {short_list(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {short_list(mismatched)}")
        raise ValueError(f"the checkpoint does not match {what}: " + "; ".join(parts))
    return fill


def _meta_state(builder) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = builder()
    return model.state_dict()


def _fill(state: dict[str, torch.Tensor], keys: list[str]) -> None:
    for k in keys:
        state[k] = torch.tensor(0, dtype=torch.long)


# --------------------------------------------------------------------------- conversions


def convert_cirkd_segmentor(state: Mapping[str, torch.Tensor]) -> ConvertedCheckpoint:
    """Convert a CIRKD DeepLabV3/PSPNet (ResNetV1b) state dict into a core Segmentor state dict,
    checked key for key and shape for shape against ``build_segmentor`` with the inferred
    settings (:func:`infer_cirkd_model`)."""
    from .segmentor import build_segmentor

    spec = infer_cirkd_model(state)
    deep_stem = spec.pop("deep_stem")
    unknown = [k for k in state if k.partition(".")[0] not in _CIRKD_TOP]
    if unknown:
        raise ValueError(
            "CIRKD checkpoint has keys outside pretrained./head./auxlayer.: " + short_list(unknown)
        )
    converted: dict[str, torch.Tensor] = {}
    key_map: dict[str, str] = {}
    for k, v in state.items():
        new = cirkd_to_textkd_key(k, deep_stem)
        converted[new] = v
        key_map[k] = new
    expected = _meta_state(lambda: build_segmentor(**spec))
    what = (
        f"TextKD {spec['head']} on {spec['backbone']} ({spec['num_classes']} classes, head "
        f"width {spec['channels']}, aux={spec['aux']})"
    )
    fill = check_state_dict(converted, expected, what, {v: k for k, v in key_map.items()})
    _fill(converted, fill)
    head_name = {"deeplabv3": "TextKDDeepLabV3Head", "pspnet": "TextKDPSPHead"}[spec["head"]]
    settings: dict[str, Any] = {
        "MODEL.PIXEL_MEAN": list(CIRKD_PIXEL_MEAN),
        "MODEL.PIXEL_STD": list(CIRKD_PIXEL_STD),
        "MODEL.SEG_BACKBONE.ARCH": spec["backbone"],
        "MODEL.SEG_BACKBONE.OUTPUT_STRIDE": 8,
        "MODEL.SEM_SEG_HEAD.NAME": head_name,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": spec["num_classes"],
        "MODEL.SEM_SEG_HEAD.CHANNELS": spec["channels"],
        "MODEL.SEM_SEG_HEAD.IN_FEATURE": "res5",
        "MODEL.SEM_SEG_HEAD.ALIGN_CORNERS": True,
    }
    if spec["head"] == "deeplabv3":
        settings["MODEL.SEM_SEG_HEAD.ASPP_DILATIONS"] = list(spec["aspp_dilations"])
    else:
        settings["MODEL.SEM_SEG_HEAD.PSP_BINS"] = list(spec["psp_bins"])
    settings["MODEL.SEM_SEG_HEAD.AUX"] = spec["aux"]
    if spec["aux"]:
        settings["MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE"] = "res4"
        settings["MODEL.SEM_SEG_HEAD.AUX_CHANNELS"] = spec["aux_channels"]
    settings["INPUT.FORMAT"] = "BGR"
    logger.info("converted CIRKD %s (%d tensors)", what, len(converted))
    return ConvertedCheckpoint(
        kind="segmentor",
        source_format="cirkd",
        state_dict=converted,
        key_map=key_map,
        filled=fill,
        settings=settings,
    )


def convert_backbone(
    state: Mapping[str, torch.Tensor], source_format: str = "auto", arch: str | None = None
) -> ConvertedCheckpoint:
    """Convert an ImageNet backbone (torchvision, timm, CIRKD ResNetV1b or MobileNetV2) into a TextKD
    backbone state dict for ``MODEL.SEG_BACKBONE.PRETRAINED``.

    ``arch`` None infers it (:func:`infer_backbone_arch`). Keys of the ImageNet classifier and
    of layers the segmentation backbone does not have (the backbone's
    ``pretrained_ignore_prefixes``, e.g. ``fc.``, MobileNetV2's ``conv_head``/``bn2``) are
    dropped and reported in ``dropped``; every other key must map onto the backbone."""
    fmt = detect_format(state) if source_format == "auto" else source_format
    if fmt not in SOURCE_FORMATS or fmt in ("auto", "cirkd"):
        raise ValueError(
            "convert_backbone: source format must be one of cirkd-backbone/torchvision/timm/stdc, "
            f"got {fmt!r}"
        )
    arch = arch or infer_backbone_arch(state, fmt)
    detail = fmt
    converted: dict[str, torch.Tensor] = {}
    key_map: dict[str, str] = {}
    mbv2 = mobilenetv2_layout(state)
    if (fmt == "torchvision" and "features.0.0.weight" in state) or (
        fmt == "cirkd-backbone" and mbv2 == "cirkd"
    ):
        mbv2 = "cirkd" if fmt == "cirkd-backbone" else "torchvision"
        detail = f"{mbv2}-mobilenetv2"
        dropped = {}
        for k, v in state.items():
            new = mobilenetv2_to_timm_key(k, mbv2)
            if new is None:
                dropped[k] = "ImageNet classifier"
                continue
            converted[new] = v
            key_map[k] = new
    else:
        dropped = {}
        deep = fmt == "cirkd-backbone"
        for k, v in state.items():
            new = _cirkd_backbone_key(k, deep_stem=True) if deep else k
            converted[new] = v
            key_map[k] = new
    with torch.device("meta"):
        meta_backbone = build_backbone(arch, output_stride=32)
    backbone_state = meta_backbone.state_dict()
    ignore = tuple(meta_backbone.pretrained_ignore_prefixes)
    for new in [k for k in converted if k not in backbone_state]:
        if any(new.startswith(p) for p in ignore):
            src = next(s for s, t in key_map.items() if t == new)
            dropped[src] = "ImageNet classifier / not part of the segmentation backbone"
            del converted[new]
            del key_map[src]
    what = f"TextKD backbone '{arch}'"
    fill = check_state_dict(converted, backbone_state, what, {v: k for k, v in key_map.items()})
    _fill(converted, fill)
    if fmt == "cirkd-backbone":
        mean, std, order = CIRKD_PIXEL_MEAN, CIRKD_PIXEL_STD, "BGR"
    else:
        mean, std, order = IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, "RGB"
    settings = {
        "MODEL.PIXEL_MEAN": list(mean),
        "MODEL.PIXEL_STD": list(std),
        "MODEL.SEG_BACKBONE.ARCH": arch,
        "MODEL.SEG_BACKBONE.PRETRAINED": "",
        "INPUT.FORMAT": order,
    }
    logger.info(
        "converted %s backbone -> %s (%d tensors, dropped %s)",
        detail,
        arch,
        len(converted),
        sorted(dropped) or "none",
    )
    return ConvertedCheckpoint(
        kind="backbone",
        source_format=detail,
        state_dict=converted,
        key_map=key_map,
        dropped=dropped,
        filled=fill,
        settings=settings,
    )


def convert_checkpoint(
    state: Mapping[str, torch.Tensor], source_format: str = "auto", arch: str | None = None
) -> ConvertedCheckpoint:
    """Dispatch: a CIRKD segmentation model -> :func:`convert_cirkd_segmentor`, any ImageNet
    backbone -> :func:`convert_backbone` (``arch`` only applies to backbones)."""
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source_format!r}; choices: {SOURCE_FORMATS}")
    fmt = detect_format(state) if source_format == "auto" else source_format
    if fmt == "cirkd":
        if arch is not None:
            inferred = infer_cirkd_model(state)["backbone"]
            if inferred != arch:
                raise ValueError(
                    f"--arch {arch} does not match the CIRKD checkpoint's backbone ({inferred})"
                )
        return convert_cirkd_segmentor(state)
    return convert_backbone(state, fmt, arch)


def save_converted(converted: ConvertedCheckpoint, path: str, source_path: str = "") -> str:
    """Write ``converted.to_checkpoint()`` to ``path`` (atomically, via a temporary file) and
    record the path in the settings of a backbone (``MODEL.SEG_BACKBONE.PRETRAINED``).
    Returns ``path``."""
    if converted.kind == "backbone":
        converted.settings["MODEL.SEG_BACKBONE.PRETRAINED"] = path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(converted.to_checkpoint(source_path), tmp)
    os.replace(tmp, path)
    logger.info("saved converted %s checkpoint to %s", converted.kind, path)
    return path
