"""CLIP text bank (METHODS.md section 2): prompt templates, offline encoding and the disk cache."""

from . import bank
from .bank import *  # noqa: F403 - the package re-exports bank's public API (bank.__all__)
from .templates import DEFAULT_TEMPLATES

__all__ = ["DEFAULT_TEMPLATES", *bank.__all__]
__all__.sort()
