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

from ..distill.adversarial import HolisticAdversarial
from ..distill.base import TermContext, TrainingTerm, build_terms
from ..distill.cirkd_memory import CIRKDMemory
from ..distill.terms import Distiller
from ..distill.text_plugins import TextDistiller
from ..models.outputs import SegOutput
from ..models.segmentor import Segmentor
from ..models.weights import load_segmentor_checkpoint
from ..text.bank import load_text_bank
from .build import build_segmentor_from_cfg, resolve_norm
from .meta_arch import (
    LADSettings,
    TextKDSemanticSegmentor,
    _autocast,
    check_finite_losses,
    normalize_images,
)
from .teacher import (
    D2Teacher,
    build_d2_teacher,
    is_d2_teacher,
    load_d2_teacher_config,
    padded_frame,
)

logger = logging.getLogger(__name__)

__all__ = ["DISTILL_TERMS", "DistillSemanticSegmentor", "build_teacher", "load_teacher_config"]

#: the training terms of a distillation run: ``{attribute: (term class, config path)}``; the
#: attribute names are the checkpoint prefixes (``distiller.adapters.*``, ``text_distiller.*``,
#: ``cirkd_memory.*``)
DISTILL_TERMS: dict[str, tuple[type[TrainingTerm], str]] = {
    "distiller": (Distiller, "MODEL.DISTILL.TERMS"),
    "text_distiller": (TextDistiller, "MODEL"),
    "cirkd_memory": (CIRKDMemory, "MODEL.DISTILL.CIRKD_MEMORY"),
    "adversarial": (HolisticAdversarial, "MODEL.DISTILL.ADVERSARIAL"),
}


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
        terms: dict[str, TrainingTerm | None],
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
        # registered after the teacher: parameter order (hence optimizer state) as before
        self._set_terms(terms)
        self.needs_aux = any(t.needs_aux for t in self.training_terms())
        # buffers a term keeps identical on every rank itself (CIRKD's memory queues): DDP must
        # not broadcast them at every forward (hundreds of MB for the reference sizes)
        synced = [
            f"{name}.{buf}"
            for name in self.term_names
            for buf in getattr(getattr(self, name), "rank_synced_buffers", ())
        ]
        if synced:
            self._ddp_params_and_buffers_to_ignore = synced

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        ret = super().from_config(cfg)
        tcfg, teacher = build_teacher(cfg)
        student: Segmentor = ret["segmentor"]
        _check_class_counts(teacher, student, cfg)
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
        context = TermContext(
            num_classes=student.num_classes,
            ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            student_channels=student.output_channels,
            teacher_channels=teacher.output_channels,
            text_embeddings=lambda: build_text_embeddings(cfg),
            sync_bn=resolve_norm(cfg) == "SyncBN",
            align_corners=student.align_corners,
            seed=int(cfg.SEED),
        )
        ret.update(
            teacher=teacher,
            teacher_amp_dtype=cfg.MODEL.DISTILL.TEACHER.AMP_DTYPE,
            # the student of a distillation run is RGB (checked in __init__): no LAD terms
            terms=build_terms(cfg, DISTILL_TERMS, context),
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
            x = self.teacher_lad.label_input(
                x, targets, self.num_classes, self.ignore_value, mode="code"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x.device, self.teacher_amp_dtype):
            out = self.teacher(x, with_aux=self.needs_aux)
        return out.float()

    def forward(self, batched_inputs: list[dict[str, Any]]):
        if not self.training:
            return self.inference(batched_inputs)
        images, targets = self.preprocess(batched_inputs, need_targets=True)
        t_out = self.teacher_forward(batched_inputs, targets, student_input=images.tensor)
        s_out = self.run_segmentor(images.tensor, with_aux=True)
        losses = self.task_losses(s_out, targets)
        losses.update(self.term_losses(s_out, t_out, targets))
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
