"""Distillation meta-architecture (detectron2 layer).

``DistillSemanticSegmentor`` holds the student (configured like the single model, stored as
``segmentor`` so a student-only export is just those keys) and a frozen teacher built from its own
config and checkpoint. A training step is: per-model normalisation → teacher forward under
``no_grad`` (label-conditioned teachers get the ground-truth label code) → student forward →
task losses + one ``loss_<name>`` per distillation term (+ ``loss_tcd``/``loss_trd``/… of the text
plugins). Inference and evaluation run the student alone.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm

from ..distill.lad import label_code
from ..distill.terms import Distiller, parse_terms
from ..distill.text_plugins import TextDistiller
from ..text.bank import load_text_bank
from .build import build_segmentor_from_cfg, resolve_norm
from .d2_teacher import (
    D2Teacher,
    build_d2_teacher,
    is_d2_teacher,
    load_d2_teacher_config,
    padded_frame,
)
from .meta_arch import (
    LADSettings,
    TextKDSemanticSegmentor,
    _autocast,
    check_finite_losses,
    current_iteration,
    normalize_images,
)
from .outputs import SegOutput
from .segmentor import Segmentor
from .weights import load_segmentor_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["DistillSemanticSegmentor", "build_teacher", "load_teacher_config"]


def load_teacher_config(cfg):
    """The teacher's own config: ``MODEL.DISTILL.TEACHER.CONFIG_FILE`` merged with ``.OPTS``
    (a detectron2 teacher's config is loaded by :mod:`.d2_teacher`)."""
    from detectron2.config import get_cfg

    from ..config import add_textkd_config

    path = cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError("MODEL.DISTILL.TEACHER.CONFIG_FILE is empty: the teacher needs a config")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"teacher config MODEL.DISTILL.TEACHER.CONFIG_FILE={path!r} not found"
        )
    if is_d2_teacher(cfg):
        return load_d2_teacher_config(cfg)
    tcfg = get_cfg()
    add_textkd_config(tcfg)
    tcfg.merge_from_file(path)
    tcfg.merge_from_list(list(cfg.MODEL.DISTILL.TEACHER.OPTS))
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    return tcfg


def build_teacher(cfg) -> tuple[Any, Segmentor | D2Teacher]:
    """Build the teacher from its config and load ``MODEL.DISTILL.TEACHER.WEIGHTS`` strictly.

    A missing file, or a checkpoint with missing/unexpected/mis-shaped keys, is an error: a
    distillation run never starts from a random teacher. A detectron2 teacher config gives a
    :class:`~.d2_teacher.D2Teacher`."""
    if cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE and is_d2_teacher(cfg):
        return build_d2_teacher(cfg)
    tcfg = load_teacher_config(cfg)
    try:
        teacher = build_segmentor_from_cfg(tcfg)
    except ValueError as e:
        raise ValueError(
            f"the teacher's config MODEL.DISTILL.TEACHER.CONFIG_FILE="
            f"{cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE!r} (+ MODEL.DISTILL.TEACHER.OPTS) is at "
            f"fault, not the student's: {e}. Fix it in that file or through "
            "MODEL.DISTILL.TEACHER.OPTS"
        ) from e
    weights = cfg.MODEL.DISTILL.TEACHER.WEIGHTS
    if not weights:
        raise ValueError(
            "MODEL.DISTILL.TEACHER.WEIGHTS is empty: distillation needs a trained teacher "
            "checkpoint (train one with tools/train_net.py --config-file "
            f"{cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE})"
        )
    if not os.path.exists(weights):
        raise FileNotFoundError(
            f"teacher checkpoint MODEL.DISTILL.TEACHER.WEIGHTS={weights!r} does not exist; "
            "distillation never starts from a random teacher. Train the teacher first "
            f"(tools/train_net.py --config-file {cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE}) or "
            "point the key at its checkpoint"
        )
    load_segmentor_checkpoint(teacher, weights, what="teacher", key="MODEL.DISTILL.TEACHER.WEIGHTS")
    return tcfg, teacher


def _class_names(cfg) -> list[str]:
    """The text bank's class names: ``MODEL.TEXT_BANK.CLASS_NAMES`` when set, else the
    ``stuff_classes`` of ``DATASETS.TRAIN[0]``; their number must be the model's class count."""
    if len(cfg.MODEL.TEXT_BANK.CLASS_NAMES):
        names = list(cfg.MODEL.TEXT_BANK.CLASS_NAMES)
        source = "MODEL.TEXT_BANK.CLASS_NAMES"
    else:
        if not len(cfg.DATASETS.TRAIN):
            raise ValueError("the text bank needs class names: set DATASETS.TRAIN or CLASS_NAMES")
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        names = getattr(meta, "stuff_classes", None)
        if not names:
            raise ValueError(
                f"dataset {cfg.DATASETS.TRAIN[0]!r} has no stuff_classes in its metadata; the "
                "text bank needs class names (or set MODEL.TEXT_BANK.CLASS_NAMES)"
            )
        names = list(names)
        source = f"stuff_classes of {cfg.DATASETS.TRAIN[0]!r}"
    k = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if len(names) != k:
        raise ValueError(
            f"the text bank has {len(names)} class names ({source}: {names[:8]}) but the model "
            f"predicts {k} classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES): one name per class is needed"
        )
    return names


def build_text_embeddings(cfg) -> torch.Tensor:
    """The K×D text bank, identical on every rank: rank 0 builds (or finds) the cache first,
    then every rank loads that cache file."""
    tb = cfg.MODEL.TEXT_BANK
    kwargs = dict(
        class_names=_class_names(cfg),
        source=tb.SOURCE,
        clip_model=tb.CLIP_MODEL,
        clip_pretrained=tb.CLIP_PRETRAINED,
        templates=list(tb.TEMPLATES),
        cache_dir=tb.CACHE_DIR,
        cache_file=tb.CACHE_FILE,
        dim=tb.DIM,
        seed=tb.SEED,
    )
    if comm.is_main_process():
        emb = load_text_bank(**kwargs)
    comm.synchronize()
    if not comm.is_main_process():
        emb = load_text_bank(**kwargs, compute_if_missing=False)
    return emb


@META_ARCH_REGISTRY.register()
class DistillSemanticSegmentor(TextKDSemanticSegmentor):
    """Student + frozen teacher + configured distillation terms (+ optional text plugins)."""

    @configurable
    def __init__(
        self,
        *,
        teacher: Segmentor | D2Teacher,
        teacher_pixel_mean: tuple[float, ...],
        teacher_pixel_std: tuple[float, ...],
        teacher_flip_channels: bool,
        teacher_lad: LADSettings | None,
        teacher_amp_dtype: str,
        distiller: Distiller,
        text_distiller: TextDistiller | None,
        text_input: str = "feature",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kwargs.get("lad") is not None:
            raise ValueError(
                "the student of a distillation run is an RGB model: MODEL.LAD.ENABLED must be "
                "False in the student config (the teacher's own config enables LAD)"
            )
        _check_class_counts(teacher, self.segmentor)
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        # teacher weights come from their own checkpoint: keep them out of training checkpoints
        self._register_state_dict_hook(_drop_teacher_state)
        self.teacher._register_load_state_dict_pre_hook(_fill_teacher_state, with_module=True)
        self.register_buffer(
            "teacher_pixel_mean", torch.tensor(teacher_pixel_mean).view(-1, 1, 1), False
        )
        self.register_buffer(
            "teacher_pixel_std", torch.tensor(teacher_pixel_std).view(-1, 1, 1), False
        )
        self.teacher_flip_channels = teacher_flip_channels
        # teacher and student normalise alike: the teacher reuses the student's input tensor
        self.teacher_shares_input = (
            not teacher_flip_channels
            and tuple(teacher_pixel_mean) == tuple(kwargs["pixel_mean"])
            and tuple(teacher_pixel_std) == tuple(kwargs["pixel_std"])
        )
        self.teacher_lad = teacher_lad
        self.teacher_amp_dtype = teacher_amp_dtype
        self.distiller = distiller
        self.text_distiller = text_distiller
        self.text_input = text_input

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        ret = super().from_config(cfg)
        tcfg, teacher = build_teacher(cfg)
        student: Segmentor = ret["segmentor"]
        _check_class_counts(teacher, student, cfg)
        specs = parse_terms(cfg.MODEL.DISTILL.TERMS)
        if isinstance(teacher, D2Teacher):
            # a detectron2 teacher normalises its own input (D2Teacher.forward)
            ret.update(
                teacher_pixel_mean=cfg.MODEL.PIXEL_MEAN,
                teacher_pixel_std=cfg.MODEL.PIXEL_STD,
                teacher_flip_channels=teacher.flip_channels,
                teacher_lad=None,
            )
        else:
            ret.update(
                teacher_pixel_mean=tcfg.MODEL.PIXEL_MEAN,
                teacher_pixel_std=tcfg.MODEL.PIXEL_STD,
                teacher_flip_channels=tcfg.INPUT.FORMAT != cfg.INPUT.FORMAT,
                teacher_lad=LADSettings.from_cfg(tcfg),
            )
        ret.update(
            teacher=teacher,
            teacher_amp_dtype=cfg.MODEL.DISTILL.TEACHER.AMP_DTYPE,
            distiller=Distiller(
                specs,
                student.output_channels,
                teacher.output_channels,
                num_classes=student.num_classes,
                ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            ),
            text_distiller=None,
            text_input=cfg.MODEL.DISTILL.TEXT.INPUT,
        )
        d = cfg.MODEL.DISTILL
        if d.TCD.WEIGHT > 0 or d.TRD.WEIGHT > 0 or d.TRD.MIMIC_WEIGHT > 0:
            name = d.TEXT.INPUT
            if name not in teacher.output_channels:
                raise ValueError(
                    f"MODEL.DISTILL.TEXT.INPUT={name!r}: the teacher has no such output "
                    f"(available: {list(teacher.output_channels)}); a detectron2 teacher records "
                    "its feature from MODEL.DISTILL.TEACHER.FEATURE_MODULE"
                )
            ret["text_distiller"] = TextDistiller(
                build_text_embeddings(cfg),
                student_channels=student.output_channels[name],
                teacher_channels=teacher.output_channels[name],
                tcd_weight=d.TCD.WEIGHT,
                tcd_temperature=d.TCD.TEMPERATURE,
                tcd_mode=d.TCD.MODE,
                trd_weight=d.TRD.WEIGHT,
                trd_region_temperature=d.TRD.REGION_TEMPERATURE,
                trd_affinity_temperature=d.TRD.AFFINITY_TEMPERATURE,
                trd_min_mass=d.TRD.MIN_MASS,
                trd_mimic_weight=d.TRD.MIMIC_WEIGHT,
                probe_weight=d.TEXT.PROBE_WEIGHT,
                student_align_weight=d.TEXT.STUDENT_ALIGN_WEIGHT,
                score_temperature=d.TEXT.SCORE_TEMPERATURE,
                proj_hidden=d.TEXT.PROJ_HIDDEN,
                learnable_text=cfg.MODEL.TEXT_BANK.SOURCE == "learnable",
                probe_mode=d.TEXT.PROBE_MODE,
                probe_pretrain_iters=d.TEXT.PROBE_PRETRAIN_ITERS,
                ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
            if resolve_norm(cfg) == "SyncBN":
                # the student projector's BN follows the configured norm, like the student
                ret["text_distiller"] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
                    ret["text_distiller"]
                )
        return ret

    def train(self, mode: bool = True):
        """The teacher stays in eval mode whatever the trainer asks."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_forward(
        self, batched_inputs, targets: torch.Tensor, student_input: torch.Tensor | None = None
    ) -> SegOutput:
        """Frozen teacher on its own normalisation (and the label code for a LAD teacher).
        ``student_input``, the student's normalised batch, is reused when both models normalise
        alike instead of normalising and padding the batch a second time. A detectron2 teacher
        runs its own inference; its maps are placed in the student's padded frame."""
        if isinstance(self.teacher, D2Teacher):
            if student_input is not None:
                frame = tuple(student_input.shape[-2:])
            else:
                frame = padded_frame(batched_inputs, self.size_divisibility)
            with _autocast(self.device, self.teacher_amp_dtype):
                out = self.teacher(batched_inputs, frame)
            return out.float()
        if student_input is not None and self.teacher_shares_input:
            x = student_input
        else:
            x = normalize_images(
                batched_inputs,
                self.teacher_pixel_mean,
                self.teacher_pixel_std,
                self.size_divisibility,
                self.device,
                flip_channels=self.teacher_flip_channels,
            ).tensor
        if self.teacher_lad is not None:
            code = label_code(
                targets,
                self.num_classes,
                self.ignore_value,
                self.teacher_lad.alpha,
                self.teacher_lad.code_sigma,
            )
            x = torch.cat([x, code.to(x.dtype)], dim=1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x.device, self.teacher_amp_dtype):
            out = self.teacher(x, with_aux=self.distiller.needs_aux)
        return out.float()

    def forward(self, batched_inputs: list[dict[str, Any]]):
        if not self.training:
            return self.inference(batched_inputs)
        images, targets = self.preprocess(batched_inputs, need_targets=True)
        t_out = self.teacher_forward(batched_inputs, targets, student_input=images.tensor)
        s_out = self.run_segmentor(images.tensor, with_aux=True)
        losses = self.task_losses(s_out, targets)
        losses.update(self.distiller(s_out, t_out, targets))
        if self.text_distiller is not None:
            name = self.text_input
            losses.update(
                self.text_distiller(
                    s_out.get(name), t_out.get(name), targets, iteration=current_iteration()
                )
            )
        if self.nonfinite_check:
            check_finite_losses(losses)
        return losses


def _check_class_counts(teacher: Segmentor | D2Teacher, student: Segmentor, cfg=None) -> None:
    """ValueError when teacher and student predict different numbers of classes (checked before
    the distillation terms are built, so the message names the configs, not a term)."""
    if teacher.num_classes == student.num_classes:
        return
    where = ""
    if cfg is not None:
        where = f" (teacher config {cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE!r})"
    raise ValueError(
        f"teacher predicts {teacher.num_classes} classes but the student "
        f"{student.num_classes}: MODEL.SEM_SEG_HEAD.NUM_CLASSES of the two configs differ{where}"
    )


def _drop_teacher_state(module, state_dict, prefix, local_metadata):
    for k in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[k]
    return state_dict


def _fill_teacher_state(module, state_dict, prefix, *args):
    """Loading a training checkpoint (which leaves the teacher out) keeps the teacher's weights."""
    for k, v in module.state_dict().items():
        state_dict.setdefault(prefix + k, v)
