"""Label Assisted Distillation core (METHODS.md section 3): the Label Noising Module, the
deterministic label code used when distilling, and the dual-path consistency loss.

The label channel is one extra input channel of a label-conditioned teacher. It must sit on the
scale of the normalised image: the reference code feeds mean-subtracted pixels on the 0-255 scale
(unit std) with ``α = 100``; for pixels divided by a per-channel std, the equivalent is
``α = 100 / mean(pixel_std)`` (``alpha_for_pixel_std``). ``DEFAULT_ALPHA`` is that value for the
ImageNet std of detectron2's default config (58.395, 57.12, 57.375), i.e. ``≈ 1.735``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .base import TermContext, TrainingTerm
from .losses import channel_wise_divergence, check_labels

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_PIXEL_STD",
    "DEFAULT_ALPHA",
    "alpha_for_pixel_std",
    "check_labels",
    "noise_labels",
    "label_code",
    "label_code_values",
    "dual_path_consistency",
    "LABEL_MODES",
    "append_label_channel",
    "LADConsistency",
]

#: how :func:`append_label_channel` fills the label channel
LABEL_MODES = ("noise", "code", "zero")

#: detectron2's default MODEL.PIXEL_STD (0-255 scale, ImageNet statistics)
IMAGENET_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


def alpha_for_pixel_std(pixel_std: float | Sequence[float], alpha_raw: float = 100.0) -> float:
    """Scale of the label channel for pixels normalised by ``pixel_std``:
    ``α = alpha_raw / mean(pixel_std)`` (the reference uses ``alpha_raw = 100`` with unit std on
    the 0-255 scale)."""
    if isinstance(pixel_std, (int, float)):
        stds = [float(pixel_std)]
    else:
        stds = [float(v) for v in pixel_std]
    if not stds or any(not v > 0 for v in stds):
        raise ValueError(f"pixel_std must be positive numbers, got {pixel_std!r}")
    return float(alpha_raw) / (sum(stds) / len(stds))


#: α for detectron2's default (ImageNet) pixel std: 100 / mean(58.395, 57.12, 57.375) ≈ 1.735
DEFAULT_ALPHA: float = alpha_for_pixel_std(IMAGENET_PIXEL_STD)


def _label_indices(labels: torch.Tensor, num_classes: int, ignore_label: int) -> torch.Tensor:
    """Validate an N×H×W (or N×1×H×W) label map and return it as int64 N×(H·W) indices with the
    ignore label mapped to the extra class ``num_classes``."""
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(f"labels must be N×H×W (or N×1×H×W), got shape {tuple(labels.shape)}")
    check_labels(labels, num_classes, ignore_label)
    idx = labels.long()
    idx = torch.where(idx == ignore_label, torch.full_like(idx, num_classes), idx)
    return idx.reshape(idx.shape[0], -1)


def _paint(
    table: torch.Tensor,
    idx: torch.Tensor,
    shape: tuple[int, int, int],
    alpha: float,
    sigma: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``α·(table[n, y(p)] + σ·ε(p))`` for an N×(K+1) value table and N×(H·W) class indices,
    ``ε ~ N(0,1)`` per pixel drawn after the table (one ``torch.randn`` of shape N×1×H×W)."""
    n, h, w = shape
    values = table.gather(1, idx).reshape(n, 1, h, w)
    eps = torch.randn((n, 1, h, w), generator=generator, device=idx.device, dtype=torch.float32)
    return alpha * (values + sigma * eps)


def _check_scales(alpha: float, sigma: float) -> None:
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if not alpha == alpha:  # NaN
        raise ValueError(f"alpha must be a number, got {alpha!r}")


def noise_labels(
    labels: torch.Tensor,
    num_classes: int,
    ignore_label: int = 255,
    alpha: float = DEFAULT_ALPHA,
    sigma: float = 0.03,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Label Noising Module (training draw): ``L(p) = α·(w[n, y(p)] + σ·ε(p))`` with one
    ``w[n, k] ~ N(0,1)`` per image and class (K+1 values per image, the ignore label being class
    K), fresh every call, and ``ε(p) ~ N(0,1)`` per pixel. Returns an N×1×H×W float32 map.

    Draw order (so that ``reference.noise_labels_loop`` reproduces it): first ``w`` as one
    ``randn(N, K+1)``, then ``ε`` as one ``randn(N, 1, H, W)``, both float32 on ``labels.device``
    from ``generator`` (default: the global generator of that device)."""
    _check_scales(alpha, sigma)
    idx = _label_indices(labels, num_classes, ignore_label)
    n = idx.shape[0]
    table = torch.randn(
        (n, num_classes + 1), generator=generator, device=idx.device, dtype=torch.float32
    )
    shape = (n, labels.shape[-2], labels.shape[-1])
    return _paint(table, idx, shape, alpha, sigma, generator)


def label_code_values(num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The deterministic label code ``w_k = (k − c)/10`` for ``k = 0..K`` (K+1 values, the last
    one for the ignore label), ``c = (K+1)//2`` (for Pascal VOC, K = 21: ``(k − 11)/10``)."""
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    c = (num_classes + 1) // 2
    k = torch.arange(num_classes + 1, device=device, dtype=torch.float32)
    return (k - c) / 10.0


def label_code(
    labels: torch.Tensor,
    num_classes: int,
    ignore_label: int = 255,
    alpha: float = DEFAULT_ALPHA,
    sigma: float = 0.02,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Deterministic label code fed to a frozen LAD teacher while distilling:
    ``L(p) = α·(w_{y(p)} + σ·ε(p))`` with ``w_k = (k − c)/10``, ``c = (K+1)//2``, the ignore label
    as class K, and ``ε(p) ~ N(0,1)`` per pixel (``sigma = 0`` gives the exact code). Returns an
    N×1×H×W float32 map."""
    _check_scales(alpha, sigma)
    idx = _label_indices(labels, num_classes, ignore_label)
    n = idx.shape[0]
    table = label_code_values(num_classes, idx.device).expand(n, -1)
    shape = (n, labels.shape[-2], labels.shape[-1])
    return _paint(table, idx, shape, alpha, sigma, generator)


def dual_path_consistency(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Dual-path consistency of LAD teacher training:
    ``CWD(z1 ‖ sg(z2)) + CWD(z2 ‖ sg(z1))`` with channel-wise divergence at temperature τ
    (unweighted; the reference multiplies it by 5). Each direction sends gradient only into its
    own path's logits."""
    return channel_wise_divergence(z1, z2, temperature) + channel_wise_divergence(
        z2, z1, temperature
    )


def append_label_channel(
    x: torch.Tensor,
    targets: torch.Tensor | None,
    num_classes: int,
    ignore_label: int,
    alpha: float,
    sigma: float,
    mode: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The input of a label-conditioned (LAD) model: the normalised images ``x`` (N×3×H×W) with
    the label channel appended (N×4×H×W, in ``x``'s dtype). ``mode``: ``"noise"`` a fresh
    :func:`noise_labels` draw (training), ``"code"`` the deterministic :func:`label_code` (its
    pixel noise from ``generator``; evaluation and the frozen teacher while distilling),
    ``"zero"`` a zero channel (no label; ``targets`` unused). ``sigma`` is the noise of the
    chosen mode (``MODEL.LAD.SIGMA`` / ``CODE_SIGMA``)."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label channel mode must be one of {LABEL_MODES}, got {mode!r}")
    if mode == "zero":
        ch = x.new_zeros(x.shape[0], 1, *x.shape[2:])
    elif targets is None:
        raise ValueError(f"the {mode!r} label channel needs the ground-truth labels")
    elif mode == "noise":
        ch = noise_labels(targets, num_classes, ignore_label, alpha, sigma, generator=generator)
    else:
        ch = label_code(targets, num_classes, ignore_label, alpha, sigma, generator=generator)
    return torch.cat([x, ch.to(x.dtype)], dim=1)


class LADConsistency(TrainingTerm):
    """LAD's dual-path consistency as a training term: ``forward(path1_out, path2_out)`` gives
    ``{"loss_consistency": weight · dual_path_consistency(z1, z2, τ)}`` on the two label-noised
    paths' logits (the two ``SegOutput`` records take the student/teacher slots of the term
    interface). Configured by ``MODEL.LAD`` (``CONSISTENCY_WEIGHT``, ``CONSISTENCY_TEMPERATURE``);
    off unless ``ENABLED`` and ``DUAL_PATH`` with a positive weight."""

    def __init__(self, weight: float, temperature: float = 4.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"MODEL.LAD.CONSISTENCY_WEIGHT must be >= 0, got {weight!r}")
        if not temperature > 0:
            raise ValueError(f"MODEL.LAD.CONSISTENCY_TEMPERATURE must be > 0, got {temperature!r}")
        self.weight = float(weight)
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, node: Mapping[str, Any], context: TermContext) -> LADConsistency | None:
        if not (node["ENABLED"] and node["DUAL_PATH"] and node["CONSISTENCY_WEIGHT"] > 0):
            return None
        return cls(node["CONSISTENCY_WEIGHT"], node["CONSISTENCY_TEMPERATURE"])

    def forward(self, student_out, teacher_out, targets=None, *, iteration=None):
        return {
            "loss_consistency": self.weight
            * dual_path_consistency(student_out.logits, teacher_out.logits, self.temperature)
        }

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, temperature={self.temperature:g}"
