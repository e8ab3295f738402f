"""Loading whole-model checkpoints into a core Segmentor, strictly (framework-free)."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "read_state_dict",
    "segmentor_state_dict",
    "load_segmentor_checkpoint",
    "first_conv_keys",
]

# prefixes under which a segmentor can sit in a TextKD checkpoint: single-model and distillation
# meta-architectures store the (student) segmentor as ``segmentor.*``
_SEGMENTOR_PREFIXES = ("segmentor.",)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its model state dict (``model``/``state_dict`` entry
    or the dict itself), with DDP's ``module.`` prefix removed and numpy arrays as tensors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise RuntimeError(f"could not read checkpoint {path}: {e}") from e
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if key in ckpt and isinstance(ckpt[key], dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(ckpt).__name__})")
    out = {}
    for k, v in ckpt.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        out[k] = torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v
    return out


def segmentor_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The segmentor's entries of a TextKD checkpoint: keys under ``segmentor.`` with the prefix
    stripped (a distillation checkpoint's ``teacher.``/``distiller.`` entries are left out); a
    bare segmentor state dict is returned unchanged."""
    for prefix in _SEGMENTOR_PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return state


def first_conv_keys(model: nn.Module) -> set[str]:
    """State-dict keys (relative to ``model``) of the input convolution of every backbone below
    ``model``: the modules with a ``first_conv_key`` attribute, as TextKD backbones have."""
    keys = set()
    for name, module in model.named_modules():
        key = getattr(module, "first_conv_key", "")
        if isinstance(key, str) and key:
            keys.add(f"{name}.{key}" if name else key)
    return keys


def _first_conv_hint(
    path: str, key: str, ckpt_shape, model_shape, what: str, first_convs: Collection[str]
) -> str | None:
    """The RGB-vs-LAD explanation of a shape mismatch, when ``key`` is a backbone's input conv
    (one of ``first_convs``) and its input channels differ; None otherwise (a mismatch elsewhere,
    e.g. a head of another width, is not about input channels)."""
    if key not in first_convs:
        return None
    if len(ckpt_shape) == 4 and len(model_shape) == 4 and ckpt_shape[1] != model_shape[1]:
        n_ckpt, n_model = ckpt_shape[1], model_shape[1]
        kind = {3: "an RGB model", 4: "a LAD label-conditioned model (RGB + label channel)"}
        return (
            f"{what} checkpoint {path} is {kind.get(n_ckpt, f'a {n_ckpt}-channel model')} "
            f"('{key}' takes {n_ckpt} input channels) but its config builds "
            f"{kind.get(n_model, f'a {n_model}-channel model')}: set MODEL.LAD.ENABLED "
            f"{n_ckpt == 4} and MODEL.SEG_BACKBONE.IN_CHANS {n_ckpt} in the {what} config"
        )
    return None


def load_segmentor_checkpoint(model: nn.Module, path: str, what: str = "model") -> None:
    """Load ``path`` into ``model`` strictly: every missing, unexpected or shape-mismatched key
    is an error naming the file and the keys (never a partially random model)."""
    state = segmentor_state_dict(read_state_dict(path))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    first_convs = first_conv_keys(model)
    for k, cs, ms in wrong:
        hint = _first_conv_hint(path, k, cs, ms, what, first_convs)
        if hint:
            raise ValueError(hint)
    if missing or unexpected or wrong:

        def _fmt(keys):
            keys = [str(k) for k in keys]
            return ", ".join(keys[:8]) + (f" … ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatches: "
                + _fmt(f"{k} {cs} in file vs {ms} in model" for k, cs, ms in wrong)
            )
        raise ValueError(
            f"{what} checkpoint {path} does not fit the {what} config: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)
    logger.info("loaded %s weights from %s (%d tensors)", what, path, len(state))
