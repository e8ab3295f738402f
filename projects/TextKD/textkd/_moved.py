"""Deprecated module paths of the issue-14 layout (``textkd.modeling`` -> ``textkd.models`` /
``textkd.d2``, ``textkd.data.{mapper,register}`` and ``textkd.evaluation.*_evaluation`` ->
``textkd.d2``): each old module is an alias file calling :func:`alias`, which warns once per old
name (FutureWarning, shown to users by default) and makes ``sys.modules[old]`` the new module
itself, so classes, registries and monkeypatching are shared. Removed in the next release."""

# textkd-moved-alias (this file names the old paths on purpose: the move script skips it)
from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

__all__ = ["alias", "warn_moved"]

_WARNED: set[str] = set()


def warn_moved(old: str, new: str) -> None:
    """Warn (once per ``old``) that module ``old`` is now ``new``."""
    if old in _WARNED:
        return
    _WARNED.add(old)
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: import {new} "
        "(the module moved in the models/ (core) + d2/ (detectron2) layout)",
        FutureWarning,
        stacklevel=3,
    )


def alias(old: str, new: str) -> ModuleType:
    """Make module ``old`` an alias of module ``new`` (imported here) and warn once."""
    module = importlib.import_module(new)
    warn_moved(old, new)
    sys.modules[old] = module
    return module
