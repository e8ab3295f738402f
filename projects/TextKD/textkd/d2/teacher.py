"""Any detectron2 semantic-segmentation model as a distillation teacher (detectron2 layer).

``MODEL.DISTILL.TEACHER.CONFIG_FILE`` may name a detectron2 config (yacs ``.yaml`` or LazyConfig
``.py``) whose model returns detectron2's ``sem_seg`` output: a ``SemanticSegmentor`` (FPN,
``projects/DeepLab``, PointRend), a Mask2Former, ... The model is built with detectron2 from its
own config, loaded with ``DetectionCheckpointer`` from ``MODEL.DISTILL.TEACHER.WEIGHTS`` (model-zoo
``.pkl`` included), frozen, and run in eval mode on its own normalisation and input format (its
own ``forward``: detectron2's inference path, unchanged).

What the distillation terms see is the same :class:`~textkd.models.outputs.SegOutput` a TextKD
teacher returns, in the student's padded input frame:

* ``logits``: the output of ``MODEL.DISTILL.TEACHER.LOGITS_MODULE`` (class scores before the final
  upsampling, e.g. ``sem_seg_head.predictor``), recorded by a forward hook; a Mask2Former-style
  output (a dict with ``pred_logits`` N×Q×(K+1) and ``pred_masks`` N×Q×h×w) becomes per-pixel
  scores the way Mask2Former's semantic inference does. With no module named, the model's own
  ``sem_seg`` output resized to stride ``LOGITS_STRIDE``.
* ``feature``: the output (``name``) or first input (``name:input``) of
  ``MODEL.DISTILL.TEACHER.FEATURE_MODULE``, recorded by a forward hook (mmrazor's recorders are
  the model); absent when no module is named, so feature terms then stop with a clear error.

Everything is checked by one forward on a small image when the teacher is built: module names,
that the hooked outputs are maps, the class count against the student, and the class names of the
teacher's training set against the student's (``cityscapes_fine_sem_seg_train`` and TextKD's
``cityscapes_train_sem_seg`` match).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..models.outputs import SegOutput

logger = logging.getLogger(__name__)

__all__ = [
    "D2Teacher",
    "build_d2_teacher",
    "check_teacher_classes",
    "is_d2_teacher",
    "load_d2_teacher_config",
    "mask_classification_scores",
    "padded_frame",
    "teacher_kind",
]

#: meta-architectures of TextKD itself: such a teacher config is built by TextKD's own path
TEXTKD_META_ARCHS = ("TextKDSemanticSegmentor", "DistillSemanticSegmentor")
#: side of the square image of the build-time check forward
PROBE_SIZE = 128
_INPUT_SUFFIX = ":input"


# --------------------------------------------------------------------------- config


def teacher_kind(cfg) -> str:
    """``"textkd"`` or ``"detectron2"``: ``MODEL.DISTILL.TEACHER.TYPE``, or with ``auto`` (the
    default) ``detectron2`` for a LazyConfig ``.py`` or a yaml whose ``META_ARCHITECTURE`` (through
    its ``_BASE_`` chain) is not one of TextKD's."""
    t = cfg.MODEL.DISTILL.TEACHER
    kind = str(t.TYPE).lower()
    if kind in ("textkd", "detectron2"):
        return kind
    if kind != "auto":
        raise ValueError(
            f"MODEL.DISTILL.TEACHER.TYPE must be 'auto', 'textkd' or 'detectron2', got {t.TYPE!r}"
        )
    path = t.CONFIG_FILE
    if path.endswith(".py"):
        return "detectron2"
    if not path or not os.path.isfile(path):
        return "textkd"  # the TextKD loader reports the missing file
    from detectron2.config import CfgNode

    raw = CfgNode.load_yaml_with_base(path, allow_unsafe=True)
    arch = (raw.get("MODEL") or {}).get("META_ARCHITECTURE")
    return "textkd" if arch in TEXTKD_META_ARCHS else "detectron2"


def is_d2_teacher(cfg) -> bool:
    return teacher_kind(cfg) == "detectron2"


def _import_callable(dotted: str, key: str):
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{key}: cannot import {dotted!r} ({e}); give the dotted path of a function that adds "
            "the teacher's config keys, e.g. detectron2.projects.deeplab.add_deeplab_config"
        ) from e


def load_d2_teacher_config(cfg):
    """The teacher's own detectron2 config: a yacs ``CfgNode`` (detectron2's ``get_cfg()``, the
    functions of ``MODEL.DISTILL.TEACHER.CONFIG_HOOKS`` applied, the file, ``OPTS``) or a
    LazyConfig (``OPTS`` as ``key=value`` overrides). ``MODEL.DEVICE`` follows the student."""
    t = cfg.MODEL.DISTILL.TEACHER
    path = t.CONFIG_FILE
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"teacher config MODEL.DISTILL.TEACHER.CONFIG_FILE={path!r} not found"
        )
    # importing a hook's module also registers its meta-architectures and heads
    hooks = [_import_callable(d, "MODEL.DISTILL.TEACHER.CONFIG_HOOKS") for d in t.CONFIG_HOOKS]
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        tcfg = LazyConfig.load(path)
        tcfg = LazyConfig.apply_overrides(tcfg, list(t.OPTS))
        return tcfg
    from detectron2.config import get_cfg

    tcfg = get_cfg()
    for hook in hooks:
        hook(tcfg)
    try:
        tcfg.merge_from_file(path)
        tcfg.merge_from_list(list(t.OPTS))
    except (KeyError, AssertionError) as e:  # yacs: unknown key in the file / in OPTS
        raise ValueError(
            f"teacher config {path!r} (+ MODEL.DISTILL.TEACHER.OPTS): {e}. A detectron2 "
            "project config needs its project's keys: list the function that adds them in "
            "MODEL.DISTILL.TEACHER.CONFIG_HOOKS (e.g. "
            "detectron2.projects.deeplab.add_deeplab_config)"
        ) from e
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    return tcfg


def _is_lazy(tcfg) -> bool:
    from detectron2.config import CfgNode

    return not isinstance(tcfg, CfgNode)


def _lazy_get(tcfg, dotted: str):
    node = tcfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return None
    return node


def _teacher_datasets(tcfg) -> list[str]:
    if _is_lazy(tcfg):
        names = _lazy_get(tcfg, "dataloader.train.dataset.names")
        if names is None:
            return []
        return [names] if isinstance(names, str) else list(names)
    return list(tcfg.DATASETS.TRAIN)


def _input_format(cfg, tcfg, model: nn.Module) -> str:
    fmt = cfg.MODEL.DISTILL.TEACHER.INPUT_FORMAT
    if not fmt:
        if not _is_lazy(tcfg):
            fmt = tcfg.INPUT.FORMAT
        else:
            fmt = _lazy_get(tcfg, "dataloader.train.mapper.image_format") or getattr(
                model, "input_format", None
            )
    if fmt not in ("RGB", "BGR"):
        raise ValueError(
            f"teacher input format {fmt!r} (teacher config "
            f"{cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE!r}) is not RGB or BGR: set "
            "MODEL.DISTILL.TEACHER.INPUT_FORMAT to the format the teacher was trained on"
        )
    return fmt


# --------------------------------------------------------------------------- scores


def mask_classification_scores(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel class scores of a mask-classification output, as Mask2Former's
    ``semantic_inference``: ``Σ_q softmax(class_q)[:K] · sigmoid(mask_q)``.

    ``pred_logits``: N×Q×(K+1) (the last class is "no object"); ``pred_masks``: N×Q×h×w.
    Returns N×K×h×w."""
    if pred_logits.dim() != 3 or pred_masks.dim() != 4:
        raise ValueError(
            "a mask-classification output needs pred_logits N×Q×(K+1) and pred_masks N×Q×h×w, "
            f"got {tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}"
        )
    cls = F.softmax(pred_logits.float(), dim=-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", cls, pred_masks.float().sigmoid())


def _as_scores(value: Any, what: str) -> torch.Tensor:
    """A hooked module's output as an N×C×h×w tensor: a tensor as it is; a Mask2Former-style
    dict (``pred_logits`` + ``pred_masks``) through :func:`mask_classification_scores`; the first
    element of a tuple/list (detectron2 heads return ``(x, losses)``)."""
    if isinstance(value, dict) and "pred_logits" in value and "pred_masks" in value:
        return mask_classification_scores(value["pred_logits"], value["pred_masks"])
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        value = value[0]
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        desc = type(value).__name__
        if isinstance(value, torch.Tensor):
            desc = f"a tensor of shape {tuple(value.shape)}"
        elif isinstance(value, dict):
            desc = f"a dict with keys {sorted(value)[:8]}"
        raise ValueError(
            f"{what} gives {desc}, not an N×C×h×w map (or a dict with pred_logits and "
            "pred_masks): name a module whose output is a feature map"
        )
    return value


def _to_frame(x: torch.Tensor, teacher_frame: tuple[int, int], frame: tuple[int, int]):
    """Map an N×C×h×w map covering the teacher's padded input ``teacher_frame`` onto the student's
    padded input ``frame`` (same top-left origin): crop or zero-pad at the map's own stride.
    Exact when the two padded sizes differ by whole cells of the map (e.g. crops that are
    multiples of the teacher's size divisibility, where they are equal)."""
    if tuple(teacher_frame) == tuple(frame):
        return x
    h, w = x.shape[-2:]
    rows = max(1, round(h * frame[0] / teacher_frame[0]))
    cols = max(1, round(w * frame[1] / teacher_frame[1]))
    x = x[..., : min(rows, h), : min(cols, w)]
    return F.pad(x, (0, cols - x.shape[-1], 0, rows - x.shape[-2]))


def _padded(size: int, divisibility: int) -> int:
    return int(math.ceil(size / divisibility) * divisibility) if divisibility > 1 else size


def padded_frame(batched_inputs: Sequence[dict[str, Any]], divisibility: int) -> tuple[int, int]:
    """(H, W) of the batch the images pad to (``ImageList.from_tensors``' rule)."""
    sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
    return (
        _padded(max(s[0] for s in sizes), divisibility),
        _padded(max(s[1] for s in sizes), divisibility),
    )


# --------------------------------------------------------------------------- module


class D2Teacher(nn.Module):
    """A frozen detectron2 model behind the teacher interface of ``DistillSemanticSegmentor``.

    ``forward(batched_inputs, frame)`` runs the model's own inference on the images (in the
    loader's format; channels reversed when the teacher's format differs) and returns a
    :class:`SegOutput` in the student's padded frame ``frame`` (H, W). The detectron2 model is
    ``self.model``; its forward hooks record only during this forward."""

    def __init__(
        self,
        model: nn.Module,
        *,
        flip_channels: bool,
        logits_module: str = "",
        feature_module: str = "",
        logits_stride: int = 8,
        config_file: str = "",
    ):
        super().__init__()
        self.model = model
        self.flip_channels = flip_channels
        self.logits_module = logits_module
        self.feature_module = feature_module
        self.logits_stride = int(logits_stride)
        self.config_file = config_file
        self._records: dict[str, Any] = {}
        self._recording = False
        modules = dict(model.named_modules())
        for key, spec in (
            ("MODEL.DISTILL.TEACHER.LOGITS_MODULE", logits_module),
            ("MODEL.DISTILL.TEACHER.FEATURE_MODULE", feature_module),
        ):
            if spec:
                self._add_recorder(key, spec, modules)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.num_classes = 0
        self.output_channels: dict[str, int] = {}

    def _add_recorder(self, key: str, spec: str, modules: dict[str, nn.Module]) -> None:
        name = spec[: -len(_INPUT_SUFFIX)] if spec.endswith(_INPUT_SUFFIX) else spec
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            raise ValueError(
                f"{key}={spec!r}: the teacher ({self.config_file or type(self.model).__name__}) "
                f"has no module named {name!r}; close names: {close}. Name a module of "
                "model.named_modules() (append ':input' to record its first input)"
            )
        want_input = spec.endswith(_INPUT_SUFFIX)

        def record(module, args, output, spec=spec):
            if self._recording:
                self._records[spec] = args[0] if want_input else output

        modules[name].register_forward_hook(record)

    def train(self, mode: bool = True):
        """The detectron2 model stays in eval mode (frozen BN statistics, inference path)."""
        super().train(False)
        return self

    def _size_divisibility(self) -> int:
        for owner in (getattr(self.model, "backbone", None), self.model):
            d = getattr(owner, "size_divisibility", None)
            if isinstance(d, int):
                return d
        return 0

    @torch.no_grad()
    def forward(self, batched_inputs: Sequence[dict[str, Any]], frame: tuple[int, int]):
        images = []
        for x in batched_inputs:
            img = x["image"]
            images.append({"image": img.flip(0) if self.flip_channels else img})
        self._records.clear()
        self._recording = True
        try:
            outputs = self.model(images)
        finally:
            self._recording = False
        records, self._records = self._records, {}
        if not isinstance(outputs, (list, tuple)) or not all(
            isinstance(o, dict) and "sem_seg" in o for o in outputs
        ):
            raise ValueError(
                f"the teacher ({self.config_file}) does not return detectron2's per-image "
                "'sem_seg' output: it is not a semantic segmentation model"
            )
        teacher_frame = padded_frame(batched_inputs, self._size_divisibility())
        if self.logits_module:
            logits = _as_scores(
                records[self.logits_module],
                f"MODEL.DISTILL.TEACHER.LOGITS_MODULE={self.logits_module!r}",
            )
            logits = _to_frame(logits, teacher_frame, frame)
        else:
            # detectron2's own per-image result (at each image's size), padded to the frame
            maps = [o["sem_seg"] for o in outputs]
            logits = torch.stack(
                [F.pad(m, (0, frame[1] - m.shape[-1], 0, frame[0] - m.shape[-2])) for m in maps]
            )
            if self.logits_stride > 1:
                size = [math.ceil(s / self.logits_stride) for s in frame]
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        feature = None
        if self.feature_module:
            feature = _as_scores(
                records[self.feature_module],
                f"MODEL.DISTILL.TEACHER.FEATURE_MODULE={self.feature_module!r}",
            )
            feature = _to_frame(feature, teacher_frame, frame)
        return SegOutput(logits=logits, feature=feature)

    @torch.no_grad()
    def probe(self, device: torch.device | str) -> None:
        """One forward on a PROBE_SIZE² image: checks the hooks and the output, and sets
        ``num_classes`` and ``output_channels``."""
        g = torch.Generator().manual_seed(0)
        image = torch.randint(0, 256, (3, PROBE_SIZE, PROBE_SIZE), generator=g).to(torch.uint8)
        out = self.forward([{"image": image.to(device)}], (PROBE_SIZE, PROBE_SIZE))
        self.num_classes = int(out.logits.shape[1])
        self.output_channels = {"logits": self.num_classes}
        if out.feature is not None:
            self.output_channels["feature"] = int(out.feature.shape[1])

    def extra_repr(self) -> str:
        return (
            f"config={self.config_file!r}, logits={self.logits_module or 'sem_seg'}, "
            f"feature={self.feature_module or None}, flip_channels={self.flip_channels}"
        )


# --------------------------------------------------------------------------- build


class _StrictCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` remembering what its load could not match."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_d2_weights(model: nn.Module, weights: str) -> None:
    """Load ``weights`` with ``DetectionCheckpointer`` (detectron2 ``.pth``, model-zoo ``.pkl``);
    missing, unexpected or mis-shaped keys are an error naming the file: a teacher is never
    partly random."""
    ckpt = _StrictCheckpointer(model)
    ckpt.load(weights)
    inc = ckpt.incompatible
    if inc is None:
        return
    problems = []
    if inc.incorrect_shapes:
        problems.append(
            "mis-shaped "
            + ", ".join(f"{k} {a} vs model {b}" for k, a, b in inc.incorrect_shapes[:5])
        )
    if inc.missing_keys:
        problems.append(f"{len(inc.missing_keys)} missing (e.g. {inc.missing_keys[:5]})")
    if inc.unexpected_keys:
        problems.append(f"{len(inc.unexpected_keys)} unexpected (e.g. {inc.unexpected_keys[:5]})")
    if problems:
        raise ValueError(
            f"teacher checkpoint MODEL.DISTILL.TEACHER.WEIGHTS={weights!r} does not fit the "
            f"teacher config: {'; '.join(problems)}. Point WEIGHTS at the checkpoint trained "
            "with MODEL.DISTILL.TEACHER.CONFIG_FILE"
        )


def build_d2_model(tcfg) -> nn.Module:
    if _is_lazy(tcfg):
        from detectron2.config import instantiate

        if _lazy_get(tcfg, "model") is None:
            raise ValueError("the teacher LazyConfig has no 'model' entry")
        return instantiate(tcfg.model)
    from detectron2.modeling import build_model

    return build_model(tcfg)


def _normalise_name(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def check_teacher_classes(cfg, teacher_datasets: Sequence[str], num_classes: int) -> None:
    """The teacher predicts as many classes as the student, in the same order: ValueError
    otherwise. The order is compared through the ``stuff_classes`` of the two training sets
    (case, spaces and underscores aside) when both are registered with class names."""
    from detectron2.data import MetadataCatalog

    k = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    where = f"teacher config {cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE!r}"
    if num_classes != k:
        raise ValueError(
            f"the detectron2 teacher predicts {num_classes} classes but the student {k} "
            f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES): {where} was trained for another label set"
        )
    if not len(cfg.DATASETS.TRAIN) or not teacher_datasets:
        logger.warning("teacher class order not checked: no training set named on one side")
        return
    s_name, t_name = cfg.DATASETS.TRAIN[0], teacher_datasets[0]
    s_cls = getattr(MetadataCatalog.get(s_name), "stuff_classes", None)
    t_cls = getattr(MetadataCatalog.get(t_name), "stuff_classes", None)
    if not s_cls or not t_cls:
        logger.warning(
            "teacher class order not checked: %r or %r has no stuff_classes registered",
            s_name,
            t_name,
        )
        return
    s_norm = [_normalise_name(c) for c in s_cls]
    t_norm = [_normalise_name(c) for c in t_cls]
    if len(t_norm) != num_classes:
        raise ValueError(
            f"the teacher's training set {t_name!r} has {len(t_norm)} classes but the teacher "
            f"predicts {num_classes} ({where})"
        )
    if s_norm != t_norm:
        i = next(i for i, (a, b) in enumerate(zip(s_norm, t_norm)) if a != b)
        raise ValueError(
            f"class order differs between the student's {s_name!r} and the teacher's training set "
            f"{t_name!r} ({where}): class {i} is {s_cls[i]!r} vs {t_cls[i]!r}. The teacher's "
            "scores would be distilled into the wrong classes"
        )


def build_d2_teacher(cfg) -> tuple[Any, D2Teacher]:
    """Build, load, freeze and check the detectron2 teacher of ``cfg``; returns its config and
    the :class:`D2Teacher`. Every error (file, key, module name, class count or order) is raised
    here, before the first iteration."""
    t = cfg.MODEL.DISTILL.TEACHER
    tcfg = load_d2_teacher_config(cfg)
    weights = t.WEIGHTS
    if not weights:
        raise ValueError(
            "MODEL.DISTILL.TEACHER.WEIGHTS is empty: distillation needs the detectron2 teacher's "
            f"trained checkpoint (of {t.CONFIG_FILE})"
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"teacher checkpoint MODEL.DISTILL.TEACHER.WEIGHTS={weights!r} does not exist; "
            "distillation never starts from a random teacher. Point the key at the checkpoint "
            f"trained with {t.CONFIG_FILE} (a local file: nothing is downloaded)"
        )
    model = build_d2_model(tcfg).to(cfg.MODEL.DEVICE)
    load_d2_weights(model, weights)
    fmt = _input_format(cfg, tcfg, model)
    teacher = D2Teacher(
        model,
        flip_channels=fmt != cfg.INPUT.FORMAT,
        logits_module=t.LOGITS_MODULE,
        feature_module=t.FEATURE_MODULE,
        logits_stride=t.LOGITS_STRIDE,
        config_file=t.CONFIG_FILE,
    )
    teacher.probe(cfg.MODEL.DEVICE)
    check_teacher_classes(cfg, _teacher_datasets(tcfg), teacher.num_classes)
    logger.info(
        "detectron2 teacher %s (%s) from %s: %d classes, outputs %s",
        type(model).__name__,
        t.CONFIG_FILE,
        weights,
        teacher.num_classes,
        teacher.output_channels,
    )
    return tcfg, teacher
