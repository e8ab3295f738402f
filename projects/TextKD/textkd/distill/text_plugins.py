"""Text-assisted distillation plugins: Text-Channel (TCD) and Text-Region (TRD) distillation.

METHODS.md section 2. A frozen K×D text bank ``T̂`` (unit rows, see ``textkd.text``) defines a
text space. The teacher probe ``g_t`` (1×1 conv C_t→D) and the student projector ``g_s``
(1×1 conv → BN → ReLU → 1×1 conv, C_s→hidden→D) map penultimate decoder features into it:

    Z = normalize_D(g(f)),      S_k(i) = ⟨Z_i, t̂_k⟩ / τ_s      (τ_s = 0.07, K "text channels")

The teacher probe is anchored by a ground-truth cross-entropy on ``upsample(S_t)`` computed over
``sg(f_t)``; the distillation losses only see ``sg(S_t)`` and ``sg(Z_t)``, so the probe receives
gradient from its CE alone and the teacher none at all.

* TCD (:func:`tcd_loss`): CWD on the text channels (``"spatial"``), or a per-pixel softmax over
  the K texts (``"class"``), or MSE on the score maps (``"mse"``).
* TRD (:func:`trd_loss`): teacher soft regions ``M_k = softmax_k(S_t/τ_r)``, region prototypes
  ``R_k = normalize(Σ_i M_k(i) Z_i / m_k)`` for both models with the same masks, region-to-text
  affinities ``q_k = softmax_j(⟨R_k, t̂_j⟩/τ_a)``, area-weighted KL. Option
  (:func:`trd_mimic_loss`): masked feature mimicking inside the text regions.

Everything here is pure PyTorch (no detectron2), vectorised over images, classes and pixels, and
used at training time only: :class:`TextDistiller` is never part of the deployed student.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.outputs import SegOutput
from .base import TermContext, TrainingTerm
from .losses import channel_wise_divergence, check_labels, resize_to_teacher

logger = logging.getLogger(__name__)

__all__ = [
    "TCD_MODES",
    "PROBE_MODES",
    "text_scores",
    "text_regions",
    "region_weights",
    "tcd_loss",
    "trd_loss",
    "trd_mimic_loss",
    "text_probe_ce",
    "TextDistiller",
]

TCD_MODES = ("spatial", "class", "mse")
PROBE_MODES = ("joint", "pretrain")
_MASS_EPS = 1e-6


# ----------------------------------------------------------------------------- helpers
def _check_map(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name}: expected an N×C×h×w tensor, got {shape}")


def _resize_to(x: torch.Tensor, ref: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinearly resize ``x`` (N×C×h×w) to ``ref``'s spatial size when they differ."""
    return resize_to_teacher(x, ref, align_corners)


def _check_pair(s: torch.Tensor, t: torch.Tensor, name: str, same_channels: bool = True) -> None:
    _check_map(s, f"{name} (student)")
    _check_map(t, f"{name} (teacher)")
    if s.shape[0] != t.shape[0] or (same_channels and s.shape[1] != t.shape[1]):
        raise ValueError(
            f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} do not match "
            "(batch size and channels must agree)"
        )


def _check_temperature(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def text_scores(z: torch.Tensor, text: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Text-score maps ``S_k(i) = ⟨Z_i, t̂_k⟩ / τ_s`` for an N×D×h×w embedding map and a K×D
    bank (rows used as given): N×K×h×w."""
    _check_map(z, "text_scores")
    if text.dim() != 2 or text.shape[1] != z.shape[1]:
        raise ValueError(
            f"text_scores: text bank {tuple(text.shape)} does not match embedding dim {z.shape[1]}"
        )
    _check_temperature(temperature, "score temperature")
    return torch.einsum("ndhw,kd->nkhw", z, text.to(z.dtype)) / temperature


def text_regions(t_scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Teacher soft text regions ``M_k(i) = softmax_k(S_t(i)/τ_r)`` (detached), N×K×h×w."""
    _check_map(t_scores, "text_regions")
    _check_temperature(temperature, "region temperature")
    return torch.softmax(t_scores.detach().float() / temperature, dim=1)


def region_weights(mass: torch.Tensor, min_mass: float = 1.0) -> torch.Tensor:
    """Area weights ``w_k = m_k·[m_k > min_mass] / Σ_j m_j·[m_j > min_mass]`` per image (N×K);
    an image without any kept region gets all-zero weights."""
    kept = mass * (mass > min_mass).to(mass.dtype)
    total = kept.sum(dim=1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(_MASS_EPS), torch.zeros_like(kept))


def text_probe_ce(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ignore_label: int = 255,
    align_corners: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``upsample(S)`` (bilinear to the label size, with ``align_corners``)
    against the labels, ignoring ``ignore_label``; 0 (still attached to the graph) when every
    pixel is ignored."""
    if targets.dim() != 3 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"targets must be N×H×W with N={scores.shape[0]}, got {tuple(targets.shape)}"
        )
    check_labels(targets, scores.shape[1], ignore_label)
    logits = scores.float()
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(
            logits, size=targets.shape[-2:], mode="bilinear", align_corners=align_corners
        )
    if not bool((targets != ignore_label).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets.long(), ignore_index=ignore_label)


# ----------------------------------------------------------------------------- functional losses
def tcd_loss(
    s_scores: torch.Tensor,
    t_scores: torch.Tensor,
    temperature: float = 4.0,
    mode: str = "spatial",
    align_corners: bool = False,
) -> torch.Tensor:
    """Text-channel distillation between student and teacher score maps (N×K×h×w; the teacher is
    detached, the student bilinearly resized to the teacher's size).

    * ``"spatial"``: CWD, ``τ²/(N·K) · Σ_{n,k} KL(softmax_hw(S_t/τ) ‖ softmax_hw(S_s/τ))``
      (:func:`textkd.distill.losses.channel_wise_divergence`);
    * ``"class"``: per pixel softmax over the K texts, ``τ² · mean_{n,i} KL(p_t(i) ‖ p_s(i))``;
    * ``"mse"``: ``mean((S_s − S_t)²)``.
    """
    if mode not in TCD_MODES:
        raise ValueError(f"TCD mode '{mode}' is not one of {TCD_MODES}")
    _check_pair(s_scores, t_scores, "tcd_loss")
    _check_temperature(temperature, "TCD temperature")
    t = t_scores.detach()
    if mode == "spatial":
        return channel_wise_divergence(_resize_to(s_scores, t, align_corners), t, temperature)
    with torch.autocast(device_type=s_scores.device.type, enabled=False):
        s = _resize_to(s_scores.float(), t, align_corners)
        t = t.float()
        if mode == "mse":
            return F.mse_loss(s, t)
        log_ps = F.log_softmax(s / temperature, dim=1)
        log_pt = F.log_softmax(t / temperature, dim=1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # N×h×w
        return kl.mean() * temperature**2


def trd_loss(
    z_s: torch.Tensor,
    z_t: torch.Tensor,
    t_scores: torch.Tensor,
    text: torch.Tensor,
    region_temperature: float = 1.0,
    affinity_temperature: float = 0.07,
    min_mass: float = 1.0,
    align_corners: bool = False,
) -> torch.Tensor:
    """Text-region distillation.

    ``M = softmax_k(sg(S_t)/τ_r)``, ``m_k = Σ_i M_k(i)``; prototypes
    ``R_k = normalize(Σ_i M_k(i) Z_i / m_k)`` for the student (``z_s``, resized to the teacher's
    size) and the teacher (``sg(z_t)``) with the same masks; ``q_k = softmax_j(⟨R_k, t̂_j⟩/τ_a)``;
    ``L = mean_n Σ_k w_k KL(q_t,k ‖ q_s,k)`` with ``w`` from :func:`region_weights` (area weights
    over the regions of mass > ``min_mass``, summing to 1 per image).
    """
    _check_pair(z_s, z_t, "trd_loss")
    _check_map(t_scores, "trd_loss (teacher scores)")
    if t_scores.shape[0] != z_t.shape[0] or t_scores.shape[-2:] != z_t.shape[-2:]:
        raise ValueError(
            f"trd_loss: teacher scores {tuple(t_scores.shape)} and teacher embeddings "
            f"{tuple(z_t.shape)} must share batch and spatial size"
        )
    if text.dim() != 2 or text.shape != (t_scores.shape[1], z_t.shape[1]):
        raise ValueError(
            f"trd_loss: text bank {tuple(text.shape)} must be K×D = "
            f"{(t_scores.shape[1], z_t.shape[1])}"
        )
    _check_temperature(affinity_temperature, "TRD affinity temperature")
    with torch.autocast(device_type=z_s.device.type, enabled=False):
        masks = text_regions(t_scores, region_temperature).flatten(2)  # N×K×P
        mass = masks.sum(dim=2)  # N×K
        zs = _resize_to(z_s.float(), z_t, align_corners).flatten(2)  # N×D×P
        zt = z_t.detach().float().flatten(2)
        denom = mass.clamp_min(_MASS_EPS).unsqueeze(-1)
        proto_s = F.normalize(torch.bmm(masks, zs.transpose(1, 2)) / denom, dim=-1)  # N×K×D
        proto_t = F.normalize(torch.bmm(masks, zt.transpose(1, 2)) / denom, dim=-1)
        text_f = text.float()
        log_qs = F.log_softmax(
            torch.einsum("nkd,jd->nkj", proto_s, text_f) / affinity_temperature, -1
        )
        log_qt = F.log_softmax(
            torch.einsum("nkd,jd->nkj", proto_t, text_f.detach()) / affinity_temperature, -1
        ).detach()
        kl = (log_qt.exp() * (log_qt - log_qs)).sum(dim=-1)  # N×K
        weights = region_weights(mass, min_mass)
        return (weights * kl).sum(dim=1).mean()


def trd_mimic_loss(
    f_s_adapted: torch.Tensor,
    f_t: torch.Tensor,
    masks: torch.Tensor,
    align_corners: bool = False,
) -> torch.Tensor:
    """Masked feature mimicking inside the text regions:
    ``½ · mean_{n,k,c} Σ_i M_k(i) (A(f_s)(i) − f_t(i))² / Σ_i M_k(i)``, with the adapted student
    feature resized to the teacher's size and the teacher and masks detached."""
    _check_pair(f_s_adapted, f_t, "trd_mimic_loss")
    _check_map(masks, "trd_mimic_loss (masks)")
    if masks.shape[0] != f_t.shape[0] or masks.shape[-2:] != f_t.shape[-2:]:
        raise ValueError(
            f"trd_mimic_loss: masks {tuple(masks.shape)} must share batch and spatial size with "
            f"the teacher feature {tuple(f_t.shape)}"
        )
    with torch.autocast(device_type=f_t.device.type, enabled=False):
        s = _resize_to(f_s_adapted.float(), f_t, align_corners).flatten(2)  # N×C×P
        diff2 = (s - f_t.detach().float().flatten(2)).pow(2)
        m = masks.detach().float().flatten(2)  # N×K×P
        per_region = torch.bmm(m, diff2.transpose(1, 2))  # N×K×C
        per_region = per_region / m.sum(dim=2, keepdim=True).clamp_min(_MASS_EPS)
        return 0.5 * per_region.mean()


# ----------------------------------------------------------------------------- module
class TextDistiller(TrainingTerm):
    """TCD / TRD plugin: maps (student feature, teacher feature, labels) to named losses.

    A training term (:class:`~textkd.distill.base.TrainingTerm`) configured by the ``MODEL``
    subtree (``DISTILL.TCD``, ``DISTILL.TRD``, ``DISTILL.TEXT``, ``TEXT_BANK.SOURCE``) through
    :meth:`from_config`; ``forward`` takes the two models' ``SegOutput`` records and reads their
    ``input`` output (``MODEL.DISTILL.TEXT.INPUT``), or the two feature tensors directly.

    Holds the text bank (a frozen buffer, a Parameter only when ``learnable_text``), the teacher
    probe (1×1 conv C_t→D, trained only by its ground-truth CE on ``sg(f_t)``), the student
    projector (1×1 conv → BN → ReLU → 1×1 conv) and, for the mimic option, a 1×1 adapter
    C_s→C_t. Only modules that a non-zero weight needs are built. Training-time only.

    ``probe_mode="joint"``: the probe CE and the distillation losses run together.
    ``probe_mode="pretrain"``: while ``iteration < probe_pretrain_iters`` only the probe CE runs
    (TCD/TRD report 0); from then on the probe is frozen (``requires_grad=False``, no CE) and
    TCD/TRD are on.
    """

    def __init__(
        self,
        text_embeddings: torch.Tensor,
        student_channels: int,
        teacher_channels: int,
        tcd_weight: float = 0.0,
        tcd_temperature: float = 4.0,
        tcd_mode: str = "spatial",
        trd_weight: float = 0.0,
        trd_region_temperature: float = 1.0,
        trd_affinity_temperature: float = 0.07,
        trd_min_mass: float = 1.0,
        trd_mimic_weight: float = 0.0,
        probe_weight: float = 1.0,
        student_align_weight: float = 0.0,
        score_temperature: float = 0.07,
        proj_hidden: int = 256,
        learnable_text: bool = False,
        probe_mode: str = "joint",
        probe_pretrain_iters: int = 0,
        ignore_label: int = 255,
        input: str = "feature",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.input = str(input)
        # the student's MODEL.SEM_SEG_HEAD.ALIGN_CORNERS: student feature -> teacher size and
        # score maps -> label size
        self.align_corners = bool(align_corners)
        if not torch.is_tensor(text_embeddings) or text_embeddings.dim() != 2:
            raise ValueError(
                f"text_embeddings must be a K×D tensor, got "
                f"{tuple(text_embeddings.shape) if torch.is_tensor(text_embeddings) else text_embeddings!r}"
            )
        if tcd_mode not in TCD_MODES:
            raise ValueError(f"tcd_mode '{tcd_mode}' is not one of {TCD_MODES}")
        if probe_mode not in PROBE_MODES:
            raise ValueError(f"probe_mode '{probe_mode}' is not one of {PROBE_MODES}")
        for name, value in (
            ("tcd_temperature", tcd_temperature),
            ("trd_region_temperature", trd_region_temperature),
            ("trd_affinity_temperature", trd_affinity_temperature),
            ("score_temperature", score_temperature),
        ):
            _check_temperature(value, name)
        for name, value in (
            ("tcd_weight", tcd_weight),
            ("trd_weight", trd_weight),
            ("trd_mimic_weight", trd_mimic_weight),
            ("probe_weight", probe_weight),
            ("student_align_weight", student_align_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if student_channels <= 0 or teacher_channels <= 0 or proj_hidden <= 0:
            raise ValueError(
                f"channels must be positive: student {student_channels}, teacher "
                f"{teacher_channels}, proj_hidden {proj_hidden}"
            )

        text = F.normalize(text_embeddings.detach().float(), dim=1)
        self.num_classes, self.text_dim = int(text.shape[0]), int(text.shape[1])
        self.learnable_text = bool(learnable_text)
        if self.learnable_text:
            self.text = nn.Parameter(text.clone())
        else:
            self.register_buffer("text", text.clone())

        self.tcd_weight = float(tcd_weight)
        self.tcd_temperature = float(tcd_temperature)
        self.tcd_mode = tcd_mode
        self.trd_weight = float(trd_weight)
        self.trd_region_temperature = float(trd_region_temperature)
        self.trd_affinity_temperature = float(trd_affinity_temperature)
        self.trd_min_mass = float(trd_min_mass)
        self.trd_mimic_weight = float(trd_mimic_weight)
        self.probe_weight = float(probe_weight)
        self.student_align_weight = float(student_align_weight)
        self.score_temperature = float(score_temperature)
        self.probe_mode = probe_mode
        self.probe_pretrain_iters = int(probe_pretrain_iters)
        self.ignore_label = int(ignore_label)

        needs_teacher = self.tcd_weight > 0 or self.trd_weight > 0 or self.trd_mimic_weight > 0
        needs_student = self.tcd_weight > 0 or self.trd_weight > 0 or self.student_align_weight > 0
        self.teacher_probe = (
            nn.Conv2d(teacher_channels, self.text_dim, 1) if needs_teacher else None
        )
        self.student_proj = (
            nn.Sequential(
                nn.Conv2d(student_channels, proj_hidden, 1, bias=False),
                nn.BatchNorm2d(proj_hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(proj_hidden, self.text_dim, 1),
            )
            if needs_student
            else None
        )
        self.mimic_adapter = (
            nn.Conv2d(student_channels, teacher_channels, 1) if self.trd_mimic_weight > 0 else None
        )
        if needs_teacher and self.probe_weight == 0:
            logger.warning(
                "TextDistiller: probe_weight is 0, the teacher probe stays at its random init"
            )
        if needs_teacher and probe_mode == "pretrain" and self.probe_pretrain_iters <= 0:
            logger.warning(
                "TextDistiller: probe_mode 'pretrain' with probe_pretrain_iters <= 0 freezes the "
                "teacher probe at its random init"
            )
        if not (needs_teacher or needs_student):
            logger.warning("TextDistiller: every text-plugin weight is 0; it adds no loss")

    @classmethod
    def from_config(cls, node: Mapping[str, Any], context: TermContext) -> TextDistiller | None:
        """The plugin configured by the ``MODEL`` subtree ``node``, or None when the TCD, TRD
        and mimic weights are all 0. The text bank comes from ``context.text_embeddings()``."""
        d = node["DISTILL"]
        tcd, trd, text = d["TCD"], d["TRD"], d["TEXT"]
        if not (tcd["WEIGHT"] > 0 or trd["WEIGHT"] > 0 or trd["MIMIC_WEIGHT"] > 0):
            return None
        name = text["INPUT"]
        if name not in context.teacher_channels:
            raise ValueError(
                f"MODEL.DISTILL.TEXT.INPUT={name!r}: the teacher has no such output "
                f"(available: {list(context.teacher_channels)}); a detectron2 teacher records "
                "its feature from MODEL.DISTILL.TEACHER.FEATURE_MODULE"
            )
        if context.text_embeddings is None:
            raise ValueError("the text plugins (TCD/TRD) need a text bank, but none was given")
        term = cls(
            context.text_embeddings(),
            student_channels=context.student_channels[name],
            teacher_channels=context.teacher_channels[name],
            tcd_weight=tcd["WEIGHT"],
            tcd_temperature=tcd["TEMPERATURE"],
            tcd_mode=tcd["MODE"],
            trd_weight=trd["WEIGHT"],
            trd_region_temperature=trd["REGION_TEMPERATURE"],
            trd_affinity_temperature=trd["AFFINITY_TEMPERATURE"],
            trd_min_mass=trd["MIN_MASS"],
            trd_mimic_weight=trd["MIMIC_WEIGHT"],
            probe_weight=text["PROBE_WEIGHT"],
            student_align_weight=text["STUDENT_ALIGN_WEIGHT"],
            score_temperature=text["SCORE_TEMPERATURE"],
            proj_hidden=text["PROJ_HIDDEN"],
            learnable_text=node["TEXT_BANK"]["SOURCE"] == "learnable",
            probe_mode=text["PROBE_MODE"],
            probe_pretrain_iters=text["PROBE_PRETRAIN_ITERS"],
            ignore_label=context.ignore_label,
            input=name,
            align_corners=context.align_corners,
        )
        if context.sync_bn:
            # the student projector's BN follows the configured norm, like the student
            term = nn.SyncBatchNorm.convert_sync_batchnorm(term)
        return term

    # ------------------------------------------------------------------ helpers
    def text_bank(self) -> torch.Tensor:
        """The unit-norm text bank ``T̂`` (K×D) as used by the losses."""
        return F.normalize(self.text, dim=1)

    def probe_phase(self, iteration: int | None) -> bool:
        """True while the teacher probe is trained by its CE (always in ``"joint"`` mode; while
        ``iteration < probe_pretrain_iters`` in ``"pretrain"`` mode)."""
        if self.probe_mode == "joint":
            return True
        if iteration is None:
            raise ValueError("TextDistiller: probe_mode 'pretrain' needs the training iteration")
        return int(iteration) < self.probe_pretrain_iters

    def distill_phase(self, iteration: int | None) -> bool:
        """True when TCD/TRD are on (always in ``"joint"`` mode; after the probe pretraining)."""
        return self.probe_mode == "joint" or not self.probe_phase(iteration)

    def _freeze_probe(self) -> None:
        if self.teacher_probe is None:
            return
        for p in self.teacher_probe.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                p.grad = None

    def embed_teacher(self, f_t: torch.Tensor) -> torch.Tensor:
        """``Z_t = normalize_D(g_t(sg(f_t)))``, N×D×h×w."""
        if self.teacher_probe is None:
            raise RuntimeError("TextDistiller has no teacher probe (TCD/TRD weights are 0)")
        return F.normalize(self.teacher_probe(f_t.detach()), dim=1)

    def embed_student(self, f_s: torch.Tensor) -> torch.Tensor:
        """``Z_s = normalize_D(g_s(f_s))``, N×D×h×w."""
        if self.student_proj is None:
            raise RuntimeError("TextDistiller has no student projector (its weights are 0)")
        return F.normalize(self.student_proj(f_s), dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        f_s: torch.Tensor | SegOutput,
        f_t: torch.Tensor | SegOutput,
        targets: torch.Tensor | None = None,
        iteration: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named losses (each already multiplied by its weight, present only when its weight is
        > 0): ``loss_text_probe``, ``loss_tcd``, ``loss_trd``, ``loss_trd_mimic``,
        ``loss_text_align``. Outside their phase (probe pretraining) TCD/TRD/mimic are 0 and,
        once the probe is frozen, ``loss_text_probe`` is a constant 0. ``f_s``/``f_t`` are the
        feature maps, or the models' ``SegOutput`` records (their ``input`` output is used)."""
        if isinstance(f_s, SegOutput):
            f_s = f_s.get(self.input)
        if isinstance(f_t, SegOutput):
            f_t = f_t.get(self.input)
        _check_map(f_s, "TextDistiller (student feature)")
        _check_map(f_t, "TextDistiller (teacher feature)")
        if f_s.shape[0] != f_t.shape[0]:
            raise ValueError(
                f"TextDistiller: batch sizes differ: student {tuple(f_s.shape)}, teacher "
                f"{tuple(f_t.shape)}"
            )
        f_t = f_t.detach()
        text = self.text_bank()
        losses: dict[str, torch.Tensor] = {}
        probe_on = self.probe_phase(iteration)
        distill_on = self.distill_phase(iteration)
        needs_labels = (self.teacher_probe is not None and probe_on and self.probe_weight > 0) or (
            self.student_align_weight > 0
        )
        if needs_labels and targets is None:
            raise ValueError("TextDistiller: the probe / alignment CE needs ground-truth targets")

        s_scores_t = z_t = None
        if self.teacher_probe is not None:
            if not probe_on:
                self._freeze_probe()
            with torch.set_grad_enabled(torch.is_grad_enabled() and probe_on):
                z_t = self.embed_teacher(f_t)
                s_scores_t = text_scores(z_t, text, self.score_temperature)
            if probe_on and self.probe_weight > 0:
                ce = text_probe_ce(s_scores_t, targets, self.ignore_label, self.align_corners)
                losses["loss_text_probe"] = ce * self.probe_weight
            elif self.probe_weight > 0:
                losses["loss_text_probe"] = f_t.new_zeros(())
            s_scores_t, z_t = s_scores_t.detach(), z_t.detach()

        z_s = s_scores = None
        if self.student_proj is not None:
            z_s = self.embed_student(f_s)
            s_scores = text_scores(z_s, text, self.score_temperature)

        if self.tcd_weight > 0:
            if distill_on:
                tcd = tcd_loss(
                    s_scores, s_scores_t, self.tcd_temperature, self.tcd_mode, self.align_corners
                )
            else:
                tcd = s_scores.sum() * 0.0
            losses["loss_tcd"] = tcd * self.tcd_weight
        if self.trd_weight > 0:
            if distill_on:
                trd = trd_loss(
                    z_s,
                    z_t,
                    s_scores_t,
                    text,
                    self.trd_region_temperature,
                    self.trd_affinity_temperature,
                    self.trd_min_mass,
                    self.align_corners,
                )
            else:
                trd = z_s.sum() * 0.0
            losses["loss_trd"] = trd * self.trd_weight
        if self.trd_mimic_weight > 0:
            adapted = self.mimic_adapter(f_s)
            if distill_on:
                masks = text_regions(s_scores_t, self.trd_region_temperature)
                mimic = trd_mimic_loss(adapted, f_t, masks, self.align_corners)
            else:
                mimic = adapted.sum() * 0.0
            losses["loss_trd_mimic"] = mimic * self.trd_mimic_weight
        if self.student_align_weight > 0:
            align = text_probe_ce(s_scores, targets, self.ignore_label, self.align_corners)
            losses["loss_text_align"] = align * self.student_align_weight
        return losses

    def extra_repr(self) -> str:
        return (
            f"K={self.num_classes}, D={self.text_dim}, learnable_text={self.learnable_text}, "
            f"tcd={self.tcd_weight}({self.tcd_mode}, τ={self.tcd_temperature}), "
            f"trd={self.trd_weight}, mimic={self.trd_mimic_weight}, probe={self.probe_weight}"
            f"({self.probe_mode}), align={self.student_align_weight}"
        )
