"""Shared pytest setup. Tests that need detectron2 are marked ``detectron2`` and skip without it."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# make tools/ and datasets/ scripts importable from tests
for sub in ("tools", "datasets"):
    p = str(ROOT / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    try:
        import detectron2  # noqa: F401

        return
    except ImportError:
        pass
    skip = pytest.mark.skip(reason="detectron2 is not installed")
    for item in items:
        if "detectron2" in item.keywords:
            item.add_marker(skip)
