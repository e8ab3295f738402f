"""Classic distillation losses for semantic segmentation (METHODS.md section 1), as functions.

Every function takes the student map first and the teacher map second, returns an unweighted
scalar, and

- treats the teacher through stop-gradient (it is detached inside);
- bilinearly resizes the student map to the teacher's spatial size (:func:`resize_to_teacher`,
  ``align_corners=False`` here; the configured terms resize first with the student's
  ``MODEL.SEM_SEG_HEAD.ALIGN_CORNERS``, see ``textkd.distill.terms``) when the two differ;
- the similarity-based losses (SKD, IFVD, CIRKD pixel pairs) compare each model's own similarity
  structure and take features of different widths as they are (METHODS.md §1); for the
  element-wise ones a channel mismatch is an error (``textkd.distill.terms.Distiller`` adds a
  1×1 adapter for CWD on features);
- computes in float32 with autocast disabled, whatever the input dtype;
- is vectorised over pixels, classes and images (``cirkd_pixel_pairs`` loops over image pairs only,
  so that at most one pair's hw×hw similarity map is alive at a time, also during backward).

Straightforward loop versions that follow the reference code bases live in
``benchmarks.reference`` (outside the library); the tests check that both agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

__all__ = [
    "pixel_kd",
    "channel_wise_divergence",
    "structural_kd",
    "ifvd",
    "cirkd_pixel_pairs",
    "dist",
    "check_labels",
    "resize_labels",
    "resize_to_teacher",
]

# eps of the reference code bases: IFVD's prototype denominator, DIST's Pearson denominator
IFVD_EPS = 1e-6
DIST_EPS = 1e-8


# ------------------------------------------------------------------------------------ helpers
def _float32(fn: Callable) -> Callable:
    """Run ``fn`` with autocast disabled on the device of its first tensor argument, so that the
    loss is computed in float32 even inside an autocast region."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if torch.is_tensor(a)), None)
        device_type = first.device.type if first is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def resize_to_teacher(
    s: torch.Tensor, t: torch.Tensor, align_corners: bool = False
) -> torch.Tensor:
    """The student map ``s`` (N×C×h×w) bilinearly resized to the teacher map ``t``'s spatial
    size with ``align_corners`` (the student model's setting); ``s`` itself when they agree."""
    if s.shape[-2:] == t.shape[-2:]:
        return s
    return F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=align_corners)


def _align(
    s: torch.Tensor, t: torch.Tensor, name: str, *, same_channels: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two N×C×h×w maps, detach the teacher, cast both to float32 and bilinearly resize the
    student to the teacher's spatial size when they differ. ``same_channels=False`` lets the
    channel counts differ (losses that only compare each model's own similarities)."""
    if not (torch.is_tensor(s) and torch.is_tensor(t)):
        raise TypeError(f"{name}: student and teacher must be tensors, got {type(s)}, {type(t)}")
    if s.dim() != 4 or t.dim() != 4:
        raise ValueError(
            f"{name}: expected N×C×h×w student and teacher maps, got student "
            f"{tuple(s.shape)} and teacher {tuple(t.shape)}"
        )
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"{name}: batch sizes differ: student {tuple(s.shape)} vs teacher {tuple(t.shape)}"
        )
    if same_channels and s.shape[1] != t.shape[1]:
        raise ValueError(
            f"{name}: channels differ: student {tuple(s.shape)} vs teacher {tuple(t.shape)} "
            "(use a 1×1 adapter, e.g. textkd.distill.terms.Distiller, for features)"
        )
    t = t.detach().float()
    s = s.float()
    return resize_to_teacher(s, t), t


def _check_temperature(temperature: float, name: str) -> None:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature!r}")


def check_labels(labels: torch.Tensor, num_classes: int, ignore_label: int = 255) -> None:
    """Raise ValueError unless ``labels`` is an integer tensor whose values all lie in
    ``[0, num_classes)`` or equal ``ignore_label``; the message names the offending values."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not torch.is_tensor(labels):
        raise TypeError(f"labels must be a tensor, got {type(labels)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_label)
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()
        shown = values[:10] + (["..."] if len(values) > 10 else [])
        raise ValueError(
            f"labels contain values outside [0, {num_classes}) that are not the ignore label "
            f"{ignore_label}: {shown}"
        )


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an N×H×W (or N×1×H×W) label map to ``size`` (as IFVD's
    ``nn.Upsample(mode="nearest")`` on the float labels); returns an int64 N×h×w map."""
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(f"labels must be N×H×W, got shape {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return out[:, 0].long()


# ------------------------------------------------------------------------------------ losses
@_float32
def pixel_kd(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pixel-wise Hinton KD: ``τ² · (1/(N·h·w)) · Σ_pixels KL(softmax(z_t/τ) ‖ softmax(z_s/τ))``,
    softmax over the K classes ("batchmean" over the N·h·w pixels)."""
    _check_temperature(temperature, "pixel_kd")
    s, t = _align(z_s, z_t, "pixel_kd")
    n, _, h, w = t.shape
    log_ps = F.log_softmax(s / temperature, dim=1)
    log_pt = F.log_softmax(t / temperature, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
    return kl * (temperature**2) / (n * h * w)


@_float32
def channel_wise_divergence(
    s: torch.Tensor, t: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Channel-wise distillation (CWD): for every (n, c), ``P = softmax over h·w of (x[n,c]/τ)``;
    loss ``= τ² / (N·C) · Σ_{n,c} KL(P_t ‖ P_s)``."""
    _check_temperature(temperature, "channel_wise_divergence")
    s, t = _align(s, t, "channel_wise_divergence")
    n, c = t.shape[:2]
    log_ps = F.log_softmax(s.flatten(2) / temperature, dim=-1)
    log_pt = F.log_softmax(t.flatten(2) / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
    return kl * (temperature**2) / (n * c)


@_float32
def structural_kd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Pair-wise structural KD (SKD): 2×2 max-pool (stride 2, ceil mode) both features,
    L2-normalise over channels, ``S = Fᵀ F`` (hw×hw cosine similarities) per image, loss
    ``= mean((S_s − S_t)²)`` over the N·hw·hw entries."""
    s, t = _align(f_s, f_t, "structural_kd", same_channels=False)
    s = F.max_pool2d(s, kernel_size=2, stride=2, ceil_mode=True)
    t = F.max_pool2d(t, kernel_size=2, stride=2, ceil_mode=True)
    s = F.normalize(s, p=2, dim=1).flatten(2)
    t = F.normalize(t, p=2, dim=1).flatten(2)
    sim_s = torch.bmm(s.transpose(1, 2), s)
    sim_t = torch.bmm(t.transpose(1, 2), t)
    return (sim_s - sim_t).pow(2).mean()


def _class_prototype_cosine(
    feat: torch.Tensor, flat_index: torch.Tensor, valid: torch.Tensor, num_bins: int
) -> torch.Tensor:
    """Per pixel cosine(feature, prototype of its (image, class) bin) for a (N·P)×C feature
    matrix; prototypes are masked means ``Σ f / (count + 1e-6)`` built with one index_add;
    pixels that are not ``valid`` use their own feature as prototype."""
    sums = feat.new_zeros(num_bins, feat.shape[1]).index_add_(0, flat_index, feat)
    counts = torch.bincount(flat_index, minlength=num_bins).to(feat.dtype)
    protos = sums / (counts + IFVD_EPS)[:, None]
    centers = torch.where(valid[:, None], protos.index_select(0, flat_index), feat)
    return F.cosine_similarity(feat, centers, dim=1)


@_float32
def ifvd(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_label: int = 255,
) -> torch.Tensor:
    """Intra-class feature variation distillation (IFVD): nearest-resize ``labels`` to the feature
    size; per image and class the prototype is the masked mean ``Σ_{p∈k} f(p) / (|k| + 1e-6)``;
    per pixel ``cos(f(p), prototype of its class)`` for both models (ignored pixels keep their own
    feature as prototype, i.e. cosine 1); loss ``= MSE(cos_s, cos_t)`` over the N·h·w pixels."""
    s, t = _align(f_s, f_t, "ifvd", same_channels=False)
    n, _, h, w = t.shape
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3 or labels.shape[0] != n:
        raise ValueError(f"ifvd: labels must be N×H×W with N={n}, got shape {tuple(labels.shape)}")
    check_labels(labels, num_classes, ignore_label)
    lab = resize_labels(labels.to(t.device), (h, w)).reshape(n, h * w)
    valid = (lab >= 0) & (lab < num_classes)
    # one bin per (image, class); invalid pixels go to an extra bin per image that is never used
    bins = torch.where(valid, lab, num_classes)
    offsets = torch.arange(n, device=t.device)[:, None] * (num_classes + 1)
    flat_index = (bins + offsets).reshape(-1)
    valid = valid.reshape(-1)
    num_bins = n * (num_classes + 1)
    s_flat = s.flatten(2).transpose(1, 2).reshape(n * h * w, s.shape[1])
    t_flat = t.flatten(2).transpose(1, 2).reshape(n * h * w, t.shape[1])
    cos_s = _class_prototype_cosine(s_flat, flat_index, valid, num_bins)
    cos_t = _class_prototype_cosine(t_flat, flat_index, valid, num_bins)
    return F.mse_loss(cos_s, cos_t)


def _kl_rows_and_grad(
    a_s: torch.Tensor, a_t: torch.Tensor, dim: int, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Σ KL(softmax(a_t) ‖ softmax(a_s))`` over the slices along ``dim`` and, when asked, its
    gradient with respect to ``a_s``: ``softmax(a_s) − softmax(a_t)``."""
    log_pt = torch.log_softmax(a_t, dim=dim)
    log_ps = torch.log_softmax(a_s, dim=dim)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
    grad = None
    if need_grad:
        grad = log_ps.exp_().sub_(log_pt.exp_())
    return kl, grad


class _CrossImagePairKL(torch.autograd.Function):
    """Mean over the B² ordered image pairs (i, j) of the batchmean row KL between
    ``softmax_rows(X_t,i X_t,jᵀ / τ)`` and ``softmax_rows(X_s,i X_s,jᵀ / τ)`` for L2-normalised
    B×P×C features. The gradient with respect to the student features is accumulated during the
    forward pass (``∂KL/∂A_s = (softmax(A_s) − softmax(A_t)) / (P·τ)``), so only one pair's P×P
    maps exist at any time; (i, j) and (j, i) share one product (row vs column softmax)."""

    @staticmethod
    def forward(ctx, xs, xt, temperature, need_grad):  # noqa: D401 - autograd signature
        b, p, _ = xs.shape
        total = xs.new_zeros(())
        grad = torch.zeros_like(xs) if need_grad else None
        for i in range(b):
            for j in range(i, b):
                a_s = torch.mm(xs[i], xs[j].t()).div_(temperature)
                a_t = torch.mm(xt[i], xt[j].t()).div_(temperature)
                # pair (i, j): softmax over the rows of A; pair (j, i): over the columns of A
                kl, g = _kl_rows_and_grad(a_s, a_t, 1, need_grad)
                total += kl
                if i != j:
                    kl_c, g_c = _kl_rows_and_grad(a_s, a_t, 0, need_grad)
                    total += kl_c
                    if need_grad:
                        g.add_(g_c)
                        del g_c
                del a_s, a_t
                if need_grad:
                    grad[i].addmm_(g, xs[j])
                    grad[j].addmm_(g.t(), xs[i])
                    del g
        scale = 1.0 / (b * b * p)
        if need_grad:
            grad.mul_(scale / temperature)
            ctx.save_for_backward(grad)
        ctx.need_grad = need_grad
        return total * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if not ctx.need_grad:
            return None, None, None, None
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


@_float32
def cirkd_pixel_pairs(
    f_s: torch.Tensor, f_t: torch.Tensor, temperature: float = 0.1, pooling: bool = False
) -> torch.Tensor:
    """CIRKD mini-batch pixel-to-pixel pair distillation: optional 2×2 average pooling (stride 2,
    ceil mode), L2-normalise over channels; for every ordered image pair (i, j) in the batch
    ``A = F_iᵀ F_j`` (hw×hw) and ``KL(softmax_rows(A_t/τ) ‖ softmax_rows(A_s/τ))`` "batchmean"
    over the hw rows; loss = the mean over the B² pairs.

    Memory: one pair's hw×hw maps at a time, in the forward and the backward pass (the student
    gradient is accumulated during the forward pass; the result is not twice differentiable)."""
    _check_temperature(temperature, "cirkd_pixel_pairs")
    s, t = _align(f_s, f_t, "cirkd_pixel_pairs", same_channels=False)
    if pooling:
        s = F.avg_pool2d(s, kernel_size=2, stride=2, ceil_mode=True)
        t = F.avg_pool2d(t, kernel_size=2, stride=2, ceil_mode=True)
    xs = F.normalize(s, p=2, dim=1).flatten(2).transpose(1, 2).contiguous()
    xt = F.normalize(t, p=2, dim=1).flatten(2).transpose(1, 2).contiguous()
    need_grad = torch.is_grad_enabled() and xs.requires_grad
    return _CrossImagePairKL.apply(xs, xt, float(temperature), need_grad)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching rows, as DIST's reference:
    ``⟨a − ā, b − b̄⟩ / (‖a − ā‖·‖b − b̄‖ + 1e-8)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + DIST_EPS)


@_float32
def dist(
    z_s: torch.Tensor,
    z_t: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """DIST (distillation from a stronger teacher): per pixel ``p = softmax(z/τ)`` as the rows of
    an (N·h·w)×K matrix; loss ``= τ²·[β(1 − mean_rows pearson(p_s, p_t)) +
    γ(1 − mean_cols pearson(p_s, p_t))]`` (inter-class relation over the rows, intra-class
    relation over the class columns; the τ² factor is the reference code's)."""
    _check_temperature(temperature, "dist")
    s, t = _align(z_s, z_t, "dist")
    k = t.shape[1]
    ps = F.softmax(s / temperature, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    pt = F.softmax(t / temperature, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    inter = 1.0 - _pearson_rows(ps, pt).mean()
    intra = 1.0 - _pearson_rows(ps.t(), pt.t()).mean()
    return (temperature**2) * (beta * inter + gamma * intra)
