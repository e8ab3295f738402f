"""The framework-free dataset catalog: each dataset module declares its splits once.

A dataset module under ``data/datasets/`` ends with ``register_dataset(DatasetSpec(...))``: the
name prefix (splits are registered in detectron2 as ``<prefix>_<split>_sem_seg``), its splits,
``load(root, split) -> records``, ``roots(root, split) -> (image_root, sem_seg_root)``, class
names and colours, and the evaluator type. :func:`dataset_specs` imports every module of the
package (so a new module needs no import line anywhere) and returns the specs in registration
order; ``d2/register.py`` registers them all in detectron2 without per-dataset code. Plain
Python, no detectron2.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DatasetSpec", "register_dataset", "dataset_specs", "DATASET_SPECS"]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset (or one label variant of it) as registered in detectron2.

    ``load`` and ``roots`` take the datasets root first and the split second; ``load`` runs only
    when detectron2's ``DatasetCatalog.get`` asks for the records, ``roots`` at registration (it
    must only build paths). ``metadata`` adds further metadata keys to every split."""

    prefix: str
    splits: Sequence[str]
    load: Callable[[str, str], list[dict]]
    roots: Callable[[str, str], tuple[str, str]]
    classes: Sequence[str]
    colors: Sequence[Sequence[int]]
    evaluator_type: str = "sem_seg"
    metadata: dict[str, Any] = field(default_factory=dict)

    def name(self, split: str) -> str:
        """The detectron2 name of ``split``: ``<prefix>_<split>_sem_seg``."""
        return f"{self.prefix}_{split}_sem_seg"


# prefix -> spec, in registration order
DATASET_SPECS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the catalog (ValueError when its prefix is taken by another module's
    spec; re-registering the same spec on a module reload replaces it)."""
    old = DATASET_SPECS.get(spec.prefix)
    if old is not None and getattr(old.load, "__module__", None) != getattr(
        spec.load, "__module__", None
    ):
        raise ValueError(f"dataset prefix '{spec.prefix}' is already registered by {old.load}")
    if len(spec.classes) != len(spec.colors):
        raise ValueError(
            f"dataset '{spec.prefix}': {len(spec.classes)} classes but {len(spec.colors)} colours"
        )
    DATASET_SPECS[spec.prefix] = spec
    return spec


def dataset_specs() -> list[DatasetSpec]:
    """Every dataset of the catalog, after importing each module of ``textkd.data.datasets``."""
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{info.name}")
    return list(DATASET_SPECS.values())
