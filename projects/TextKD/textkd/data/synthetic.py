"""The built-in synthetic segmentation dataset (framework-free: numpy + Pillow).

Procedurally drawn outdoor scenes with 8 classes named like real ones (so they work as CLIP
prompts). Every class has its own shape family and texture, and the colour ranges of the classes
overlap (grey sky / water / road / building, green grass / tree, any colour for cars and
people), so a model has to use texture, shape and context (sky above the horizon, cars on the
road, ...) rather than colour alone. Object scales follow a simple perspective: things near the
horizon are small. About 1% of the pixels (thin outlines of some cars and people, thin poles)
are labelled 255 (ignore).

Layout, generated on first use (:func:`ensure_synthetic`)::

    <root>/textkd_synthetic/images/{train,val}/00000.png   RGB, size×size
    <root>/textkd_synthetic/labels/{train,val}/00000.png   uint8 train ids, 255 = ignore
    <root>/textkd_synthetic/manifest_{train,val}.json     generator version and parameters

Image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])`` only, so the
dataset is byte-identical for the same (version, seed, size, num_images).
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
from PIL import Image

from .datasets.common import IGNORE_LABEL

logger = logging.getLogger(__name__)

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COLORS",
    "SYNTHETIC_DIRNAME",
    "GENERATOR_VERSION",
    "DEFAULT_NUM_IMAGES",
    "ensure_synthetic",
    "load_synthetic",
    "render_scene",
]

SYNTHETIC_CLASSES: list[str] = [
    "sky",
    "grass",
    "road",
    "water",
    "building",
    "tree",
    "car",
    "person",
]
SYNTHETIC_COLORS: list[tuple[int, int, int]] = [
    (70, 130, 180),  # sky
    (152, 251, 152),  # grass
    (128, 64, 128),  # road
    (0, 80, 200),  # water
    (70, 70, 70),  # building
    (107, 142, 35),  # tree
    (0, 0, 142),  # car
    (220, 20, 60),  # person
]
SKY, GRASS, ROAD, WATER, BUILDING, TREE, CAR, PERSON = range(len(SYNTHETIC_CLASSES))

SYNTHETIC_DIRNAME = "textkd_synthetic"
GENERATOR_VERSION = 1
DEFAULT_NUM_IMAGES = {"train": 300, "val": 60}
_SPLIT_CODE = {"train": 0, "val": 1}


# ---------------------------------------------------------------------------- drawing helpers
class _Canvas:
    """An RGB float image in [0, 1] and its label map, with the pixel grids."""

    def __init__(self, size: int) -> None:
        self.h = self.w = size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.yy, self.xx = yy, xx
        self.img = np.zeros((size, size, 3), np.float32)
        self.lab = np.full((size, size), IGNORE_LABEL, np.uint8)
        self.ground = np.ones((size, size), bool)  # below the (tilted) horizon line
        self.slope = 0.0  # horizon tilt (rows per column)

    def paint(self, mask: np.ndarray, rgb: np.ndarray, label: int | None) -> None:
        """Composite ``rgb`` (H×W×3, or a colour) where ``mask`` holds; set the label there."""
        if rgb.ndim == 1:
            self.img[mask] = rgb
        else:
            self.img[mask] = rgb[mask]
        if label is not None:
            self.lab[mask] = label


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """Value noise: a random (cells+2)² grid of N(0,1) values, smoothstep-interpolated to
    size×size (about ``cells`` bumps per side)."""
    n = int(np.ceil(cells)) + 2
    grid = rng.standard_normal((n, n)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32) + rng.uniform(0, 1)
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    f = f * f * (3 - 2 * f)
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # size × n
    t2 = np.linspace(0, cells, size, dtype=np.float32) + rng.uniform(0, 1)
    j0 = np.floor(t2).astype(np.int64)
    g = t2 - j0
    g = g * g * (3 - 2 * g)
    return rows[:, j0] * (1 - g)[None, :] + rows[:, j0 + 1] * g[None, :]


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (a 1-pixel inner outline)."""
    p = np.pad(mask, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _ellipse(c: _Canvas, cy: float, cx: float, ry: float, rx: float, p: float = 2.0) -> np.ndarray:
    """Superellipse ``|dy/ry|^p + |dx/rx|^p <= 1`` (p = 2 ellipse, p = 4 rounded box)."""
    return (np.abs(c.yy - cy) / max(ry, 0.5)) ** p + (np.abs(c.xx - cx) / max(rx, 0.5)) ** p <= 1


def _rect(c: _Canvas, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    return (c.yy >= y0) & (c.yy < y1) & (c.xx >= x0) & (c.xx < x1)


def _shade(base: np.ndarray, mod: np.ndarray) -> np.ndarray:
    """Colour layer ``base · (1 + mod)`` (H×W×3) for a brightness modulation map ``mod``."""
    return base[None, None, :] * (1.0 + mod[..., None])


# ---------------------------------------------------------------------------- class painters
def _sky_colour(rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(3, p=[0.6, 0.25, 0.15])
    if kind == 0:  # blue
        return _hsv(rng.uniform(0.53, 0.64), rng.uniform(0.25, 0.7), rng.uniform(0.6, 0.95))
    if kind == 1:  # overcast grey
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.12), rng.uniform(0.45, 0.85))
    return _hsv(rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.95))  # dusk


def _draw_sky(c: _Canvas, rng: np.random.Generator, mask: np.ndarray, horizon: float) -> None:
    """Vertical gradient (lighter towards the horizon) plus soft low-frequency clouds."""
    base = _sky_colour(rng)
    grad = rng.uniform(0.1, 0.35) * (c.yy / max(horizon, 1.0) - 0.5)
    clouds = np.clip(_smooth_noise(rng, c.h, rng.uniform(2, 4)) - rng.uniform(0.0, 0.8), 0, None)
    layer = _shade(base, grad) + rng.uniform(0.1, 0.35) * clouds[..., None]
    c.paint(mask, layer, SKY)


def _draw_grass(c: _Canvas, rng: np.random.Generator, mask: np.ndarray) -> None:
    """Fine high-frequency grain with short vertical blades (noise stretched along y)."""
    if rng.uniform() < 0.75:
        base = _hsv(rng.uniform(0.17, 0.38), rng.uniform(0.35, 0.8), rng.uniform(0.3, 0.7))
    else:  # dry grass
        base = _hsv(rng.uniform(0.08, 0.15), rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.7))
    grain = rng.standard_normal((c.h, c.w)).astype(np.float32)
    blades = rng.standard_normal((c.h // 3 + 1, c.w)).astype(np.float32)
    blades = np.repeat(blades, 3, axis=0)[: c.h]
    mod = rng.uniform(0.08, 0.2) * grain + rng.uniform(0.08, 0.2) * blades
    c.paint(mask, _shade(base, mod), GRASS)


def _draw_road(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """Perspective trapezoid to a vanishing point, fine grain, dashed centre line."""
    vx = rng.uniform(0.2, 0.8) * c.w
    bottom_x = vx + rng.uniform(-0.35, 0.35) * c.w
    half_bottom = rng.uniform(0.2, 0.45) * c.w
    depth = np.clip((c.yy - horizon) / max(c.h - horizon, 1.0), 0, 1)  # 0 horizon .. 1 bottom
    centre = vx + (bottom_x - vx) * depth
    half = 1.0 + half_bottom * depth
    mask = c.ground & (c.yy > horizon + 1) & (np.abs(c.xx - centre) < half)
    if rng.uniform() < 0.8:  # asphalt
        base = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.12), rng.uniform(0.2, 0.55))
    else:  # dirt road
        base = _hsv(rng.uniform(0.06, 0.12), rng.uniform(0.25, 0.5), rng.uniform(0.35, 0.6))
    mod = rng.uniform(0.05, 0.12) * rng.standard_normal((c.h, c.w)).astype(np.float32)
    mod += 0.15 * _smooth_noise(rng, c.h, 3)
    layer = _shade(base, mod)
    if rng.uniform() < 0.7:  # lane dashes: stripes in 1/depth (perspective) along the centre
        period = rng.uniform(0.6, 1.4)
        phase = np.sin(2 * np.pi * (1.0 / (depth + 0.08)) / period + rng.uniform(0, 6.3))
        dash = mask & (np.abs(c.xx - centre) < 0.06 * half + 0.3) & (phase > 0.2)
        line = _hsv(rng.choice([0.0, 0.14]), rng.choice([0.0, 0.7]), rng.uniform(0.8, 1.0))
        layer[dash] = line
    c.paint(mask, layer, ROAD)


def _draw_water(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """A lake or river region below the horizon with horizontal ripple stripes."""
    depth = rng.uniform(0.25, 0.7) * (c.h - horizon)
    shore = horizon + depth + 3 * np.sin(c.xx / rng.uniform(4, 12) + rng.uniform(0, 6.3))
    mask = c.ground & (c.yy > horizon) & (c.yy < shore)
    if rng.uniform() < 0.6:  # lake on one side
        edge = rng.uniform(0.3, 0.8) * c.w + 4 * np.sin(c.yy / rng.uniform(3, 8))
        mask &= (c.xx < edge) if rng.uniform() < 0.5 else (c.xx > c.w - edge)
    kind = rng.uniform()
    if kind < 0.6:
        base = _hsv(rng.uniform(0.48, 0.66), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8))
    elif kind < 0.8:
        base = _hsv(rng.uniform(0.3, 0.48), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.6))
    else:
        base = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.1), rng.uniform(0.35, 0.75))
    period = rng.uniform(2.5, 6.0)
    wobble = 1.5 * np.sin(c.xx / rng.uniform(5, 15) + rng.uniform(0, 6.3))
    ripple = np.sin(2 * np.pi * (c.yy + wobble) / period + rng.uniform(0, 6.3))
    mod = rng.uniform(0.12, 0.3) * ripple + 0.05 * rng.standard_normal((c.h, c.w))
    c.paint(mask, _shade(base, mod.astype(np.float32)), WATER)


def _draw_building(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """A box standing on the horizon (sometimes with a gable roof) with a grid of windows."""
    width = rng.uniform(0.1, 0.35) * c.w
    height = rng.uniform(0.2, 0.9) * horizon + rng.uniform(4, 12)
    x0 = rng.uniform(-0.1, 1.0) * c.w - width / 2
    bottom = horizon + c.slope * (x0 + width / 2 - c.w / 2) + rng.uniform(2, 6)
    top = bottom - height
    mask = _rect(c, top, bottom, x0, x0 + width)
    if rng.uniform() < 0.35:  # gable roof: triangle above the box
        roof_h = rng.uniform(0.15, 0.4) * width
        mid = x0 + width / 2
        mask |= (
            (c.yy < top)
            & (c.yy >= top - roof_h)
            & (np.abs(c.xx - mid) <= (c.yy - (top - roof_h)) / roof_h * width / 2)
        )
    kind = rng.uniform()
    if kind < 0.45:
        base = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.12), rng.uniform(0.3, 0.85))
    elif kind < 0.8:  # brick / sandstone
        base = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.8))
    else:
        base = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.85))
    px, py = rng.uniform(3, 8), rng.uniform(4, 9)
    fx, fy = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
    win = (((c.xx - x0) % px) < px * fx) & (((c.yy - top) % py) < py * fy)
    mod = np.where(win, rng.choice([-0.45, 0.4]), 0.0).astype(np.float32)
    mod += 0.04 * rng.standard_normal((c.h, c.w)).astype(np.float32)
    c.paint(mask, _shade(base, mod), BUILDING)


def _perspective(c: _Canvas, horizon: float, y: float) -> float:
    """Scale factor of an object standing at row y: 0.3 at the horizon, 1.2 at the bottom."""
    return 0.3 + 0.9 * float(np.clip((y - horizon) / max(c.h - horizon, 1.0), 0, 1))


def _draw_tree(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """Trunk and a crown of a few overlapping discs, textured by leafy blotches and dots."""
    foot = rng.uniform(horizon, c.h * 1.05)
    s = _perspective(c, horizon, foot) * rng.uniform(0.7, 1.3)
    cx = rng.uniform(0, c.w)
    trunk_h, trunk_w = 0.12 * c.h * s, max(1.5, 0.025 * c.w * s)
    crown_r = 0.1 * c.h * s
    mask = _rect(c, foot - trunk_h - crown_r * 0.5, foot, cx - trunk_w / 2, cx + trunk_w / 2)
    crown = np.zeros_like(mask)
    ccy = foot - trunk_h - crown_r
    for _ in range(rng.integers(2, 5)):
        r = crown_r * rng.uniform(0.6, 1.0)
        crown |= _ellipse(
            c, ccy + rng.uniform(-0.6, 0.4) * crown_r, cx + rng.uniform(-0.7, 0.7) * crown_r, r, r
        )
    if rng.uniform() < 0.8:
        leaf = _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.6))
    else:  # autumn
        leaf = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.8))
    blotch = _smooth_noise(rng, c.h, rng.uniform(10, 20))
    dots = (rng.uniform(size=(c.h, c.w)) < 0.08).astype(np.float32)
    mod = 0.3 * np.tanh(2 * blotch) + rng.uniform(0.2, 0.4) * dots
    trunk_col = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.4))
    c.paint(mask & ~crown, trunk_col, TREE)
    c.paint(crown, _shade(leaf, mod), TREE)


def _any_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.9), rng.uniform(0.2, 0.95))


def _draw_car(
    c: _Canvas, rng: np.random.Generator, horizon: float, road_x: float | None
) -> np.ndarray:
    """Rounded body, cabin with dark windows, two dark wheels; shiny horizontal gradient."""
    foot = rng.uniform(horizon + 2, c.h * 1.02)
    s = _perspective(c, horizon, foot)
    w = rng.uniform(0.18, 0.32) * c.w * s
    h = w * rng.uniform(0.3, 0.4)
    cx = (road_x if road_x is not None else rng.uniform(0, c.w)) + rng.uniform(-0.4, 0.4) * c.w * s
    wheel_r = 0.2 * w * 0.5 + 0.5
    body_cy = foot - wheel_r - h / 2
    body = _ellipse(c, body_cy, cx, h / 2, w / 2, p=4)
    cab_h = h * rng.uniform(0.6, 0.9)
    cab_w = w * rng.uniform(0.45, 0.65)
    cab_cx = cx + rng.uniform(-0.12, 0.12) * w
    cab = _ellipse(c, body_cy - h / 2 - cab_h / 2 + 1, cab_cx, cab_h / 2, cab_w / 2, p=3)
    wheels = _ellipse(c, foot - wheel_r, cx - 0.3 * w, wheel_r, wheel_r) | _ellipse(
        c, foot - wheel_r, cx + 0.3 * w, wheel_r, wheel_r
    )
    base = _any_colour(rng)
    sheen = 0.25 * np.cos(np.pi * (c.yy - body_cy) / max(h, 1.0)) - 0.1
    highlight = np.exp(-(((c.yy - body_cy + h * 0.2) / max(h * 0.1, 0.5)) ** 2)) * 0.35
    layer = _shade(base, (sheen + highlight).astype(np.float32))
    window = _ellipse(c, body_cy - h / 2 - cab_h / 2 + 1, cab_cx, cab_h * 0.3, cab_w * 0.4, p=3)
    layer[window] = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.4), rng.uniform(0.1, 0.35))
    layer[wheels] = _hsv(0, 0, rng.uniform(0.03, 0.15))
    mask = body | cab | wheels
    c.paint(mask, layer, CAR)
    return mask


def _draw_person(c: _Canvas, rng: np.random.Generator, horizon: float) -> np.ndarray:
    """Head disc, torso ellipse, two legs; clothes with diagonal stripes or a checker."""
    foot = rng.uniform(horizon + 1, c.h * 1.02)
    s = _perspective(c, horizon, foot)
    height = rng.uniform(0.2, 0.36) * c.h * s
    cx = rng.uniform(0, c.w)
    head_r = 0.09 * height
    leg_h = 0.45 * height
    torso_h = height - leg_h - 2 * head_r
    torso_w = 0.17 * height
    legs = _rect(c, foot - leg_h, foot, cx - torso_w * 0.8, cx - torso_w * 0.1) | _rect(
        c, foot - leg_h, foot, cx + torso_w * 0.1, cx + torso_w * 0.8
    )
    torso = _ellipse(c, foot - leg_h - torso_h / 2 + 1, cx, torso_h / 2 + 1, torso_w)
    head = _ellipse(c, foot - leg_h - torso_h - head_r + 1, cx, head_r, head_r)
    period = rng.uniform(2.0, 4.0)
    if rng.uniform() < 0.5:
        pattern = np.sign(np.sin(2 * np.pi * (c.xx + c.yy) / period))
    else:
        pattern = np.sign(np.sin(np.pi * c.xx / period * 1.5) * np.sin(np.pi * c.yy / period * 1.5))
    shirt = _shade(_any_colour(rng), (rng.uniform(0.15, 0.4) * pattern).astype(np.float32))
    c.paint(torso, shirt, PERSON)
    c.paint(legs, _any_colour(rng) * 0.7, PERSON)
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.95))
    c.paint(head, skin, PERSON)
    return torso | legs | head


def render_scene(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: returns (image uint8 size×size×3, label uint8 size×size with train ids
    0..7 and 255 ignore). Painter's order: sky and grass, water, road, buildings, trees, cars
    and people sorted far to near, thin poles; then global lighting, colour cast, sensor noise
    and sometimes a 3×3 blur."""
    if size < 32:
        raise ValueError(f"synthetic image size must be at least 32, got {size}")
    c = _Canvas(size)
    horizon0 = rng.uniform(0.22, 0.55) * size
    c.slope = rng.uniform(-0.08, 0.08)
    sky = c.yy < horizon0 + c.slope * (c.xx - size / 2)
    c.ground = ~sky
    _draw_sky(c, rng, sky, horizon0)
    _draw_grass(c, rng, ~sky)
    # flat-ground objects use the mean horizon row; the tilt only moves the sky line
    if rng.uniform() < 0.45:
        _draw_water(c, rng, horizon0 + 1)
    road_x = None
    if rng.uniform() < 0.75:
        _draw_road(c, rng, horizon0 + 1)
        road_x = float(np.mean(c.xx[c.lab == ROAD])) if np.any(c.lab == ROAD) else None
    for _ in range(rng.choice(6, p=[0.15, 0.2, 0.25, 0.2, 0.1, 0.1])):
        _draw_building(c, rng, horizon0)

    # standing objects, drawn far (near the horizon) to near (bottom)
    kinds = [TREE] * int(rng.integers(0, 5)) + [CAR] * int(rng.integers(0, 4 if road_x else 2))
    kinds += [PERSON] * int(rng.integers(0, 5))
    rng.shuffle(kinds)
    ignore = np.zeros((size, size), bool)
    for kind in kinds:
        if kind == TREE:
            _draw_tree(c, rng, horizon0)
        elif kind == CAR:
            m = _draw_car(c, rng, horizon0, road_x)
            if rng.uniform() < 0.5:
                ignore |= _boundary(m)
        else:
            m = _draw_person(c, rng, horizon0)
            if rng.uniform() < 0.5:
                ignore |= _boundary(m)
    for _ in range(rng.choice(3, p=[0.6, 0.3, 0.1])):  # thin unlabelled poles
        x = rng.uniform(0, size)
        pole = _rect(c, rng.uniform(0.05, 0.5) * size, rng.uniform(0.6, 1.0) * size, x, x + 1.5)
        c.paint(pole, _hsv(0, 0, rng.uniform(0.1, 0.6)), IGNORE_LABEL)
    c.lab[ignore & (c.lab != IGNORE_LABEL)] = IGNORE_LABEL

    img = c.img * rng.uniform(0.7, 1.2) + rng.uniform(-0.05, 0.05, size=3).astype(np.float32)
    img = img + rng.uniform(0.01, 0.05) * rng.standard_normal(img.shape).astype(np.float32)
    if rng.uniform() < 0.3:
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = sum(p[dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)) / 9.0
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, c.lab


# ---------------------------------------------------------------------------- on-disk dataset
def _params(split: str, num_images: int, size: int, seed: int) -> dict:
    return {
        "version": GENERATOR_VERSION,
        "split": split,
        "num_images": int(num_images),
        "size": int(size),
        "seed": int(seed),
        "classes": SYNTHETIC_CLASSES,
    }


def _file_names(num_images: int) -> list[str]:
    return [f"{i:05d}.png" for i in range(num_images)]


def _manifest_path(base: str, split: str) -> str:
    return os.path.join(base, f"manifest_{split}.json")


def _is_complete(base: str, split: str, params: dict) -> bool:
    """True when the manifest matches ``params`` and every file of the split exists."""
    try:
        with open(_manifest_path(base, split)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if manifest != params:
        return False
    for kind in ("images", "labels"):
        d = os.path.join(base, kind, split)
        try:
            present = set(os.listdir(d))
        except OSError:
            return False
        if not present.issuperset(_file_names(params["num_images"])):
            return False
    return True


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive advisory file lock (fcntl.flock); a no-op where fcntl is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _split_args(split: str, num_images: int | None, size: int) -> int:
    if split not in _SPLIT_CODE:
        raise ValueError(f"synthetic split must be one of {list(_SPLIT_CODE)}, got '{split}'")
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES[split]
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if size < 32:
        raise ValueError(f"synthetic image size must be at least 32, got {size}")
    return int(num_images)


def _generate(tmp: str, split: str, num_images: int, size: int, seed: int) -> None:
    os.makedirs(os.path.join(tmp, "images"))
    os.makedirs(os.path.join(tmp, "labels"))
    names = _file_names(num_images)
    try:
        from tqdm import tqdm

        it = tqdm(
            range(num_images),
            desc=f"synthetic {split}",
            unit="img",
            disable=not sys.stderr.isatty(),
        )
    except ImportError:  # pragma: no cover
        it = range(num_images)
    for i in it:
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        img, lab = render_scene(rng, size)
        Image.fromarray(img).save(os.path.join(tmp, "images", names[i]))
        Image.fromarray(lab).save(os.path.join(tmp, "labels", names[i]))


def ensure_synthetic(
    root: str, split: str, num_images: int | None = None, size: int = 128, seed: int = 0
) -> str:
    """Make sure ``<root>/textkd_synthetic`` holds the complete ``split`` drawn with these
    parameters and return that directory.

    Generation happens when the split's manifest is missing or records another generator
    version / parameters. It runs under a file lock, into a temporary directory that is renamed
    into place, and the manifest is written last (atomically), so concurrent callers (DDP
    ranks) wait for one generation and never read half a split.

    Args:
        root: the datasets root (e.g. ``$DETECTRON2_DATASETS``).
        split: "train" or "val".
        num_images: images in the split (default 300 train, 60 val).
        size: image side in pixels (square images).
        seed: dataset seed; the two splits never share an image.
    """
    num_images = _split_args(split, num_images, size)
    base = os.path.join(os.path.abspath(os.path.expanduser(root)), SYNTHETIC_DIRNAME)
    params = _params(split, num_images, size, seed)
    if _is_complete(base, split, params):
        return base
    os.makedirs(base, exist_ok=True)
    with _locked(os.path.join(base, ".lock")):
        if _is_complete(base, split, params):
            return base
        logger.info(
            f"generating the synthetic '{split}' split ({num_images} images of {size}×{size}, "
            f"seed {seed}) under {base}"
        )
        with contextlib.suppress(FileNotFoundError):
            os.remove(_manifest_path(base, split))
        tmp = tempfile.mkdtemp(prefix=f".tmp_{split}_", dir=base)
        try:
            _generate(tmp, split, num_images, size, seed)
            for kind in ("images", "labels"):
                dst = os.path.join(base, kind, split)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if os.path.exists(dst):
                    shutil.rmtree(dst)
                os.rename(os.path.join(tmp, kind), dst)
            tmp_manifest = os.path.join(tmp, "manifest.json")
            with open(tmp_manifest, "w") as f:
                json.dump(params, f, indent=1)
            os.replace(tmp_manifest, _manifest_path(base, split))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return base


def load_synthetic(
    root: str, split: str, num_images: int | None = None, size: int = 128, seed: int = 0
) -> list[dict]:
    """Dataset records of the synthetic split (generated first when needed, see
    :func:`ensure_synthetic`): ``[{"file_name", "sem_seg_file_name", "height", "width"}]``
    in file order."""
    base = ensure_synthetic(root, split, num_images=num_images, size=size, seed=seed)
    n = _split_args(split, num_images, size)
    return [
        {
            "file_name": os.path.join(base, "images", split, name),
            "sem_seg_file_name": os.path.join(base, "labels", split, name),
            "height": int(size),
            "width": int(size),
        }
        for name in _file_names(n)
    ]
