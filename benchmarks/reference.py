"""Loop reference implementations, written the way the reference code bases compute them
(IFVD / CIRKD official code: per image and class, per image pair; the LAD label noising per image
and class). They are slow on purpose: the tests check the vectorised versions in
``textkd.distill.losses`` / ``textkd.distill.lad`` against them, and ``tools/benchmark.py`` times
both. Not part of the library: nothing in ``textkd`` imports them. Signatures match the vectorised functions.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from textkd.distill.lad import DEFAULT_ALPHA
from textkd.distill.losses import check_labels

logger = logging.getLogger(__name__)

__all__ = [
    "ifvd_loop",
    "cirkd_pixel_pairs_loop",
    "structural_kd_loop",
    "noise_labels_loop",
]


def _prepare(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detach the teacher, float32 both, resize the student bilinearly to the teacher's size."""
    t = t.detach().float()
    s = s.float()
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return s, t


def ifvd_loop(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_label: int = 255,
) -> torch.Tensor:
    """IFVD as the official code computes it, with a loop over images and classes: class
    prototype = ``(mask·f).sum / (mask.sum + 1e-6)`` written into a copy of the feature map where
    the mask is set (pixels of no class keep their own feature); loss =
    ``MSE(cos(f_s, center_s), cos(f_t, center_t))``."""
    check_labels(labels, num_classes, ignore_label)
    s, t = _prepare(f_s, f_t)
    size = t.shape[-2:]
    target = F.interpolate(labels.unsqueeze(1).float(), size=size, mode="nearest")[:, 0]
    cos_s, cos_t = [], []
    for n in range(t.shape[0]):
        center_s = s[n].clone()
        center_t = t[n].clone()
        for k in range(num_classes):
            mask = (target[n] == k).float().unsqueeze(0)  # 1×h×w, broadcast over C
            denom = mask.sum() + 1e-6
            proto_s = (mask * s[n]).sum(-1).sum(-1) / denom
            proto_t = (mask * t[n]).sum(-1).sum(-1) / denom
            center_s = (1 - mask) * center_s + mask * proto_s[:, None, None]
            center_t = (1 - mask) * center_t + mask * proto_t[:, None, None]
        cos_s.append(F.cosine_similarity(s[n], center_s, dim=0))
        cos_t.append(F.cosine_similarity(t[n], center_t, dim=0))
    return F.mse_loss(torch.stack(cos_s), torch.stack(cos_t))


def cirkd_pixel_pairs_loop(
    f_s: torch.Tensor, f_t: torch.Tensor, temperature: float = 0.1, pooling: bool = False
) -> torch.Tensor:
    """CIRKD mini-batch pixel pairs as the official code computes it: optional 2×2 average
    pooling, L2-normalise, then for each ordered pair (i, j) ``A = F_iᵀ F_j`` and
    ``kl_div(log_softmax(A_s/τ), softmax(A_t/τ), "batchmean")``, summed and divided by B²."""
    s, t = _prepare(f_s, f_t)
    if pooling:
        s = F.avg_pool2d(s, kernel_size=2, stride=2, ceil_mode=True)
        t = F.avg_pool2d(t, kernel_size=2, stride=2, ceil_mode=True)
    s = F.normalize(s, p=2, dim=1)
    t = F.normalize(t, p=2, dim=1)
    b, c = s.shape[:2]
    total = s.new_zeros(())
    for i in range(b):
        for j in range(b):
            a_s = torch.mm(s[i].reshape(c, -1).t(), s[j].reshape(c, -1))
            a_t = torch.mm(t[i].reshape(c, -1).t(), t[j].reshape(c, -1))
            log_ps = F.log_softmax(a_s / temperature, dim=1)
            pt = F.softmax(a_t / temperature, dim=1)
            total = total + F.kl_div(log_ps, pt, reduction="batchmean")
    return total / (b * b)


def structural_kd_loop(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Pair-wise SKD per image: 2×2 max-pool (ceil mode), L2-normalise over C,
    ``S = Fᵀ F``, and ``Σ (S_s − S_t)² / (hw)² / N`` summed over the images."""
    s, t = _prepare(f_s, f_t)
    s = F.max_pool2d(s, kernel_size=2, stride=2, ceil_mode=True)
    t = F.max_pool2d(t, kernel_size=2, stride=2, ceil_mode=True)
    n, c, h, w = t.shape
    total = s.new_zeros(())
    for i in range(n):
        xs = F.normalize(s[i].reshape(c, -1), dim=0)
        xt = F.normalize(t[i].reshape(c, -1), dim=0)
        diff = xs.t() @ xs - xt.t() @ xt
        total = total + (diff**2).sum() / (h * w) ** 2 / n
    return total


def noise_labels_loop(
    labels: torch.Tensor,
    num_classes: int,
    ignore_label: int = 255,
    alpha: float = DEFAULT_ALPHA,
    sigma: float = 0.03,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LAD label noising with a loop over images and classes. Draws the same random numbers in
    the same order as ``lad.noise_labels`` (``w = randn(N, K+1)`` then ``ε = randn(N, 1, H, W)``)
    and writes ``α·(w[n, k] + σ·ε)`` into the pixels of class k of image n (ignore = class K)."""
    if labels.dim() == 4:
        labels = labels[:, 0]
    check_labels(labels, num_classes, ignore_label)
    n, h, w = labels.shape
    device = labels.device
    table = torch.randn((n, num_classes + 1), generator=generator, device=device)
    eps = torch.randn((n, 1, h, w), generator=generator, device=device)
    out = torch.full((n, 1, h, w), float("nan"), device=device)
    for i in range(n):
        for k in range(num_classes + 1):
            mask = labels[i] == (k if k < num_classes else ignore_label)
            out[i, 0][mask] = alpha * (table[i, k] + sigma * eps[i, 0][mask])
    return out
