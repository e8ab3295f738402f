"""The small output record every segmentation model in TextKD returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegOutput:
    """What a segmentor returns for one batch.

    Attributes:
        logits: main class scores, N×K×h×w (stride 8 for OS8 models, before upsampling).
        feature: the penultimate decoder feature the logits are computed from, N×C×h×w (None
            for a detectron2 teacher without a named feature module).
        aux_logits: scores of the auxiliary FCN head on the stage before the last, or None.
        extras: model-specific tensors used only by training losses (for example STDC's detail
            logits or OCRNet's soft-region logits); distillers ignore keys they do not know.
    """

    logits: torch.Tensor
    feature: torch.Tensor | None
    aux_logits: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """Return the tensor a distillation term names: ``logits``, ``feature``, ``aux_logits``
        or an ``extras`` key. Raises KeyError naming the choices when it is absent."""
        if name in ("logits", "feature", "aux_logits"):
            value = getattr(self, name)
        else:
            value = self.extras.get(name)
        if value is None:
            choices = [
                k for k in ("logits", "feature", "aux_logits") if getattr(self, k) is not None
            ]
            raise KeyError(
                f"model output has no '{name}'; available: {choices + list(self.extras)}"
            )
        return value

    def float(self) -> SegOutput:
        """The same record in float32 (after autocast); float32 tensors are returned as they are."""
        return SegOutput(
            logits=self.logits.float(),
            feature=None if self.feature is None else self.feature.float(),
            aux_logits=None if self.aux_logits is None else self.aux_logits.float(),
            extras={k: v.float() for k, v in self.extras.items()},
        )
