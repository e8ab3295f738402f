"""Segmentation models (framework-free core). Importing this package registers every backbone
and head of the core registries, OCRNet and STDC included."""

from . import ocrnet as _ocrnet  # noqa: F401  (registers the "ocrnet" head)
from . import stdc as _stdc  # noqa: F401  (registers "stdc1"/"stdc2" and the "stdc" head)
