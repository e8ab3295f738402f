"""Loading whole-model checkpoints into a core Segmentor, strictly (framework-free)."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointFileError",
    "check_checkpoint_file",
    "load_checkpoint_file",
    "read_state_dict",
    "segmentor_state_dict",
    "load_segmentor_checkpoint",
    "first_conv_keys",
    "compare_state_dicts",
    "short_list",
]

# prefixes under which a segmentor can sit in a TextKD checkpoint: single-model and distillation
# meta-architectures store the (student) segmentor as ``segmentor.*``
_SEGMENTOR_PREFIXES = ("segmentor.",)


class CheckpointFileError(ValueError):
    """A checkpoint path that exists but is not a readable checkpoint (truncated, damaged or not a
    checkpoint at all)."""


# the first bytes of a torch.save zip archive and of a pickle (legacy torch.save, detectron2 .pkl)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def _describe(path: str, what: str, key: str) -> str:
    return f"{what} {key}={path!r}" if key else f"{what} {path!r}"


def check_checkpoint_file(path: str, what: str = "checkpoint", key: str = "") -> None:
    """Fail early, naming the file (and the config ``key`` it came from), when ``path`` cannot be
    a checkpoint: missing (FileNotFoundError), a directory (IsADirectoryError), empty, or not a
    complete torch zip archive / pickle (:class:`CheckpointFileError`). Cheap: reads the first
    bytes and the zip directory, not the tensors. The one readable-file check of TextKD: every
    checkpoint reader (model, teacher, backbone, converter, detectron2 checkpointer) calls it."""
    desc = _describe(path, what, key)
    if not path:
        raise FileNotFoundError(f"{desc} is empty: give the path of a checkpoint file")
    if os.path.isdir(path):
        found = sorted(n for n in os.listdir(path) if n.endswith((".pth", ".pkl", ".pt")))
        hint = f" (checkpoints in it: {', '.join(found[:5])})" if found else ""
        raise IsADirectoryError(
            f"{desc} is a directory, not a checkpoint file: give the path of a file inside it, "
            f"e.g. {os.path.join(path, found[-1] if found else 'model_final.pth')}{hint}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{desc} does not exist: check the path")
    size = os.path.getsize(path)
    not_readable = f"{desc} is not a readable checkpoint"
    if size == 0:
        raise CheckpointFileError(f"{not_readable}: the file is empty (0 bytes); use another file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointFileError(
                f"{not_readable}: it is a truncated or damaged torch archive ({size} bytes; {e}). "
                "Copy it again or use another checkpoint"
            ) from e
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointFileError(
                f"{not_readable}: a zip archive without torch's data.pkl (not written by "
                "torch.save)"
            )
    elif not (head.startswith(_PICKLE_MAGIC) or path.endswith(".safetensors")):
        raise CheckpointFileError(
            f"{not_readable}: neither a torch.save archive nor a pickle file (first bytes "
            f"{head!r}, {size} bytes). Give a .pth/.pkl checkpoint written by TextKD, torch or "
            "detectron2"
        )


def load_checkpoint_file(
    path: str,
    what: str = "checkpoint",
    key: str = "",
    weights_only: bool = False,
    mmap: bool = False,
) -> Any:
    """``torch.load(path)`` on the CPU after :func:`check_checkpoint_file`; a file that still
    fails to load is a :class:`CheckpointFileError` naming it (never torch's bare unpickling
    error). ``mmap``: memory-map a zip-format file (tensors are read only when touched, e.g. to
    look at the keys); a legacy (non-zip) file is read whole."""
    check_checkpoint_file(path, what, key)
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except Exception:  # noqa: BLE001 - not a zip archive: read it whole below
            pass
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointFileError(
            f"{_describe(path, what, key)} is not a readable checkpoint "
            f"({type(e).__name__}: {first[:300]}); use a checkpoint written by TextKD, torch or "
            "detectron2"
        ) from e


def short_list(items: Iterable[Any], limit: int = 12) -> str:
    """``a, b, c, ... (N in all)``: the first ``limit`` items of a list of keys for an error."""
    items = [str(k) for k in items]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def compare_state_dicts(
    state: Mapping[str, Any], own: Mapping[str, Any]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """The strict key matching of every TextKD checkpoint reader: ``(missing, unexpected,
    mismatched)`` for loading ``state`` into a model whose state dict is ``own`` -- the keys of
    ``own`` absent from ``state``, the keys of ``state`` absent from ``own``, and
    ``(key, shape in state, shape in own)`` for every common key whose shapes differ (in the
    order of ``state``). All three empty means a strict load fits."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, mismatched


def read_state_dict(path: str, what: str = "checkpoint", key: str = "") -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its model state dict (``model``/``state_dict`` entry
    or the dict itself), with DDP's ``module.`` prefix removed and numpy arrays as tensors.
    ``what``/``key`` name the file in errors (e.g. "teacher", "MODEL.DISTILL.TEACHER.WEIGHTS")."""
    ckpt = load_checkpoint_file(path, what, key)
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


def load_segmentor_checkpoint(
    model: nn.Module, path: str, what: str = "model", key: str = ""
) -> None:
    """Load ``path`` into ``model`` strictly: every missing, unexpected or shape-mismatched key
    is an error naming the file (and the config ``key`` it came from) and the keys (never a
    partially random model)."""
    state = segmentor_state_dict(read_state_dict(path, f"{what} checkpoint", key))
    missing, unexpected, wrong = compare_state_dicts(state, model.state_dict())
    first_convs = first_conv_keys(model)
    for k, cs, ms in wrong:
        hint = _first_conv_hint(path, k, cs, ms, what, first_convs)
        if hint:
            raise ValueError(hint)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {short_list(missing, 8)}")
        if unexpected:
            parts.append(f"unexpected keys: {short_list(unexpected, 8)}")
        if wrong:
            parts.append(
                "shape mismatches: "
                + short_list((f"{k} {cs} in file vs {ms} in model" for k, cs, ms in wrong), 8)
            )
        raise ValueError(
            f"{what} checkpoint {path} does not fit the {what} config: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)
    logger.info("loaded %s weights from %s (%d tensors)", what, path, len(state))
