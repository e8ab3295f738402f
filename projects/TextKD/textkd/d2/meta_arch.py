"""Single-model semantic segmentation meta-architecture (detectron2 layer).

``TextKDSemanticSegmentor`` wraps a core :class:`~textkd.models.segmentor.Segmentor`:
normalisation of ``batched_inputs``, the task loss ``CE(main) + 0.4·CE(aux)`` in training, and
logits resized to the original image at inference. With ``MODEL.LAD.ENABLED`` it is the
label-conditioned LAD teacher: trained with two noised-label paths and the dual-path consistency,
evaluated with the label code and/or a zero label channel.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn

from ..distill.base import TermContext, TrainingTerm, build_terms, compose_losses
from ..distill.lad import LADConsistency, alpha_for_pixel_std, append_label_channel
from ..models.losses import segmentation_losses
from ..models.outputs import SegOutput
from ..models.segmentor import Segmentor
from .build import build_segmentor_from_cfg

logger = logging.getLogger(__name__)

#: seed of the label code's pixel noise at evaluation (per batch; training draws stay random)
EVAL_CODE_SEED = 0

#: the training terms of the single model: ``{attribute: (term class, config path)}``
LAD_TERMS: dict[str, tuple[type[TrainingTerm], str]] = {
    "lad_consistency": (LADConsistency, "MODEL.LAD"),
}

__all__ = [
    "LAD_TERMS",
    "TextKDSemanticSegmentor",
    "LADSettings",
    "check_finite_losses",
    "current_iteration",
    "normalize_images",
]


def current_iteration() -> int | None:
    """The trainer's iteration when called inside detectron2's training loop, else None."""
    try:
        return get_event_storage().iter
    except AssertionError:
        return None


def check_finite_losses(losses: dict[str, torch.Tensor]) -> None:
    """Raise FloatingPointError naming every non-finite loss key and the iteration.

    One device synchronisation for the whole dict (detectron2 synchronises on the losses anyway
    when it logs them)."""
    if not losses:
        return
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [k for k, v in zip(losses, values.tolist()) if not math.isfinite(v)]
    it = current_iteration()
    raise FloatingPointError(
        f"non-finite loss {', '.join(repr(k) for k in bad)} at iteration {it}: "
        f"{ {k: float(v) for k, v in zip(losses, values.tolist())} }. Training stopped; "
        "resume from the last checkpoint with --resume after fixing the cause."
    )


def crop_and_resize(
    scores: torch.Tensor, image_size: tuple[int, int], height: int, width: int, align_corners: bool
) -> torch.Tensor:
    """K×H×W ``scores`` of a padded batch cropped to the image's ``image_size`` and bilinearly
    resized (with the model's ``align_corners``) to its original ``height``×``width``; detectron2's
    ``sem_seg_postprocess`` with the model's setting instead of a fixed ``align_corners=False``."""
    scores = scores[:, : image_size[0], : image_size[1]]
    if tuple(scores.shape[-2:]) == (height, width):
        return scores
    return nn.functional.interpolate(
        scores[None], size=(height, width), mode="bilinear", align_corners=align_corners
    )[0]


def normalize_images(
    batched_inputs: list[dict[str, Any]],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    size_divisibility: int,
    device: torch.device,
    flip_channels: bool = False,
) -> ImageList:
    """``(image − mean) / std`` per image (channels reversed first when ``flip_channels``, for a
    model whose input format differs from the loader's), padded with zeros to one batch tensor."""
    images = []
    for x in batched_inputs:
        img = x["image"].to(device=device, non_blocking=True).float()
        if flip_channels:
            img = img.flip(0)
        images.append((img - pixel_mean) / pixel_std)
    return ImageList.from_tensors(images, size_divisibility, padding_constraints=None)


class LADSettings:
    """Label channel settings of a label-conditioned (LAD) model (its dual-path consistency is
    the training term :class:`~textkd.distill.lad.LADConsistency`)."""

    def __init__(
        self,
        alpha: float,
        sigma: float,
        code_sigma: float,
        dual_path: bool,
        eval_label: str,
        eval_main: str = "code",
    ):
        if eval_label not in ("code", "zero", "both"):
            raise ValueError(f"MODEL.LAD.EVAL_LABEL must be code, zero or both, got {eval_label!r}")
        if eval_main not in ("code", "zero"):
            raise ValueError(f"MODEL.LAD.EVAL_MAIN must be code or zero, got {eval_main!r}")
        self.alpha = alpha
        self.sigma = sigma
        self.code_sigma = code_sigma
        self.dual_path = dual_path
        self.eval_label = eval_label
        self.eval_main = eval_main

    def eval_keys(self) -> dict[str, str]:
        """``{label channel mode: prediction key}`` of an evaluation: the main result is
        ``sem_seg``; with ``eval_label`` "both" the other is ``sem_seg_zero_label`` (main "code")
        or ``sem_seg_label_code`` (main "zero")."""
        if self.eval_label != "both":
            return {self.eval_label: "sem_seg"}
        if self.eval_main == "code":
            return {"code": "sem_seg", "zero": "sem_seg_zero_label"}
        return {"zero": "sem_seg", "code": "sem_seg_label_code"}

    def label_input(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None,
        num_classes: int,
        ignore_label: int,
        mode: str,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x`` with the label channel appended (:func:`~textkd.distill.lad.append_label_channel`
        at this model's α and the σ of ``mode``: ``sigma`` for "noise", ``code_sigma`` for
        "code")."""
        sigma = self.sigma if mode == "noise" else self.code_sigma
        return append_label_channel(
            x, targets, num_classes, ignore_label, self.alpha, sigma, mode, generator=generator
        )

    @classmethod
    def from_cfg(cls, cfg) -> LADSettings | None:
        if not cfg.MODEL.LAD.ENABLED:
            if cfg.MODEL.SEG_BACKBONE.IN_CHANS != 3:
                raise ValueError(
                    f"MODEL.SEG_BACKBONE.IN_CHANS is {cfg.MODEL.SEG_BACKBONE.IN_CHANS} but "
                    "MODEL.LAD.ENABLED is False: only a LAD label-conditioned model takes extra "
                    "input channels (set MODEL.LAD.ENABLED True, or IN_CHANS 3)"
                )
            return None
        if cfg.MODEL.SEG_BACKBONE.IN_CHANS != 4:
            raise ValueError(
                "MODEL.LAD.ENABLED needs a 4-channel backbone (3 image + 1 label channel); "
                f"MODEL.SEG_BACKBONE.IN_CHANS is {cfg.MODEL.SEG_BACKBONE.IN_CHANS}"
            )
        return cls(
            alpha=alpha_for_pixel_std(cfg.MODEL.PIXEL_STD, cfg.MODEL.LAD.ALPHA),
            sigma=cfg.MODEL.LAD.SIGMA,
            code_sigma=cfg.MODEL.LAD.CODE_SIGMA,
            dual_path=cfg.MODEL.LAD.DUAL_PATH,
            eval_label=cfg.MODEL.LAD.EVAL_LABEL,
            eval_main=cfg.MODEL.LAD.EVAL_MAIN,
        )


def _autocast(device: torch.device, dtype_name: str):
    if not dtype_name:
        return torch.autocast(device_type=device.type, enabled=False)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype_name not in dtypes:
        raise ValueError(f"AMP dtype must be '', 'bf16' or 'fp16', got {dtype_name!r}")
    return torch.autocast(device_type=device.type, dtype=dtypes[dtype_name])


@META_ARCH_REGISTRY.register()
class TextKDSemanticSegmentor(nn.Module):
    """One segmentation model (backbone + head + aux head) trained with CE + aux_weight·CE_aux."""

    @configurable
    def __init__(
        self,
        *,
        segmentor: Segmentor,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        aux_weight: float = 0.4,
        detail_weight: float = 1.0,
        ignore_value: int = 255,
        size_divisibility: int = -1,
        lad: LADSettings | None = None,
        amp_dtype: str = "",
        channels_last: bool = False,
        nonfinite_check: bool = True,
        terms: dict[str, TrainingTerm | None] | None = None,
    ):
        super().__init__()
        self.segmentor = segmentor
        self.num_classes = segmentor.num_classes
        self.aux_weight = aux_weight
        self.detail_weight = detail_weight
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        self.lad = lad
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.nonfinite_check = nonfinite_check
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if channels_last:
            self.segmentor.to(memory_format=torch.channels_last)
        self.term_names: list[str] = []
        self._set_terms(terms or {})

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        segmentor = build_segmentor_from_cfg(cfg)
        context = TermContext(
            num_classes=segmentor.num_classes, ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        )
        return {
            "segmentor": segmentor,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "aux_weight": cfg.MODEL.SEM_SEG_HEAD.AUX_WEIGHT,
            "detail_weight": cfg.MODEL.SEM_SEG_HEAD.STDC_DETAIL_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "lad": LADSettings.from_cfg(cfg),
            "amp_dtype": cfg.MODEL.AMP_DTYPE,
            "channels_last": cfg.MODEL.CHANNELS_LAST,
            "nonfinite_check": cfg.TEXTKD.NONFINITE_CHECK,
            "terms": build_terms(cfg, LAD_TERMS, context),
        }

    def _set_terms(self, terms: dict[str, TrainingTerm | None]) -> None:
        """Each training term becomes an attribute (its state saved under that name in
        checkpoints); a term the config switches off is an attribute set to None."""
        for name, term in terms.items():
            if hasattr(self, name):
                raise ValueError(f"training term attribute {name!r} is taken")
            setattr(self, name, term)
            if term is not None:
                self.term_names.append(name)

    def training_terms(self) -> list[TrainingTerm]:
        """The configured training terms, in config-table order."""
        return [getattr(self, name) for name in self.term_names]

    def term_losses(self, student_out: SegOutput, teacher_out: SegOutput, targets: torch.Tensor):
        """The summed-up loss dicts of every training term (:func:`compose_losses`); what the
        terms' own optimizer steps report is logged to detectron2's event storage."""
        logs: dict[str, torch.Tensor] = {}
        losses = compose_losses(
            self.training_terms(),
            student_out,
            teacher_out,
            targets,
            iteration=current_iteration(),
            training=self.training,
            logs=logs,
        )
        if logs and current_iteration() is not None:
            get_event_storage().put_scalars(**{k: float(v) for k, v in logs.items()})
        return losses

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ input
    def preprocess(
        self, batched_inputs: list[dict[str, Any]], need_targets: bool
    ) -> tuple[ImageList, torch.Tensor | None]:
        """Normalised, padded images and (when asked and available) the padded label maps."""
        images = normalize_images(
            batched_inputs, self.pixel_mean, self.pixel_std, self.size_divisibility, self.device
        )
        targets = None
        if need_targets:
            if any("sem_seg" not in x for x in batched_inputs):
                missing = [x.get("file_name", "?") for x in batched_inputs if "sem_seg" not in x]
                raise KeyError(
                    f"the model needs the ground-truth label ('sem_seg') for {missing[:3]}: "
                    "use textkd's TextKDSemSegDatasetMapper, which loads it"
                )
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device, non_blocking=True) for x in batched_inputs],
                self.size_divisibility,
                pad_value=self.ignore_value,
            ).tensor
        return images, targets

    def _label_input(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        mode: str,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append the LAD label channel: a fresh noised draw ("noise"), the deterministic code
        ("code", its pixel noise drawn from ``generator``) or zeros ("zero")."""
        assert self.lad is not None
        return self.lad.label_input(
            x, targets, self.num_classes, self.ignore_value, mode, generator=generator
        )

    def run_segmentor(self, x: torch.Tensor, with_aux: bool | None = None) -> SegOutput:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x.device, self.amp_dtype):
            out = self.segmentor(x, with_aux=with_aux)
        return out.float() if self.amp_dtype else out

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict[str, Any]]):
        if not self.training:
            return self.inference(batched_inputs)
        images, targets = self.preprocess(batched_inputs, need_targets=True)
        losses = self.training_losses(images.tensor, targets)
        if self.nonfinite_check:
            check_finite_losses(losses)
        return losses

    def task_losses(self, out: SegOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return segmentation_losses(
            out,
            targets,
            self.aux_weight,
            self.ignore_value,
            align_corners=self.segmentor.align_corners,
            detail_weight=self.detail_weight,
            head=self.segmentor.head,
        )

    def training_losses(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.lad is None:
            return self.task_losses(self.run_segmentor(x, with_aux=True), targets)
        if not self.lad.dual_path:
            out = self.run_segmentor(self._label_input(x, targets, "noise"), with_aux=True)
            return self.task_losses(out, targets)
        # dual path: two independent label draws of the same image, symmetric stop-gradient CWD
        out1 = self.run_segmentor(self._label_input(x, targets, "noise"), with_aux=True)
        out2 = self.run_segmentor(self._label_input(x, targets, "noise"), with_aux=True)
        losses = {}
        for i, out in ((1, out1), (2, out2)):
            losses.update({f"{k}_path{i}": v for k, v in self.task_losses(out, targets).items()})
        # the dual-path consistency term (path 1 and path 2 in the term's two output slots)
        losses.update(self.term_losses(out1, out2, targets))
        return losses

    @torch.no_grad()
    def inference(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"sem_seg": K×H×W scores}`` at the original image size. A LAD model
        returns its prediction with the label code and without the label (zero channel) as
        ``MODEL.LAD.EVAL_LABEL`` asks, the main one (``EVAL_MAIN``) under ``sem_seg``, the other
        under ``sem_seg_zero_label`` / ``sem_seg_label_code`` (:meth:`LADSettings.eval_keys`); the
        code's pixel noise is drawn from a generator seeded with ``EVAL_CODE_SEED`` per batch."""
        need_targets = self.lad is not None and self.lad.eval_label in ("code", "both")
        images, targets = self.preprocess(batched_inputs, need_targets=need_targets)
        x = images.tensor
        runs: dict[str, torch.Tensor] = {}
        if self.lad is None:
            runs["sem_seg"] = self.run_segmentor(x, with_aux=False).logits
        else:
            keys = self.lad.eval_keys()
            if "code" in keys:
                # the code's pixel noise comes from a generator seeded per batch, so an
                # evaluation is reproducible (eval-only gives the end-of-training numbers)
                gen = torch.Generator(device=x.device).manual_seed(EVAL_CODE_SEED)
                runs[keys["code"]] = self.run_segmentor(
                    self._label_input(x, targets, "code", generator=gen), with_aux=False
                ).logits
            if "zero" in keys:
                runs[keys["zero"]] = self.run_segmentor(
                    self._label_input(x, targets, "zero"), with_aux=False
                ).logits
            # the main result first (evaluators report the tasks in this order)
            runs = dict(sorted(runs.items(), key=lambda kv: kv[0] != "sem_seg"))
        return self.postprocess(runs, batched_inputs, images)

    def postprocess(
        self,
        runs: dict[str, torch.Tensor],
        batched_inputs: list[dict[str, Any]],
        images: ImageList,
    ) -> list[dict[str, torch.Tensor]]:
        """Bilinearly upsample stride-8 logits to the padded input (with the model's
        ``align_corners``, as its task loss), crop each image, resize to its original
        ``height``×``width``."""
        pad_size = images.tensor.shape[-2:]
        results: list[dict[str, torch.Tensor]] = [{} for _ in batched_inputs]
        for key, logits in runs.items():
            logits = nn.functional.interpolate(
                logits.float(),
                size=pad_size,
                mode="bilinear",
                align_corners=self.segmentor.align_corners,
            )
            for i, (res, inp, size) in enumerate(zip(logits, batched_inputs, images.image_sizes)):
                h = inp.get("height", size[0])
                w = inp.get("width", size[1])
                results[i][key] = crop_and_resize(res, size, h, w, self.segmentor.align_corners)
        return results
