"""Task loss of a segmentor: CE(main) + aux_weight · CE(aux), logits upsampled to the labels,
plus the head's own losses (``head.losses(...)``, e.g. STDC's detail loss, OCRNet's soft-region
loss), as detectron2's DeepLab/PointRend heads own theirs.

Plain PyTorch, no detectron2; imports no head module (the heads import this one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import SegOutput

logger = logging.getLogger(__name__)

__all__ = ["upsample_logits", "cross_entropy_ignore", "segmentation_losses", "head_losses"]


def upsample_logits(
    logits: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """Bilinearly resize N×K×h×w ``logits`` to ``size`` = (H, W); unchanged when already there."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def cross_entropy_ignore(
    logits: torch.Tensor, targets: torch.Tensor, ignore_label: int = 255
) -> torch.Tensor:
    """Pixel-averaged cross-entropy ``-1/|V| Σ_{p∈V} log softmax(z_p)[y_p]`` over the valid pixels
    V (label != ``ignore_label``), computed in float32; 0 (with a graph) when V is empty instead
    of NaN."""
    loss = F.cross_entropy(
        logits.float(), targets, ignore_index=ignore_label, reduction="sum"
    )  # sum over valid pixels
    valid = (targets != ignore_label).sum().clamp_min(1)
    return loss / valid


def head_losses(
    head: nn.Module | None,
    output: SegOutput,
    targets: torch.Tensor,
    aux_weight: float = 0.4,
    ignore_label: int = 255,
    align_corners: bool = False,
    detail_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The head-specific task losses of ``output``: ``head.losses(output, targets, aux_weight=,
    detail_weight=, ignore_label=, align_corners=)`` when the head defines ``losses`` (each head
    reads the settings it uses and ignores the others), else ``{}`` (``head`` None: no head
    losses, ``output.extras`` are not read)."""
    fn = getattr(head, "losses", None)
    if fn is None:
        return {}
    return fn(
        output,
        targets,
        aux_weight=aux_weight,
        detail_weight=detail_weight,
        ignore_label=ignore_label,
        align_corners=align_corners,
    )


def segmentation_losses(
    output: SegOutput,
    targets: torch.Tensor,
    aux_weight: float = 0.4,
    ignore_label: int = 255,
    align_corners: bool = False,
    detail_weight: float = 1.0,
    head: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Task losses of one segmentor output.

    ``loss_sem_seg`` = CE(upsample(logits), y) and, when ``output.aux_logits`` exists,
    ``loss_aux`` = aux_weight · CE(upsample(aux_logits), y); CE ignores ``ignore_label`` and
    logits are bilinearly upsampled to the label size (H, W). Head-specific terms come from the
    ``head`` that produced ``output`` (:func:`head_losses`): STDC's ``loss_detail``
    (× ``detail_weight``) and OCRNet's ``loss_ocr_regions`` (× ``aux_weight``).

    Args:
        output: the segmentor's :class:`SegOutput`.
        targets: N×H×W integer labels.
        head: the segmentor's head (``segmentor.head``), whose ``losses`` adds its own terms;
            None adds none.
    """
    if targets.dim() != 3:
        raise ValueError(f"targets must be N×H×W, got shape {tuple(targets.shape)}")
    if targets.shape[0] != output.logits.shape[0]:
        raise ValueError(
            f"batch size of targets ({targets.shape[0]}) and logits "
            f"({output.logits.shape[0]}) differ"
        )
    targets = targets.long()
    size = targets.shape[-2:]
    losses = {
        "loss_sem_seg": cross_entropy_ignore(
            upsample_logits(output.logits, size, align_corners), targets, ignore_label
        )
    }
    if output.aux_logits is not None:
        losses["loss_aux"] = aux_weight * cross_entropy_ignore(
            upsample_logits(output.aux_logits, size, align_corners), targets, ignore_label
        )
    losses.update(
        head_losses(head, output, targets, aux_weight, ignore_label, align_corners, detail_weight)
    )
    return losses
