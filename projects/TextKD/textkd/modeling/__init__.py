"""Deprecated alias package: the framework-free models moved to :mod:`textkd.models`, the
detectron2 layer to :mod:`textkd.d2` (issue 14). ``textkd.modeling.<name>`` still imports (with a
FutureWarning, once) and is the new module itself; removed in the next release."""

# textkd-moved-alias
import importlib

from textkd import models as _models  # noqa: F401  (registers the core heads and backbones)
from textkd._moved import warn_moved

warn_moved("textkd.modeling", "textkd.models (core) / textkd.d2 (detectron2 layer)")

_SUBMODULES = (
    "backbones",
    "build",
    "convert",
    "d2_teacher",
    "distill_arch",
    "heads",
    "losses",
    "meta_arch",
    "ocrnet",
    "outputs",
    "registry",
    "segmentor",
    "stdc",
    "weights",
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
