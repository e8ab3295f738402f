"""Checks of a run's configuration before its first iteration (framework-free).

Every entry point (``tools/train_net.py`` for training and ``--eval-only``,
``tools/export_student.py``, ``tools/benchmark.py``) calls :func:`validate_config` with the merged
config node before it builds anything; a configuration that cannot be meant stops with one
:class:`ConfigError` listing every problem, each naming the key (or file) and what to do:

* evaluation without weights (empty ``MODEL.WEIGHTS``, or ``--resume`` on an ``OUTPUT_DIR`` without
  ``last_checkpoint``) would score a random model: refused unless
  ``TEXTKD.ALLOW_RANDOM_WEIGHTS True``; a ``MODEL.WEIGHTS`` that is not a readable checkpoint file;
* negative or non-finite loss weights, non-positive or non-finite temperatures (any ``*WEIGHT`` /
  ``*TEMPERATURE`` key of the TextKD nodes and of every distillation term); dropout
  probabilities (``MODEL.SEM_SEG_HEAD.DROPOUT`` / ``ASPP_DROPOUT``) outside [0, 1);
* keys that the config accepts but TextKD does not use (detectron2's generic ones such as
  ``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT``, and TextKD keys that the chosen model ignores, e.g.
  ``MODEL.DISTILL.*`` in a single-model config) when set to a value other than the default;
* training with plain BatchNorm on one image per GPU;
* training from CIRKD's ImageNet backbone weights (``MODEL.SEG_BACKBONE.PRETRAINED`` a
  ``resnet*-imagenet.pth`` of the CIRKD codebase) with another input normalisation than the one
  they were trained with (BGR images minus the Caffe mean, no std).
* an ``INPUT.SCALE_SET`` (discrete training scales) holding a value that is not a finite number
  > 0.
* a ``TEXTKD.BEST_CHECKPOINT.METRIC`` no evaluation of the config can report (malformed, an
  unknown task or score) or a ``MODE`` other than max/min.
* sizes of CIRKD's memory (``MODEL.DISTILL.CIRKD_MEMORY.*_SIZE``, ``PIXELS_PER_CLASS``) that are
  not positive integers, a negative ``PROJ_DIM`` (its weights and temperatures are checked with
  the others).
* a discriminator (``MODEL.DISTILL.ADVERSARIAL``) with a non-positive learning rate, betas
  outside [0, 1), an unknown loss or input.

The config is read as nested mappings with attribute access (a detectron2 / yacs ``CfgNode``);
``defaults`` is a config node of the same kind holding the default values (the edge passes
detectron2's defaults + ``add_textkd_config``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from .distill.adversarial import adversarial_problems
from .models.backbones import is_cirkd_backbone_state, norm_name, unwrap_state_dict
from .models.convert import CIRKD_PIXEL_MEAN, CIRKD_PIXEL_STD
from .models.weights import check_checkpoint_file, load_checkpoint_file

__all__ = [
    "ConfigError",
    "MODES",
    "validate_config",
    "unused_key_problems",
    "number_problems",
    "scale_set_problems",
    "best_checkpoint_problems",
    "evaluation_tasks",
]

MODES = ("train", "eval", "export", "benchmark")

DISTILL_ARCH = "DistillSemanticSegmentor"
# detectron2's default backbone name means the TextKD timm backbone (d2/build.py)
_TEXTKD_BACKBONES = ("build_resnet_backbone", "TextKDTimmBackbone")

# nodes whose ``*WEIGHT`` / ``*TEMPERATURE`` values are loss weights and temperatures
_NUMBER_NODES = (
    "MODEL.SEM_SEG_HEAD",
    "MODEL.LAD",
    "MODEL.DISTILL",
    "MODEL.TEXT_BANK",
    "MODEL.SEG_BACKBONE",
    "TEXTKD",
)
# dropout probabilities of the heads: must lie in [0, 1) (1 would zero every activation)
_DROPOUT_KEYS = ("MODEL.SEM_SEG_HEAD.DROPOUT", "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT")
# distillation-term parameters that weigh parts of a loss (DIST's β and γ)
_TERM_WEIGHTS = ("WEIGHT", "BETA", "GAMMA")
_TERM_TEMPERATURES = ("TEMPERATURE", "TAU")


class ConfigError(ValueError):
    """A configuration that cannot be meant; the message lists every problem found."""


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


# --------------------------------------------------------------------------- numbers


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_number(key: str, value: Any, kind: str) -> str | None:
    if not _is_number(value):
        return f"{key} is {value!r}: a {kind} must be a number"
    if not math.isfinite(value):
        return f"{key} is {value!r}: a {kind} must be finite"
    if kind == "loss weight" and value < 0:
        return (
            f"{key} is {value!r}: a loss weight must be >= 0 (a negative weight maximises the "
            "loss; 0 turns the term off)"
        )
    if kind == "temperature" and not value > 0:
        return f"{key} is {value!r}: a temperature must be > 0"
    if kind == "dropout probability" and not 0 <= value < 1:
        return f"{key} is {value!r}: a dropout probability must lie in [0, 1) (0 turns it off)"
    return None


def number_problems(cfg: Any) -> list[str]:
    """Negative / non-finite loss weights, non-positive / non-finite temperatures and dropout
    probabilities outside [0, 1), each naming its key: every ``*WEIGHT`` and ``*TEMPERATURE``
    key under the TextKD nodes, the ``WEIGHT``/``BETA``/``GAMMA``/``TEMPERATURE``/``TAU`` of
    every distillation term and ``MODEL.SEM_SEG_HEAD.DROPOUT`` / ``ASPP_DROPOUT``."""
    problems: list[str] = []
    terms_key = "MODEL.DISTILL.TERMS"

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}"
            if key == terms_key:
                continue
            if isinstance(v, Mapping):
                walk(v, key)
            elif str(k).endswith("WEIGHT"):
                problems.append(_check_number(key, v, "loss weight"))
            elif str(k).endswith("TEMPERATURE"):
                problems.append(_check_number(key, v, "temperature"))

    for name in _NUMBER_NODES:
        node = _get(cfg, name)
        if isinstance(node, Mapping):
            walk(node, name)
    terms = _get(cfg, terms_key, {}) or {}
    for term, node in terms.items():
        if not isinstance(node, Mapping):
            continue  # parse_terms reports malformed terms with their own message
        for k, v in node.items():
            key = f"{terms_key}.{term}.{k}"
            if k in _TERM_WEIGHTS:
                problems.append(_check_number(key, v, "loss weight"))
            elif k in _TERM_TEMPERATURES:
                problems.append(_check_number(key, v, "temperature"))
    for key in _DROPOUT_KEYS:
        value = _get(cfg, key)
        if value is not None:
            problems.append(_check_number(key, value, "dropout probability"))
    return [p for p in problems if p]


_CIRKD_MEMORY = "MODEL.DISTILL.CIRKD_MEMORY"
_CIRKD_MEMORY_SIZES = (
    "PIXEL_MEMORY_SIZE",
    "REGION_MEMORY_SIZE",
    "PIXELS_PER_CLASS",
    "PIXEL_CONTRAST_SIZE",
    "REGION_CONTRAST_SIZE",
)


def cirkd_memory_problems(cfg: Any) -> list[str]:
    """Sizes of CIRKD's memory that are not positive integers and a negative PROJ_DIM, each
    naming its key (the weights and temperatures are :func:`number_problems`')."""
    node = _get(cfg, _CIRKD_MEMORY)
    if not isinstance(node, Mapping):
        return []
    problems = []
    for k in _CIRKD_MEMORY_SIZES:
        if k in node and not (isinstance(node[k], int) and not isinstance(node[k], bool)):
            problems.append(f"{_CIRKD_MEMORY}.{k} is {node[k]!r}: it must be an integer > 0")
        elif k in node and node[k] <= 0:
            problems.append(
                f"{_CIRKD_MEMORY}.{k} is {node[k]!r}: a queue / contrast size must be > 0 "
                "(switch the term off with PIXEL_WEIGHT 0 and REGION_WEIGHT 0)"
            )
    proj = node.get("PROJ_DIM", 0)
    if not isinstance(proj, int) or isinstance(proj, bool) or proj < 0:
        problems.append(
            f"{_CIRKD_MEMORY}.PROJ_DIM is {proj!r}: it must be an integer >= 0 (0 = the "
            "teacher's feature width)"
        )
    return problems


# --------------------------------------------------------------------------- unused keys

# (key, when it is unused (None: always), what to do instead)
_UNUSED: tuple[tuple[str, Any, str], ...] = (
    (
        "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",
        None,
        "the main cross-entropy always has weight 1 (the reference recipe); weigh the auxiliary "
        "loss with MODEL.SEM_SEG_HEAD.AUX_WEIGHT and the distillation terms with their WEIGHT",
    ),
    ("MODEL.SEM_SEG_HEAD.LOSS_TYPE", None, "TextKD's task loss is the plain cross-entropy"),
    ("MODEL.SEM_SEG_HEAD.CONVS_DIM", None, "the head width is MODEL.SEM_SEG_HEAD.CHANNELS"),
    (
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE",
        None,
        "the output stride is MODEL.SEG_BACKBONE.OUTPUT_STRIDE",
    ),
    (
        "MODEL.SEM_SEG_HEAD.NORM",
        None,
        "the norm layer of backbone and heads is MODEL.SEG_BACKBONE.NORM",
    ),
    ("MODEL.SEM_SEG_HEAD.IN_FEATURES", None, "the head's input is MODEL.SEM_SEG_HEAD.IN_FEATURE"),
    (
        "INPUT.MIN_SIZE_TRAIN",
        None,
        "training sizes are INPUT.BASE_SIZE, INPUT.SCALE_RANGE and INPUT.CROP.SIZE",
    ),
    ("INPUT.MAX_SIZE_TRAIN", None, "training sizes are INPUT.BASE_SIZE and INPUT.SCALE_RANGE"),
    ("INPUT.MIN_SIZE_TRAIN_SAMPLING", None, "scales are drawn from INPUT.SCALE_RANGE"),
    ("INPUT.MIN_SIZE_TEST", None, "the evaluation size is INPUT.TEST_SIZE"),
    ("INPUT.MAX_SIZE_TEST", None, "the evaluation size is INPUT.TEST_SIZE"),
    ("INPUT.RANDOM_FLIP", None, "flipping is INPUT.FLIP (True/False)"),
    ("TEST.AUG.ENABLED", None, "test-time augmentation is not part of the protocol"),
    ("TEST.EVAL_BOTH_MIOU", None, "both mIoU variants are always reported"),
    (
        "MODEL.BACKBONE.FREEZE_AT",
        "textkd_backbone",
        "the TextKD backbone (MODEL.SEG_BACKBONE) trains every stage; freeze its BN with "
        "MODEL.SEG_BACKBONE.FROZEN_BN",
    ),
    ("MODEL.RESNETS", "textkd_backbone", "the backbone is chosen by MODEL.SEG_BACKBONE.ARCH"),
    (
        "MODEL.DISTILL",
        "not_distill",
        f"distillation keys only apply to MODEL.META_ARCHITECTURE {DISTILL_ARCH}",
    ),
    (
        "MODEL.LAD",
        "not_lad",
        "LAD keys only apply to a label-conditioned model (MODEL.LAD.ENABLED True); a "
        "distillation student reads its LAD teacher's settings from the teacher's config",
    ),
)


def _condition_holds(cfg: Any, condition: Any) -> bool:
    if condition is None:
        return True
    if condition == "textkd_backbone":
        return _get(cfg, "MODEL.BACKBONE.NAME") in _TEXTKD_BACKBONES
    if condition == "not_distill":
        return _get(cfg, "MODEL.META_ARCHITECTURE") != DISTILL_ARCH
    if condition == "not_lad":
        return not _get(cfg, "MODEL.LAD.ENABLED", False)
    raise ValueError(f"unknown condition {condition!r}")


def _differences(value: Any, default: Any, key: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys under ``key`` whose value differs from ``default``."""
    if isinstance(value, Mapping) and isinstance(default, Mapping):
        out = []
        for k in sorted(set(value) | set(default), key=str):
            sub = f"{key}.{k}"
            if sub in skip:
                continue
            out += _differences(value.get(k), default.get(k), sub, skip)
        return out
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return [] if list(value) == list(default) else [key]
    return [] if value == default else [key]


def unused_key_problems(cfg: Any, defaults: Any) -> list[str]:
    """Keys the config accepts but this run does not use, set to a non-default value; each
    problem names the key, its value and what to set instead."""
    problems = []
    for key, condition, advice in _UNUSED:
        if _get(cfg, key) is None or not _condition_holds(cfg, condition):
            continue
        skip = ("MODEL.LAD.ENABLED",)
        for sub in _differences(_get(cfg, key), _get(defaults, key), key, skip):
            problems.append(
                f"{sub} is {_get(cfg, sub)!r} but TextKD does not use it here (default "
                f"{_get(defaults, sub)!r}): {advice}. Remove it from the config"
            )
    return problems


# --------------------------------------------------------------------------- best checkpoint

# the scores of one task of TextKD's evaluator (evaluation/metrics.py:compute_metrics)
_METRIC_NAMES = ("mIoU", "mIoU_all", "fwIoU", "mACC", "pACC")
_PER_CLASS_PREFIXES = ("IoU-", "ACC-")


def evaluation_tasks(cfg: Any) -> tuple[str, ...]:
    """The evaluation tasks (first part of a flattened result key) the configured model reports
    through TextKD's evaluator: ``sem_seg``, and for a LAD model evaluated with both label
    channels the second one (``sem_seg_zero_label`` or ``sem_seg_label_code``, see
    ``MODEL.LAD.EVAL_MAIN``)."""
    tasks = ["sem_seg"]
    if _get(cfg, "MODEL.LAD.ENABLED", False) and _get(cfg, "MODEL.LAD.EVAL_LABEL") == "both":
        main = _get(cfg, "MODEL.LAD.EVAL_MAIN", "code")
        tasks.append("sem_seg_zero_label" if main == "code" else "sem_seg_label_code")
    return tuple(tasks)


def best_checkpoint_problems(cfg: Any) -> list[str]:
    """A ``TEXTKD.BEST_CHECKPOINT`` that cannot select anything: a mode other than max/min, or a
    metric that no evaluation of this config can report (malformed, an unknown task of TextKD's
    evaluator, or an unknown score name). Per-class keys (``IoU-<class>``) and the Cityscapes
    evaluator's task are only checked for their form (class names are the dataset's)."""
    node = _get(cfg, "TEXTKD.BEST_CHECKPOINT")
    if not isinstance(node, Mapping) or not node.get("ENABLED", False):
        return []
    problems = []
    mode = node.get("MODE")
    if mode not in ("max", "min"):
        problems.append(f"TEXTKD.BEST_CHECKPOINT.MODE is {mode!r}: use 'max' or 'min'")
    metric = node.get("METRIC")
    key = "TEXTKD.BEST_CHECKPOINT.METRIC"
    parts = metric.split("/") if isinstance(metric, str) else []
    if len(parts) != 2 or not all(p and p == p.strip() for p in parts):
        problems.append(
            f"{key} is {metric!r}: it must be a key of the evaluation results as detectron2 "
            "flattens them, '<task>/<score>', e.g. 'sem_seg/mIoU'"
        )
        return problems
    task, name = parts
    tasks = evaluation_tasks(cfg)
    if task.startswith("cityscapes"):
        return problems
    if task not in tasks:
        problems.append(
            f"{key} is {metric!r}: this config's evaluation reports the task(s) {list(tasks)} "
            f"(not {task!r}); e.g. '{tasks[-1]}/mIoU'"
        )
    elif name not in _METRIC_NAMES and not name.startswith(_PER_CLASS_PREFIXES):
        problems.append(
            f"{key} is {metric!r}: {name!r} is not a score of the evaluation; use one of "
            f"{list(_METRIC_NAMES)} or a per-class 'IoU-<class>' / 'ACC-<class>'"
        )
    return problems


# --------------------------------------------------------------------------- run-level checks


def _has_last_checkpoint(output_dir: str) -> bool:
    return bool(output_dir) and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))


def _weights_problems(cfg: Any, mode: str, resume: bool) -> list[str]:
    weights = _get(cfg, "MODEL.WEIGHTS", "")
    output_dir = _get(cfg, "OUTPUT_DIR", "")
    if resume and _has_last_checkpoint(output_dir):
        return []  # the run continues from OUTPUT_DIR/last_checkpoint
    if weights:
        try:
            check_checkpoint_file(weights, "checkpoint", "MODEL.WEIGHTS")
        except (OSError, ValueError) as e:
            return [str(e)]
        return []
    if mode != "eval" or _get(cfg, "TEXTKD.ALLOW_RANDOM_WEIGHTS", False):
        return []
    if resume:
        what = (
            f"--eval-only --resume found no last_checkpoint in OUTPUT_DIR={output_dir!r} and "
            "MODEL.WEIGHTS is empty"
        )
    else:
        what = "--eval-only with an empty MODEL.WEIGHTS"
    return [
        f"{what}: this would evaluate a randomly initialised model. Set MODEL.WEIGHTS to a "
        "trained checkpoint (e.g. <OUTPUT_DIR of the training run>/model_final.pth), or "
        "--resume with the training run's OUTPUT_DIR; to evaluate random weights on purpose "
        "set TEXTKD.ALLOW_RANDOM_WEIGHTS True"
    ]


def _batch_norm_problems(cfg: Any, world_size: int) -> list[str]:
    total = int(_get(cfg, "SOLVER.IMS_PER_BATCH", 2))
    world_size = max(int(world_size), 1)
    per_gpu = total // world_size
    try:
        norm = norm_name(
            _get(cfg, "MODEL.SEG_BACKBONE.NORM", "auto"),
            world_size,
            _get(cfg, "MODEL.DEVICE", "cpu"),
        )
    except ValueError as e:
        return [str(e)]
    batch = per_gpu if norm == "BN" else total
    if batch >= 2:
        return []
    return [
        f"SOLVER.IMS_PER_BATCH is {total} over {world_size} process(es): {batch} image per "
        f"{'GPU' if norm == 'BN' else 'step'} with {norm} (MODEL.SEG_BACKBONE.NORM "
        f"{_get(cfg, 'MODEL.SEG_BACKBONE.NORM', 'auto')!r}). Batch norm cannot train on one "
        "image (its pooled branches have one value per channel). Use SOLVER.IMS_PER_BATCH >= "
        f"{2 * world_size} (2 images per GPU or more), or SyncBN across several GPUs "
        "(MODEL.SEG_BACKBONE.NORM SyncBN with --num-gpus > 1)"
    ]


def _read_backbone_file(path: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a backbone file (memory-mapped, so only the keys are read), or None when it
    cannot be read (the backbone loader reports that)."""
    try:
        obj = load_checkpoint_file(
            path, "pretrained backbone weights", weights_only=True, mmap=True
        )
        return unwrap_state_dict(obj, path)
    except (OSError, ValueError):
        return None


def _pretrained_normalisation_problems(cfg: Any) -> list[str]:
    """CIRKD's ImageNet ResNets were trained on BGR images minus the Caffe mean without a std
    (``modeling.convert.CIRKD_PIXEL_MEAN``); training from them on other input wastes the
    pretraining. Checked only for CIRKD-layout files (other files carry no statistics)."""
    path = _get(cfg, "MODEL.SEG_BACKBONE.PRETRAINED", "")
    if not path or not os.path.isfile(path) or path.endswith(".safetensors"):
        return []
    state = _read_backbone_file(path)
    if state is None or not is_cirkd_backbone_state(state):
        return []
    fmt = _get(cfg, "INPUT.FORMAT", "BGR")
    mean = [float(v) for v in _get(cfg, "MODEL.PIXEL_MEAN", [])]
    std = [float(v) for v in _get(cfg, "MODEL.PIXEL_STD", [])]
    same_mean = len(mean) == 3 and all(abs(a - b) < 1e-3 for a, b in zip(mean, CIRKD_PIXEL_MEAN))
    same_std = len(std) == 3 and all(abs(a - b) < 1e-6 for a, b in zip(std, CIRKD_PIXEL_STD))
    if fmt == "BGR" and same_mean and same_std:
        return []
    return [
        f"MODEL.SEG_BACKBONE.PRETRAINED={path!r} holds CIRKD's ImageNet ResNetV1b weights, "
        "trained on BGR images minus the Caffe mean without a std, but this run feeds "
        f"INPUT.FORMAT {fmt!r}, MODEL.PIXEL_MEAN {mean}, MODEL.PIXEL_STD {std}. Set "
        f'INPUT.FORMAT "BGR", MODEL.PIXEL_MEAN {list(CIRKD_PIXEL_MEAN)}, MODEL.PIXEL_STD '
        f"{list(CIRKD_PIXEL_STD)} (as the CIRKD recipes do), or use ImageNet weights trained on "
        "this normalisation"
    ]


def scale_set_problems(cfg: Any) -> list[str]:
    """``INPUT.SCALE_SET`` must be a list of finite numbers > 0 ([] = draw from
    ``INPUT.SCALE_RANGE``)."""
    values = _get(cfg, "INPUT.SCALE_SET", []) or []
    if not isinstance(values, (list, tuple)):
        return [
            f"INPUT.SCALE_SET is {values!r}: it must be a list of scale factors > 0, e.g. "
            "[0.5, 0.75, 1.0] ([] draws continuously from INPUT.SCALE_RANGE)"
        ]
    bad = [v for v in values if not (_is_number(v) and math.isfinite(v) and v > 0)]
    if not bad:
        return []
    return [
        f"INPUT.SCALE_SET is {list(values)}: {bad} {'is' if len(bad) == 1 else 'are'} not a "
        "finite number > 0; every entry is an image scale factor (CIRKD's set is 0.5, 0.6, ..., "
        "2.0; [] draws continuously from INPUT.SCALE_RANGE)"
    ]


def validate_config(
    cfg: Any,
    mode: str,
    *,
    defaults: Any = None,
    resume: bool = False,
    world_size: int = 1,
) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` for a run of kind ``mode``
    ("train", "eval", "export" or "benchmark"), before anything is built.

    ``resume``: ``--resume`` was given; ``world_size``: the number of training processes
    (``--num-gpus`` × ``--num-machines``); ``defaults``: the default config node, needed for the
    unused-key check (skipped when None)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    problems = number_problems(cfg) + scale_set_problems(cfg) + cirkd_memory_problems(cfg)
    adversarial = _get(cfg, "MODEL.DISTILL.ADVERSARIAL")
    if adversarial is not None:
        problems += adversarial_problems(adversarial, "MODEL.DISTILL.ADVERSARIAL", weights=False)
    if defaults is not None:
        problems += unused_key_problems(cfg, defaults)
    if mode in ("train", "eval"):
        problems += _weights_problems(cfg, mode, resume)
    if mode == "train":
        problems += _batch_norm_problems(cfg, world_size)
        problems += _pretrained_normalisation_problems(cfg)
        problems += best_checkpoint_problems(cfg)
    if problems:
        what = {"train": "training", "eval": "evaluation", "export": "export"}.get(mode, mode)
        raise ConfigError(
            f"the configuration cannot be used for {what} ({len(problems)} problem"
            f"{'s' if len(problems) > 1 else ''}); nothing was run:\n  - " + "\n  - ".join(problems)
        )
