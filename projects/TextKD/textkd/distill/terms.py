"""Distillation composed by configuration: named terms -> one ``Distiller`` -> a dict of losses.

A term says which loss (``METHOD``), on which model output (``INPUT``: ``logits``, ``feature``,
``aux_logits`` or an ``extras`` key of ``SegOutput``), with which weight and parameters. In a
detectron2 config (``MODEL.DISTILL.TERMS``) a term looks like::

    TERMS:
      cwd_logits: {METHOD: cwd, INPUT: logits, WEIGHT: 3.0, TEMPERATURE: 4.0}

``parse_terms`` turns such a mapping into ``TermSpec`` records (the method's own parameters are
the upper-case spelling of the loss function's keyword arguments); ``Distiller`` evaluates them
and returns ``{"loss_<name>": weight * loss}``. The reference settings of METHODS.md are in
``DEFAULTS``, in the same config form.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.outputs import SegOutput
from .base import TermContext, TrainingTerm, compose_losses
from .losses import (
    channel_wise_divergence,
    cirkd_pixel_pairs,
    dist,
    ifvd,
    pixel_kd,
    resize_to_teacher,
    structural_kd,
)

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "DEFAULTS",
    "TermSpec",
    "parse_terms",
    "ClassicTerm",
    "Distiller",
    "accepted_params",
]

#: method name -> loss function (student map, teacher map, **params) -> scalar
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "kd": pixel_kd,
    "cwd": channel_wise_divergence,
    "skd": structural_kd,
    "ifvd": ifvd,
    "cirkd": cirkd_pixel_pairs,
    "dist": dist,
}

#: the model output a method reads when a term gives no INPUT
DEFAULT_INPUT: dict[str, str] = {
    "kd": "logits",
    "cwd": "logits",
    "dist": "logits",
    "skd": "feature",
    "ifvd": "feature",
    "cirkd": "feature",
}

#: the reference settings of METHODS.md section 1, as config terms (name -> node)
DEFAULTS: dict[str, dict[str, Any]] = {
    # Hinton pixel KD: τ = 1, weight 1
    "kd": {"METHOD": "kd", "INPUT": "logits", "WEIGHT": 1.0, "TEMPERATURE": 1.0},
    # channel-wise distillation on logits: τ = 4, weight 3
    "cwd_logits": {"METHOD": "cwd", "INPUT": "logits", "WEIGHT": 3.0, "TEMPERATURE": 4.0},
    # channel-wise distillation on features: weight 50 (1×1 adapter when channels differ)
    "cwd_feature": {"METHOD": "cwd", "INPUT": "feature", "WEIGHT": 50.0, "TEMPERATURE": 4.0},
    # structural (pair-wise) KD: weight 10
    "skd": {"METHOD": "skd", "INPUT": "feature", "WEIGHT": 10.0},
    # intra-class feature variation distillation: weight 20
    "ifvd": {"METHOD": "ifvd", "INPUT": "feature", "WEIGHT": 20.0},
    # CIRKD mini-batch pixel pairs: τ = 0.1, weight 1
    "cirkd": {"METHOD": "cirkd", "INPUT": "feature", "WEIGHT": 1.0, "TEMPERATURE": 0.1},
    # DIST: β = γ = 1, weight 1 on logits and 0.4 more on the aux logits
    "dist": {"METHOD": "dist", "INPUT": "logits", "WEIGHT": 1.0, "BETA": 1.0, "GAMMA": 1.0},
    "dist_aux": {"METHOD": "dist", "INPUT": "aux_logits", "WEIGHT": 0.4, "BETA": 1.0, "GAMMA": 1.0},
}

# arguments the Distiller supplies itself (never set in a term)
_SUPPLIED = {"labels", "num_classes", "ignore_label"}
# outputs that hold class scores: their channel counts must agree, no adapter
_CLASS_OUTPUTS = ("logits", "aux_logits")
#: methods that compare student and teacher maps element by element: on a non-class output of
#: different widths they need a 1×1 adapter (CWD on features; a feature-mimicking method would go
#: here too). The similarity-based methods (SKD, IFVD, CIRKD pairs) compare each model's own
#: similarity structure and take the raw features, as the reference does (METHODS.md §1).
ADAPTED_METHODS = frozenset({"cwd"})


def accepted_params(method: str) -> list[str]:
    """Lower-case names of the parameters a term of ``method`` may set: the keyword arguments
    (with defaults) of its loss function, minus those the Distiller supplies."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; choices: {sorted(METHODS)}")
    sig = inspect.signature(METHODS[method])
    return [
        p.name
        for p in sig.parameters.values()
        if p.default is not inspect.Parameter.empty and p.name not in _SUPPLIED
    ]


def _needs_targets(method: str) -> bool:
    return "labels" in inspect.signature(METHODS[method]).parameters


@dataclass
class TermSpec:
    """One distillation term: ``weight * METHODS[method](student.get(input), teacher.get(input),
    **params)``, reported as ``loss_<name>``."""

    name: str
    method: str
    input: str = "logits"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(f"term name must be a non-empty string without '.', got {self.name!r}")
        if self.method not in METHODS:
            raise ValueError(
                f"term {self.name!r}: unknown method {self.method!r}; choices: {sorted(METHODS)}"
            )
        if not isinstance(self.input, str) or not self.input:
            raise ValueError(
                f"term {self.name!r}: input must be an output name, got {self.input!r}"
            )
        try:
            self.weight = float(self.weight)
        except (TypeError, ValueError):
            raise ValueError(
                f"term {self.name!r}: weight must be a number, got {self.weight!r}"
            ) from None
        if not self.weight >= 0:
            raise ValueError(f"term {self.name!r}: weight must be >= 0, got {self.weight!r}")
        accepted = accepted_params(self.method)
        for key in self.params:
            if key not in accepted:
                raise ValueError(
                    f"term {self.name!r}: unknown parameter {key!r} for method {self.method!r}; "
                    f"accepted: {accepted}"
                )
        self.params = dict(self.params)

    @property
    def enabled(self) -> bool:
        """A term with weight 0 is disabled."""
        return self.weight != 0.0

    @property
    def needs_targets(self) -> bool:
        """Whether the loss needs the ground-truth label map (IFVD)."""
        return _needs_targets(self.method)


def parse_terms(terms: Mapping[str, Mapping[str, Any]]) -> list[TermSpec]:
    """Build ``TermSpec`` records from a mapping ``{name: {METHOD, INPUT, WEIGHT, <PARAMS>}}``
    (a detectron2 ``CfgNode`` works: it is a dict). ``METHOD`` is required; ``INPUT`` defaults to
    the method's usual input (``DEFAULT_INPUT``), ``WEIGHT`` to 1. Any other key is the
    upper-case name of a keyword argument of the loss function. Terms with ``WEIGHT: 0`` are
    disabled and left out. Raises ValueError naming the term and key at fault."""
    if not isinstance(terms, Mapping):
        raise ValueError(f"distillation terms must be a mapping name -> node, got {type(terms)}")
    specs: list[TermSpec] = []
    for name, node in terms.items():
        if not isinstance(node, Mapping):
            raise ValueError(
                f"distillation term {name!r} must be a mapping with METHOD/INPUT/WEIGHT, "
                f"got {node!r}"
            )
        if "METHOD" not in node:
            raise ValueError(
                f"distillation term {name!r} has no METHOD; choices: {sorted(METHODS)}"
            )
        method = str(node["METHOD"]).lower()
        if method not in METHODS:
            raise ValueError(
                f"distillation term {name!r}: unknown METHOD {node['METHOD']!r}; "
                f"choices: {sorted(METHODS)}"
            )
        accepted = accepted_params(method)
        params: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("METHOD", "INPUT", "WEIGHT"):
                continue
            if not isinstance(key, str) or key.lower() not in accepted:
                raise ValueError(
                    f"distillation term {name!r}: unknown key {key!r} for METHOD {method!r}; "
                    f"accepted: {['METHOD', 'INPUT', 'WEIGHT'] + [a.upper() for a in accepted]}"
                )
            params[key.lower()] = value
        spec = TermSpec(
            name=str(name),
            method=method,
            input=str(node.get("INPUT", DEFAULT_INPUT[method])),
            weight=node.get("WEIGHT", 1.0),
            params=params,
        )
        if not spec.enabled:
            logger.info("distillation term %r has WEIGHT 0: disabled", spec.name)
            continue
        specs.append(spec)
    return specs


class ClassicTerm(TrainingTerm):
    """One classic distillation term: ``{"loss_<name>": weight * METHODS[method](
    adapter(student.<input>), teacher.<input>, **params)}``.

    For a method of :data:`ADAPTED_METHODS` (CWD) on a non-class output (``feature`` or an extras
    key) whose student and teacher channel counts differ, a learnable 1×1 conv ``adapter``
    (student -> teacher channels, no bias, as the CIRKD code) maps the student map first; it
    trains with the student and is not part of the deployed model. The similarity-based methods
    (SKD, IFVD, CIRKD pairs) take features of different widths as they are. Class scores
    (``logits``, ``aux_logits``) of different sizes are an error. A student map of another
    spatial size than the teacher's is bilinearly resized to it with ``align_corners`` (the
    student's ``MODEL.SEM_SEG_HEAD.ALIGN_CORNERS``) before the loss."""

    def __init__(
        self,
        spec: TermSpec,
        student_channels: Mapping[str, int | None],
        teacher_channels: Mapping[str, int | None],
        num_classes: int,
        ignore_label: int = 255,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.align_corners = bool(align_corners)
        self.needs_aux = spec.input == "aux_logits"
        self.needs_targets = spec.needs_targets
        for who, channels in (("student", student_channels), ("teacher", teacher_channels)):
            if spec.input not in channels or channels[spec.input] is None:
                available = [k for k, v in channels.items() if v is not None]
                raise ValueError(
                    f"term {spec.name!r}: the {who} has no output {spec.input!r}; "
                    f"available: {available}"
                )
        cs, ct = int(student_channels[spec.input]), int(teacher_channels[spec.input])
        self.adapter: nn.Module | None = None
        if cs != ct:
            if spec.input in _CLASS_OUTPUTS:
                raise ValueError(
                    f"term {spec.name!r}: student {spec.input} has {cs} classes but the teacher's "
                    f"has {ct}; class scores cannot be adapted"
                )
            if spec.method in ADAPTED_METHODS:
                self.adapter = nn.Conv2d(cs, ct, kernel_size=1, bias=False)
                logger.info("term %r: 1×1 adapter %d -> %d channels", spec.name, cs, ct)

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], context: TermContext, *, name: str = "term"
    ) -> ClassicTerm | None:
        """The term ``name`` of ``MODEL.DISTILL.TERMS`` (``node`` = ``{METHOD, INPUT, WEIGHT,
        <PARAMS>}``, see :func:`parse_terms`); None when its WEIGHT is 0."""
        specs = parse_terms({name: node})
        if not specs:
            return None
        return cls(
            specs[0],
            context.student_channels,
            context.teacher_channels,
            context.num_classes,
            context.ignore_label,
            context.align_corners,
        )

    def forward(
        self,
        student: SegOutput,
        teacher: SegOutput,
        targets: torch.Tensor | None = None,
        *,
        iteration: int | None = None,
    ) -> dict[str, torch.Tensor]:
        spec = self.spec
        s = student.get(spec.input)
        t = teacher.get(spec.input)
        if self.adapter is not None:
            s = self.adapter(s)
        if torch.is_tensor(s) and torch.is_tensor(t) and s.dim() == 4 and t.dim() == 4:
            s = resize_to_teacher(s, t, self.align_corners)
        kwargs = dict(spec.params)
        if spec.needs_targets:
            if targets is None:
                raise ValueError(
                    f"term {spec.name!r} ({spec.method}) needs the ground-truth labels, "
                    "but targets is None"
                )
            kwargs.update(
                labels=targets, num_classes=self.num_classes, ignore_label=self.ignore_label
            )
        return {f"loss_{spec.name}": spec.weight * METHODS[spec.method](s, t, **kwargs)}

    def extra_repr(self) -> str:
        s = self.spec
        return f"{s.name}={s.method}({s.input})×{s.weight:g}"


class Distiller(TrainingTerm):
    """The classic distillation terms of ``MODEL.DISTILL.TERMS`` (:meth:`from_config`), one
    :class:`ClassicTerm` each, evaluated on a (student, teacher) pair of ``SegOutput`` records:
    ``forward`` returns ``{"loss_<name>": weight * loss}`` for every enabled term.

    The terms' adapters are registered once, in ``self.adapters`` under the term's name (the
    checkpoint layout ``distiller.adapters.<name>.weight``); the terms themselves are kept in a
    plain list (``self.terms``) that shares those adapter modules.
    """

    def __init__(
        self,
        specs: Iterable[TermSpec],
        student_channels: Mapping[str, int],
        teacher_channels: Mapping[str, int],
        num_classes: int,
        ignore_label: int = 255,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = bool(align_corners)
        self.specs: list[TermSpec] = [s for s in specs if s.enabled]
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        names = [s.name for s in self.specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate distillation term names: {duplicates}")
        self.adapters = nn.ModuleDict()
        terms: list[ClassicTerm] = []
        for spec in self.specs:
            term = ClassicTerm(
                spec,
                student_channels,
                teacher_channels,
                self.num_classes,
                self.ignore_label,
                self.align_corners,
            )
            if term.adapter is not None:
                self.adapters[spec.name] = term.adapter
            terms.append(term)
        self.terms = terms  # a plain list: each adapter is registered once, above
        self._register_load_state_dict_pre_hook(self._drop_stale_adapters)

    def _drop_stale_adapters(self, state_dict, prefix, *args) -> None:
        """A checkpoint written before SKD/IFVD/CIRKD pairs took raw features holds 1×1 adapters
        for those terms (``distiller.adapters.<skd|ifvd|cirkd term>.*``); they are dropped with a
        warning naming them, so the student and the other terms load (weights, evaluation,
        export). Its optimizer state counted those adapters: ``--resume`` from it then fails at
        the optimizer; continue from its weights (MODEL.WEIGHTS, no --resume) instead."""
        unadapted = {s.name for s in self.specs if s.method not in ADAPTED_METHODS}
        stale = [
            k
            for k in state_dict
            if k.startswith(prefix + "adapters.")
            and k[len(prefix + "adapters.") :].split(".")[0] in unadapted
        ]
        if not stale:
            return
        for k in stale:
            del state_dict[k]
        logger.warning(
            "checkpoint entries %s are 1×1 adapters of similarity-based terms, which now take the "
            "raw features (METHODS.md §1): dropped. The terms' losses differ from the run that "
            "wrote them; an optimizer state saved with them does not fit this model, so continue "
            "from such a checkpoint with MODEL.WEIGHTS (no --resume)",
            stale,
        )

    @classmethod
    def from_config(cls, node: Mapping[str, Any], context: TermContext) -> Distiller:
        """The terms of ``node`` (``MODEL.DISTILL.TERMS``: ``{name: {METHOD, INPUT, WEIGHT,
        …}}``, see :func:`parse_terms`) for the models described by ``context``."""
        return cls(
            parse_terms(node),
            context.student_channels,
            context.teacher_channels,
            num_classes=context.num_classes,
            ignore_label=context.ignore_label,
            align_corners=context.align_corners,
        )

    @property
    def needs_aux(self) -> bool:
        """Whether some term reads ``aux_logits`` (so the teacher must compute them)."""
        return any(t.needs_aux for t in self.terms)

    @property
    def needs_targets(self) -> bool:
        """Whether some term needs the ground-truth labels (``forward(..., targets)``)."""
        return any(t.needs_targets for t in self.terms)

    def forward(
        self,
        student: SegOutput,
        teacher: SegOutput,
        targets: torch.Tensor | None = None,
        *,
        iteration: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss_<name>": weight * loss(adapter(student.<input>), teacher.<input>)}`` for every
        enabled term; ``targets`` (N×H×W labels) is required when ``needs_targets``."""
        return compose_losses(
            self.terms, student, teacher, targets, iteration=iteration, training=self.training
        )

    def extra_repr(self) -> str:
        return ", ".join(t.extra_repr() for t in self.terms)
