"""Shared pytest setup.

Tests that need detectron2 are marked ``detectron2``. They skip when it is absent, except when
``TEXTKD_REQUIRE_DETECTRON2=1`` (set by ``scripts/test.sh`` and so by CI): then a missing or broken
detectron2 stops the run at once instead of skipping a thousand tests quietly.
"""

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


def _detectron2_status():
    """(version and location, None) when detectron2 and the parts TextKD uses import, else
    (None, the error)."""
    try:
        import detectron2
        from detectron2.config import get_cfg
        from detectron2.engine import DefaultTrainer  # noqa: F401
        from detectron2.modeling import build_model  # noqa: F401

        get_cfg()
    except Exception as e:  # ImportError, or a broken install failing in any other way
        return None, f"{type(e).__name__}: {e}"
    return f"{getattr(detectron2, '__version__', '?')} ({detectron2.__path__[0]})", None


def _required() -> bool:
    return os.environ.get("TEXTKD_REQUIRE_DETECTRON2", "0") not in ("", "0")


def pytest_configure(config):
    found, error = _detectron2_status()
    config._textkd_detectron2 = found
    if found is None and _required():
        raise pytest.UsageError(
            f"TEXTKD_REQUIRE_DETECTRON2 is set but detectron2 does not work ({error}); run "
            "`bash scripts/setup_env.sh` (it installs detectron2), or unset "
            "TEXTKD_REQUIRE_DETECTRON2 to skip the detectron2 tests"
        )


def pytest_report_header(config):
    found = getattr(config, "_textkd_detectron2", None)
    return f"detectron2: {found or 'not installed (tests marked detectron2 are skipped)'}"


def pytest_collection_modifyitems(config, items):
    if getattr(config, "_textkd_detectron2", None) is not None:
        return
    skip = pytest.mark.skip(reason="detectron2 is not installed")
    for item in items:
        if "detectron2" in item.keywords:
            item.add_marker(skip)
