"""Config files state only what differs from their ``_BASE_`` chain, and resolve as before.

* Every TextKD config under ``configs/`` (detectron2's own teacher files under
  ``configs/*/detectron2/teachers/`` excepted) resolves through ``textkd.engine.load_config`` to
  the same merged config as the snapshot in ``tests/data/config_snapshot.json`` (a sha256 per
  file of its merged values, see ``resolved_digest``, taken before the configs were reduced to
  their differences). A change
  to a config, a base or a default in ``textkd/config.py`` that changes a resolved config fails
  here; when the change is the point, rewrite the snapshot with
  ``TEXTKD_WRITE_CONFIG_SNAPSHOT=1 pytest tests/test_config_leaves_d2.py`` and say so in the commit.
* No file with a ``_BASE_`` restates a value its base chain (detectron2's defaults +
  ``add_textkd_config`` + the bases) already gives.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.detectron2

from detectron2.config import CfgNode, get_cfg  # noqa: E402
from textkd.config import add_textkd_config  # noqa: E402
from textkd.engine import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "data" / "config_snapshot.json"
CONFIGS = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "configs").rglob("*.yaml")
    if "/detectron2/teachers/" not in str(p.relative_to(REPO))
)


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def resolved_digest(rel: str, root: Path = REPO) -> str:
    """sha256 of the fully merged config of ``rel``: every key whose value differs from
    detectron2's own ``get_cfg()`` default, every TextKD key included (so the digest does not
    depend on keys a detectron2 build adds with their defaults, such as the official build's
    ``FLOAT32_PRECISION``). ``MODEL.DEVICE`` is normalised: ``load_config`` falls back from CUDA
    to the CPU on a machine without a GPU."""
    cfg = load_config(str(root / rel))
    if cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"
    d2 = _flat(get_cfg())
    items = sorted(
        f"{key}={value!r}" for key, value in _flat(cfg).items() if key not in d2 or d2[key] != value
    )
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def write_snapshot() -> None:
    SNAPSHOT.write_text(json.dumps({rel: resolved_digest(rel) for rel in CONFIGS}, indent=1) + "\n")


if os.environ.get("TEXTKD_WRITE_CONFIG_SNAPSHOT", "0") not in ("", "0"):
    write_snapshot()


@functools.cache
def _snapshot() -> dict[str, str]:
    return json.loads(SNAPSHOT.read_text())


def test_snapshot_covers_every_config():
    """The snapshot lists exactly the config files on disk (a new or renamed config is added to
    the snapshot on purpose)."""
    assert sorted(_snapshot()) == CONFIGS


@pytest.mark.parametrize("rel", CONFIGS)
def test_resolved_config_unchanged(rel):
    assert rel in _snapshot(), f"{rel} is not in {SNAPSHOT.name}"
    assert (
        resolved_digest(rel) == _snapshot()[rel]
    ), f"{rel}: the merged config differs from {SNAPSHOT.relative_to(REPO)}"


@functools.cache
def _merged(path: str) -> CfgNode:
    """detectron2 defaults + TextKD keys + the file with its ``_BASE_`` chain (nothing else)."""
    cfg = get_cfg()
    add_textkd_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _leaf_keys(node: dict, prefix: tuple = ()):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, prefix + (key,))
        else:
            yield prefix + (key,)


def _get(cfg, path: tuple):
    for key in path:
        if not isinstance(cfg, dict) or key not in cfg:
            return KeyError
        cfg = cfg[key]
    return cfg


def restated_keys(rel: str) -> list[str]:
    """The keys ``rel`` writes whose value its base chain already gives."""
    path = REPO / rel
    with open(path) as f:
        own = yaml.safe_load(f) or {}
    base = own.pop("_BASE_", None)
    if base is None:
        return []
    base_cfg = _merged(str((path.parent / base).resolve()))
    cfg = _merged(str(path))
    return [
        ".".join(k)
        for k in _leaf_keys(own)
        if _get(base_cfg, k) is not KeyError and _get(cfg, k) == _get(base_cfg, k)
    ]


@pytest.mark.parametrize("rel", CONFIGS)
def test_no_restated_keys(rel):
    """A config with a ``_BASE_`` writes only values that differ from its base chain."""
    keys = restated_keys(rel)
    assert not keys, f"{rel} restates what its _BASE_ chain already gives: {keys}; remove them"
