"""The holistic adversarial term of CIRKD's recipes (framework-free; no detectron2 import).

CIRKD trains CWD, SKD and IFVD as KD + the method + an adversarial term on the segmentation maps
(``train_kd.py`` of winycg/CIRKD with ``--lambda-adv 0.001 --lambda-d 0.1``): a SAGAN-style
discriminator D looks at the raw logits (N×K×h×w at the model's output stride, no softmax, no
resize; its first layer is a BatchNorm over the K channels); the teacher's maps are "real", the
student's "fake".

* generator term (added to the student's loss): ``loss_adv = WEIGHT · (−mean D(student))``;
* discriminator loss (D's own Adam step, logged as ``d_loss_adv``, never added to the student's
  loss): ``D_WEIGHT · (mean relu(1 − D(teacher)) + mean relu(1 + D(student)))`` for
  ``LOSS "hinge"`` (what ``train_kd.py`` uses), or ``D_WEIGHT · (−mean D(teacher) + mean
  D(student)) + GP_WEIGHT · mean (‖∇D(x̂)‖₂ − 1)²`` for ``LOSS "wgan-gp"``, x̂ = α·teacher +
  (1 − α)·student with one α ~ U[0, 1) per image drawn from torch's generator (which the trainer
  seeds per step from (seed, iteration, rank)).

Order within one iteration, as ``train_kd.py``: D(student) for the generator term, then
D(student.detach()) and D(teacher) for D's loss, all with D's weights *before* its update; the
student's step uses the generator gradient of that pre-update D; D then takes its Adam step
(lr 4e-4, betas (0.9, 0.99), constant) on the maps of the same forward. :func:`compose_losses`
calls :meth:`~HolisticAdversarial.extra_step` *before* :meth:`~HolisticAdversarial.forward`, so
``extra_step`` evaluates the generator output first, with a detached copy of D's parameters
(the graph then reaches the student's maps only: no generator gradient can reach D, and D's
in-place update cannot invalidate the student's backward), then runs D's step; ``forward``
returns the weighted generator loss of that output. Every forward of D (three per iteration,
as in the reference) updates its BatchNorm statistics and its spectral-norm vectors, in the
reference's order.

Distributed training: D's parameters are left out of the main optimizer and of the student's
DDP (``own_parameters``); the term broadcasts D's state from rank 0 at its first step, averages
D's gradients over the ranks before each step (what DDP does for the reference's D) and
broadcasts D's buffers after it, so D is identical on every rank. Its optimizer is
:meth:`own_optimizer`, saved with training checkpoints by the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import TermContext, TrainingTerm

__all__ = [
    "LOSSES",
    "SpectralNormConv2d",
    "SelfAttention",
    "Discriminator",
    "HolisticAdversarial",
    "adversarial_problems",
    "hinge_d_loss",
    "wgan_d_loss",
    "generator_loss",
    "gradient_penalty",
]

#: discriminator losses: ``hinge`` (CIRKD's train_kd.py) and ``wgan-gp``
LOSSES = ("hinge", "wgan-gp")
#: spatial size the discriminator needs: four stride-2 convolutions, then a 4×4 one
MIN_D_INPUT = 64
_EPS = 1e-12  # the power iteration's normalisation: v / (‖v‖ + eps), as SAGAN's l2normalize


def _l2_normalize(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm() + _EPS)


class SpectralNormConv2d(nn.Module):
    """A convolution whose weight is divided by an estimate of its largest singular value, with
    one power-iteration step per forward (in training and evaluation alike, like SAGAN's
    ``SpectralNorm``). ``weight`` (the unnormalised weight) and ``bias`` are parameters, the
    singular vectors ``u`` (out channels) and ``v`` (in·k·k) buffers."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, padding=0):
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.stride, self.padding = conv.stride, conv.padding
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.register_buffer("u", _l2_normalize(torch.randn(out_channels)))
        self.register_buffer("v", _l2_normalize(torch.randn(conv.weight[0].numel())))

    def normalized_weight(self) -> torch.Tensor:
        """``weight / σ``, ``σ = uᵀ W v`` after one power-iteration step (which updates ``u`` and
        ``v``). As in SAGAN's code, ``u`` and ``v`` are updated behind autograd's back (the
        reference assigns ``.data``): the backward of ``σ`` uses the vectors as they are *when
        the backward runs*, i.e. after every later forward of the same iteration. The
        reference's discriminator gradients depend on this, so it is kept."""
        w = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = _l2_normalize(torch.mv(w.t(), self.u))
            u = _l2_normalize(torch.mv(w, v))
            self.u.data.copy_(u)  # no version bump: earlier graphs see the new vectors
            self.v.data.copy_(v)
        sigma = torch.dot(self.u, torch.mv(w, self.v))  # u, v constants; gradient through w
        return self.weight / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding)


class SelfAttention(nn.Module):
    """SAGAN self-attention: ``γ · V·softmax(QᵀK)ᵀ + x`` over the h·w positions, Q and K with
    C/8 channels, γ initialised to 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # N × hw × C/8
        k = self.key(x).flatten(2)  # N × C/8 × hw
        attention = torch.softmax(torch.bmm(q, k), dim=-1)  # N × hw × hw
        out = torch.bmm(self.value(x).flatten(2), attention.transpose(1, 2))
        return self.gamma * out.view(n, c, h, w) + x


class Discriminator(nn.Module):
    """The reference's discriminator on K-channel maps: BatchNorm over the input channels, four
    spectral-normalised 4×4 stride-2 convolutions (width c, 2c, 4c, 8c; LeakyReLU 0.1) with
    self-attention after the third and the fourth, and a plain 4×4 convolution to one channel.
    Returns the N×1×h'×w' score map (h' = h/16 − 3); needs maps of at least 64×64."""

    def __init__(self, in_channels: int, channels: int = 64, sync_bn: bool = False):
        super().__init__()
        if channels < 2:
            raise ValueError(
                f"discriminator width must be >= 2 (its attention uses C/8), got {channels}"
            )
        self.norm = (nn.SyncBatchNorm if sync_bn else nn.BatchNorm2d)(in_channels)
        c = channels
        self.conv1 = SpectralNormConv2d(in_channels, c, 4, 2, 1)
        self.conv2 = SpectralNormConv2d(c, 2 * c, 4, 2, 1)
        self.conv3 = SpectralNormConv2d(2 * c, 4 * c, 4, 2, 1)
        self.attn1 = SelfAttention(4 * c)
        self.conv4 = SpectralNormConv2d(4 * c, 8 * c, 4, 2, 1)
        self.attn2 = SelfAttention(8 * c)
        self.last = nn.Conv2d(8 * c, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < MIN_D_INPUT:
            raise ValueError(
                f"the discriminator needs maps of at least {MIN_D_INPUT}×{MIN_D_INPUT}, got "
                f"{tuple(x.shape[-2:])}: train on larger crops (logits at stride 8 need crops >= "
                f"{8 * MIN_D_INPUT}) or set MODEL.DISTILL.ADVERSARIAL.MIN_INPUT_SIZE to "
                f"{MIN_D_INPUT} to upsample smaller maps"
            )
        x = self.norm(x)
        x = F.leaky_relu(self.conv1(x), 0.1)
        x = F.leaky_relu(self.conv2(x), 0.1)
        x = self.attn1(F.leaky_relu(self.conv3(x), 0.1))
        x = self.attn2(F.leaky_relu(self.conv4(x), 0.1))
        return self.last(x)


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """The student's adversarial loss ``−mean D(student)`` (hinge and WGAN alike)."""
    return -d_fake.mean()


def hinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``mean relu(1 − D(real)) + mean relu(1 + D(fake))``."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def wgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``−mean D(real) + mean D(fake)``."""
    return -d_real.mean() + d_fake.mean()


def gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """``mean over images of (‖∇ₓD(x̂)‖₂ − 1)²`` at ``x̂ = α·real + (1 − α)·fake`` (both
    detached; ``alpha`` N×1×1×1), differentiable in D's parameters."""
    x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = discriminator(x)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
    norm = torch.sqrt(torch.sum(grad.flatten(1) ** 2, dim=1))
    return torch.mean((norm - 1) ** 2)


def adversarial_problems(node: Mapping[str, Any], prefix: str, weights: bool = True) -> list[str]:
    """What is wrong with an ``ADVERSARIAL`` config node, each naming its key; ``weights``: also
    check the loss weights (:func:`textkd.validate.number_problems` checks them with every
    ``*WEIGHT`` key of a full config)."""
    problems = []
    try:
        lr = float(node["D_LR"])
    except (TypeError, ValueError):
        lr = float("nan")
    if not lr > 0 or lr == float("inf"):
        problems.append(
            f"{prefix}.D_LR is {node['D_LR']!r}: the discriminator's learning rate must be a finite number > 0"
        )
    betas = node["D_BETAS"]
    if (
        not isinstance(betas, (list, tuple))
        or len(betas) != 2
        or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
    ):
        problems.append(f"{prefix}.D_BETAS is {betas!r}: Adam's betas are two numbers in [0, 1)")
    if not isinstance(node["D_CHANNELS"], int) or node["D_CHANNELS"] < 2:
        problems.append(
            f"{prefix}.D_CHANNELS is {node['D_CHANNELS']!r}: an integer >= 2 (reference 64)"
        )
    if node["LOSS"] not in LOSSES:
        problems.append(f"{prefix}.LOSS is {node['LOSS']!r}: one of {list(LOSSES)}")
    if not isinstance(node["MIN_INPUT_SIZE"], int) or node["MIN_INPUT_SIZE"] < 0:
        problems.append(
            f"{prefix}.MIN_INPUT_SIZE is {node['MIN_INPUT_SIZE']!r}: an integer >= 0 (0: no resize)"
        )
    if node["INPUT"] not in ("logits", "aux_logits"):
        problems.append(
            f"{prefix}.INPUT is {node['INPUT']!r}: 'logits' (the reference) or 'aux_logits'"
        )
    for key in ("WEIGHT", "D_WEIGHT", "GP_WEIGHT") if weights else ():
        try:
            bad = not float(node[key]) >= 0
        except (TypeError, ValueError):
            bad = True
        if bad:
            problems.append(f"{prefix}.{key} is {node[key]!r}: a loss weight must be >= 0")
    return problems


class HolisticAdversarial(TrainingTerm):
    """CIRKD's holistic adversarial term (see the module docstring).

    Args:
        num_classes: channels of the maps D sees.
        weight: λ_adv of the generator term (reference 0.001).
        d_weight: λ_d of the discriminator loss (reference 0.1).
        gp_weight: weight of the gradient penalty (``wgan-gp`` only; train_kd.py uses none).
        loss: ``"hinge"`` (train_kd.py) or ``"wgan-gp"``.
        d_lr, d_betas: D's Adam (reference 4e-4, (0.9, 0.99), constant learning rate).
        d_channels: D's width (reference 64).
        input_name: the output D sees (``logits``).
        min_input_size: maps smaller than this (per side) are bilinearly upsampled to it before
            D (0: never, the reference; D needs 64).
        sync_bn: D's input BatchNorm is a SyncBatchNorm (the reference's under DDP).
    """

    def __init__(
        self,
        num_classes: int,
        weight: float = 0.001,
        d_weight: float = 0.1,
        gp_weight: float = 0.0,
        loss: str = "hinge",
        d_lr: float = 4e-4,
        d_betas: tuple[float, float] = (0.9, 0.99),
        d_channels: int = 64,
        input_name: str = "logits",
        min_input_size: int = 0,
        sync_bn: bool = False,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"adversarial loss {loss!r} is not one of {list(LOSSES)}")
        self.weight = float(weight)
        self.d_weight = float(d_weight)
        self.gp_weight = float(gp_weight)
        self.loss = loss
        self.input_name = input_name
        self.min_input_size = int(min_input_size)
        self.discriminator = Discriminator(num_classes, d_channels, sync_bn=sync_bn)
        self.d_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=float(d_lr), betas=tuple(float(b) for b in d_betas)
        )
        self._pending: torch.Tensor | None = None  # D(student) of this step, for forward
        self._synced = False

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], context: TermContext
    ) -> HolisticAdversarial | None:
        problems = adversarial_problems(node, "MODEL.DISTILL.ADVERSARIAL")
        if problems:
            raise ValueError("; ".join(problems))
        if float(node["WEIGHT"]) == 0:
            return None
        return cls(
            context.num_classes,
            weight=float(node["WEIGHT"]),
            d_weight=float(node["D_WEIGHT"]),
            gp_weight=float(node["GP_WEIGHT"]),
            loss=node["LOSS"],
            d_lr=float(node["D_LR"]),
            d_betas=tuple(node["D_BETAS"]),
            d_channels=int(node["D_CHANNELS"]),
            input_name=node["INPUT"],
            min_input_size=int(node["MIN_INPUT_SIZE"]),
            sync_bn=context.sync_bn,
        )

    def own_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def own_optimizer(self) -> torch.optim.Optimizer:
        return self.d_optimizer

    # ------------------------------------------------------------------ helpers
    def d_input(self, out) -> torch.Tensor:
        """The map D sees: the named output, upsampled to ``min_input_size`` when smaller."""
        x = out.get(self.input_name)
        size = self.min_input_size
        if size and min(x.shape[-2:]) < size:
            h, w = x.shape[-2:]
            scale = size / min(h, w)
            target = (max(size, round(h * scale)), max(size, round(w * scale)))
            x = F.interpolate(x, target, mode="bilinear", align_corners=False)
        return x

    def d_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """D's weighted loss on detached maps (the gradient penalty's α from torch's generator)."""
        d_fake = self.discriminator(fake.detach())
        d_real = self.discriminator(real.detach())
        if self.loss == "hinge":
            return self.d_weight * hinge_d_loss(d_real, d_fake)
        loss = self.d_weight * wgan_d_loss(d_real, d_fake)
        if self.gp_weight:
            alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
            loss = loss + self.gp_weight * gradient_penalty(self.discriminator, real, fake, alpha)
        return loss

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @torch.no_grad()
    def _broadcast(self, tensors) -> None:
        for t in tensors:
            dist.broadcast(t, 0)

    # ------------------------------------------------------------------ the term
    def extra_step(self, student_out, teacher_out, targets=None, *, iteration=None):
        # D runs in float32 (as the reference) even inside the trainer's autocast
        with torch.autocast(student_out.logits.device.type, enabled=False):
            return self._step(student_out, teacher_out)

    def _step(self, student_out, teacher_out) -> dict[str, torch.Tensor]:
        fake = self.d_input(student_out).float()
        real = self.d_input(teacher_out).detach().float()
        distributed = self._distributed()
        if distributed and not self._synced:
            self._broadcast(
                list(self.discriminator.parameters()) + list(self.discriminator.buffers())
            )
        self._synced = True
        # 1. the generator's D output, with D's current (pre-step) weights detached
        frozen = {n: p.detach().clone() for n, p in self.discriminator.named_parameters()}
        self._pending = torch.func.functional_call(self.discriminator, frozen, (fake,))
        # 2. D's own step on the maps of this forward
        loss = self.d_loss(fake, real)
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed:
            world = dist.get_world_size()
            for p in self.discriminator.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
        self.d_optimizer.step()
        if distributed:
            self._broadcast(list(self.discriminator.buffers()))
        return {"d_loss_adv": loss.detach()}

    def forward(self, student_out, teacher_out=None, targets=None, *, iteration=None):
        d_fake, self._pending = self._pending, None
        if d_fake is None:  # no step of D ran before (evaluation): D as it is
            with torch.autocast(student_out.logits.device.type, enabled=False):
                d_fake = self.discriminator(self.d_input(student_out).float())
        return {"loss_adv": self.weight * generator_loss(d_fake)}
