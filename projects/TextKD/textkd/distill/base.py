"""One composition for every training-time term (framework-free; no detectron2 import).

A *training-time term* is a small ``nn.Module`` that maps model outputs picked by name to named
losses, the shape of mmrazor's distillers: the classic distillation terms
(:class:`~textkd.distill.terms.Distiller`), the text plugins TCD/TRD
(:class:`~textkd.distill.text_plugins.TextDistiller`) and LAD's dual-path consistency
(:class:`~textkd.distill.lad.LADConsistency`) are all :class:`TrainingTerm` subclasses. Each

* is built from its own config subtree by ``from_config(node, context)`` (``node`` is a plain
  mapping or a detectron2 ``CfgNode``, read with ``[]`` only; ``context`` the facts about the
  models a term needs), which returns ``None`` when the config switches the term off;
* computes ``forward(student_out, teacher_out, targets, iteration=...) -> {"loss_<name>": ...}``
  (each value already weighted);
* may own parameters and buffers (adapters, projectors, memory queues, a text bank); they train
  with the student and are saved in training checkpoints under the attribute name the model gives
  the term (``distiller.*``, ``text_distiller.*``), never exported with the student;
* may take an optimizer step of its own (a discriminator): see :meth:`TrainingTerm.extra_step`.

A model lists its terms once, as ``{attribute: (term class, config path)}`` (``DISTILL_TERMS``
in :mod:`textkd.d2.distill_arch`, ``LAD_TERMS`` in :mod:`textkd.d2.meta_arch`),
builds them with :func:`build_terms` and sums their losses with :func:`compose_losses`.

Example of a stateful term with its own optimizer step, the adversarial (output-map)
discriminator of the reference protocol. It fits this interface without changes to the
composition; the only caller-side duty is to leave ``own_parameters()`` out of the main
optimizer (:func:`own_parameter_ids`)::

    class AdversarialTerm(TrainingTerm):
        def __init__(self, num_classes, weight, lr):
            super().__init__()
            self.weight = weight
            self.discriminator = nn.Sequential(
                nn.Conv2d(num_classes, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(64, 1, 4, 2, 1)
            )
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr)

        @classmethod
        def from_config(cls, node, context):
            if float(node["WEIGHT"]) == 0:
                return None
            return cls(context.num_classes, float(node["WEIGHT"]), float(node["LR"]))

        def own_parameters(self):
            return list(self.discriminator.parameters())

        def extra_step(self, student_out, teacher_out, targets=None, *, iteration=None):
            # called by compose_losses before forward, in training only: one D update on
            # detached maps (teacher real, student fake) with the term's own optimizer
            real = self.discriminator(teacher_out.logits.detach())
            fake = self.discriminator(student_out.logits.detach())
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            self.d_optimizer.zero_grad()
            d_loss.backward()
            self.d_optimizer.step()
            return {"d_loss": d_loss.detach()}  # logged, not added to the student's loss

        def forward(self, student_out, teacher_out, targets=None, *, iteration=None):
            # the generator loss for the student; D's grads from it are cleared by its next
            # zero_grad and its parameters are not in the main optimizer
            return {"loss_adv": -self.weight * self.discriminator(student_out.logits).mean()}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "TermContext",
    "TrainingTerm",
    "config_subtree",
    "build_terms",
    "compose_losses",
    "own_parameter_ids",
]


@dataclass
class TermContext:
    """What a term may need to know about the models it is built for.

    ``student_channels`` / ``teacher_channels``: output name -> channel count (``None`` for an
    output a model lacks); ``text_embeddings``: a callable returning the K×D text bank (called
    only by terms that need it, so a run without text plugins never builds one); ``sync_bn``:
    whether BatchNorm layers of the term should be SyncBatchNorm, like the student's;
    ``align_corners``: the student's ``MODEL.SEM_SEG_HEAD.ALIGN_CORNERS``, with which a term
    bilinearly resizes a student map to the teacher's size (or to the labels); ``seed``: the
    run's seed (``SEED``) for terms that draw random choices identical on every rank (< 0: such a
    term draws one seed and shares it)."""

    num_classes: int
    ignore_label: int = 255
    student_channels: Mapping[str, int | None] = field(default_factory=dict)
    teacher_channels: Mapping[str, int | None] = field(default_factory=dict)
    text_embeddings: Callable[[], torch.Tensor] | None = None
    sync_bn: bool = False
    align_corners: bool = False
    seed: int = 0


class TrainingTerm(nn.Module):
    """Base class of a training-time term (see the module docstring).

    Subclasses implement :meth:`from_config` and :meth:`forward`; stateful terms register their
    parameters and buffers as usual; a term that trains something with its own optimizer
    overrides :meth:`own_parameters` and :meth:`extra_step`."""

    #: whether the term reads ``aux_logits`` (so the teacher must compute them)
    needs_aux: bool = False
    #: whether the term needs the ground-truth labels
    needs_targets: bool = False

    @classmethod
    def from_config(cls, node: Mapping[str, Any], context: TermContext) -> TrainingTerm | None:
        """The term configured by its config subtree ``node``, or ``None`` when the config
        leaves it off. Raises ValueError naming the key at fault."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_config")

    def forward(
        self, student_out, teacher_out, targets: torch.Tensor | None = None, *, iteration=None
    ) -> dict[str, torch.Tensor]:
        """``{"loss_<name>": weighted loss}`` from the two models' outputs (``SegOutput``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters this term updates itself in :meth:`extra_step`; the main optimizer must
        leave them out (:func:`own_parameter_ids`). Default: none."""
        return []

    def own_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer of :meth:`extra_step`, whose state the trainer saves with training
        checkpoints and restores on resume. Default: none."""
        return None

    def extra_step(
        self, student_out, teacher_out, targets: torch.Tensor | None = None, *, iteration=None
    ) -> dict[str, torch.Tensor]:
        """An optimizer step of the term's own (e.g. a discriminator update), run by
        :func:`compose_losses` in training before :meth:`forward`. Returns detached values to
        log (never summed into the loss). Default: nothing."""
        return {}


def config_subtree(cfg: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """``cfg[a][b]…`` for ``path = "a.b…"``; KeyError naming the missing key."""
    node: Any = cfg
    walked: list[str] = []
    for key in path.split("."):
        walked.append(key)
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(f"config key {'.'.join(walked)} is missing (training term {path})")
        node = node[key]
    return node


def build_terms(
    cfg: Mapping[str, Any],
    table: Mapping[str, tuple[type[TrainingTerm], str]],
    context: TermContext,
) -> dict[str, TrainingTerm | None]:
    """Build every term of ``table`` (``{attribute: (term class, config path)}``) from its
    config subtree: ``{attribute: term or None when switched off}``, in table order."""
    return {
        name: term_cls.from_config(config_subtree(cfg, path), context)
        for name, (term_cls, path) in table.items()
    }


def compose_losses(
    terms: Iterable[TrainingTerm],
    student_out,
    teacher_out,
    targets: torch.Tensor | None = None,
    *,
    iteration: int | None = None,
    training: bool = True,
    logs: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Run every term (its :meth:`~TrainingTerm.extra_step` first when ``training``) and merge
    their loss dicts; two terms reporting the same key is an error. The values the extra steps
    return go into ``logs`` when given (the meta-architectures log them)."""
    losses: dict[str, torch.Tensor] = {}
    for term in terms:
        if training:
            extra = term.extra_step(student_out, teacher_out, targets, iteration=iteration)
            if logs is not None:
                logs.update(extra)
        for key, value in term(student_out, teacher_out, targets, iteration=iteration).items():
            if key in losses:
                raise ValueError(
                    f"training term {type(term).__name__} reports {key!r}, which another term "
                    "already reports: rename one of the terms"
                )
            losses[key] = value
    return losses


def own_parameter_ids(module: nn.Module) -> set[int]:
    """``id()`` of every parameter some :class:`TrainingTerm` inside ``module`` optimizes
    itself; an optimizer builder leaves these out."""
    return {
        id(p) for m in module.modules() if isinstance(m, TrainingTerm) for p in m.own_parameters()
    }
