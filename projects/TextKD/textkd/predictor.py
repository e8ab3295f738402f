"""A trained model ready to predict or export (detectron2 layer).

:func:`build_deployable` builds the model of a config (single-model, or the student alone
of a distillation config, without its teacher), checks config and file, loads the checkpoint strictly and
wraps the (student) segmentor in :class:`textkd.deploy.DeployableSegmentor`.
:func:`class_info` gives the class names and colours of the config's dataset.
"""

from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from .deploy import DeployableSegmentor
from .engine import TextKDCheckpointer, build_eval_model, check_config, load_config
from .models.weights import check_checkpoint_file
from .visualize import default_palette

logger = logging.getLogger(__name__)

__all__ = ["build_deployable", "class_info", "load_model"]


def load_model(config_file: str, weights: str, opts=(), device: str = "cpu"):
    """``(cfg, model)``: the config's model in eval mode with ``weights`` loaded strictly (a
    checkpoint of another config is an error naming the file and keys)."""
    cfg = load_config(config_file, list(opts) + ["MODEL.DEVICE", device])
    check_config(cfg, "export")
    check_checkpoint_file(weights, "checkpoint", "--weights")
    # a distillation config: the student alone (its teacher is neither built nor read)
    model = build_eval_model(cfg)
    TextKDCheckpointer(model).load(weights, checkpointables=[])
    return cfg, model.eval()


def build_deployable(
    config_file: str, weights: str, opts=(), device: str = "cpu", argmax: bool = False
) -> tuple[CfgNode, DeployableSegmentor]:
    """``(cfg, deployable)`` of a config + checkpoint; a distillation config gives its student
    (the segmentor), normalised with the student config's ``PIXEL_MEAN`` / ``PIXEL_STD``."""
    cfg, model = load_model(config_file, weights, opts, device)
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise ValueError(
            f"{config_file}: INPUT.FORMAT {cfg.INPUT.FORMAT!r}: only RGB and BGR models can be "
            "deployed on images"
        )
    if cfg.INPUT.SIZE_DIVISIBILITY > 0:
        logger.warning(
            "%s: INPUT.SIZE_DIVISIBILITY is %d; the deployed model does not pad, give it images "
            "whose sides are multiples of it for the evaluation's exact numbers",
            config_file,
            cfg.INPUT.SIZE_DIVISIBILITY,
        )
    try:
        dep = DeployableSegmentor(
            model.segmentor, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, argmax=argmax
        )
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from None
    return cfg, dep.to(device).eval()


def class_info(cfg: CfgNode, num_classes: int) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and colours of the config's dataset (``DATASETS.TEST[0]``, else
    ``TRAIN[0]``): its ``stuff_classes`` / ``stuff_colors`` when they fit ``num_classes``,
    else ``class <i>`` and a fixed palette (with a warning)."""
    names = [f"class {i}" for i in range(num_classes)]
    colors = default_palette(num_classes)
    datasets = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    if not datasets:
        logger.warning("the config names no dataset: classes shown as numbers")
        return names, colors
    meta = MetadataCatalog.get(datasets[0])
    classes = meta.get("stuff_classes", None)
    if classes is not None and len(classes) == num_classes:
        names = list(classes)
    else:
        logger.warning(
            "dataset %s has %s stuff_classes for a %d-class model: classes shown as numbers",
            datasets[0],
            None if classes is None else len(classes),
            num_classes,
        )
    cols = meta.get("stuff_colors", None)
    if cols is not None and len(cols) >= num_classes:
        colors = [tuple(int(v) for v in c) for c in cols[:num_classes]]
    return names, colors
