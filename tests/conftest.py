"""Shared pytest setup.

Tests that need detectron2 live in ``tests/test_*_d2.py`` modules marked ``detectron2``
(``pytestmark = pytest.mark.detectron2``). This file is the one place that skips them when
detectron2 is absent or broken: such a module is not imported at all (it imports detectron2 at
module level) but reported as one skipped module, as ``pytest.importorskip`` would, and any other
test marked ``detectron2`` is skipped. With ``TEXTKD_REQUIRE_DETECTRON2=1`` (set by
``scripts/test.sh`` and so by CI) a missing or broken detectron2 stops the run at once instead of
skipping a thousand tests quietly.

Fixtures shared by the detectron2 modules: ``single_thread`` (module-scoped, autouse in modules
marked ``detectron2``: torch runs single-threaded) and ``data_root`` (module-scoped: the
synthetic dataset generated once per session, with the tiny splits registered). Both import
``tests/_d2_helpers.py`` lazily, so a run without detectron2 still collects.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# make tools/ and datasets/ scripts and the benchmarks/ package importable from tests
for p in (str(ROOT / "tools"), str(ROOT / "datasets"), str(ROOT)):
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
    return f"detectron2: {found or 'not installed (the test_*_d2.py modules are skipped)'}"


def pytest_collection_modifyitems(config, items):
    if getattr(config, "_textkd_detectron2", None) is not None:
        return
    skip = pytest.mark.skip(reason="detectron2 is not installed")
    for item in items:
        if "detectron2" in item.keywords:
            item.add_marker(skip)


class _SkippedDetectron2Module(pytest.Module):
    """A ``test_*_d2.py`` module when detectron2 does not work: never imported, reported as one
    skipped module."""

    def collect(self):
        pytest.skip("detectron2 is not installed", allow_module_level=True)


def pytest_pycollect_makemodule(module_path, parent):
    if (
        module_path.name.endswith("_d2.py")
        and getattr(parent.config, "_textkd_detectron2", 0) is None
    ):
        return _SkippedDetectron2Module.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="module", autouse=True)
def single_thread(request):
    """Torch single-threaded for the whole module, in modules marked ``detectron2`` (on a few
    shared CPU cores several threads per process are many times slower than one) or
    ``single_thread`` (reference-equivalence tests: the fixtures were computed in one thread, and
    another thread count changes float32 reductions by more than their 1e-5 tolerance)."""
    if (
        request.node.get_closest_marker("detectron2") is None
        and request.node.get_closest_marker("single_thread") is None
    ):
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The synthetic dataset root (generated once per session) with the tiny splits
    ``textkd_synthetic_tiny_{train,val}_sem_seg`` registered."""
    import _d2_helpers as H

    root = H.synthetic_root(tmp_path_factory)
    H.register_tiny(root)
    return root
