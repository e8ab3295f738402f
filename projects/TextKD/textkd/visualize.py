"""Pictures of segmentations (pure numpy + Pillow, no detectron2).

* :func:`colorize` paints a label map with the dataset's ``stuff_colors``;
* :func:`overlay` blends it over the image;
* :func:`legend` draws the classes present (colour swatch + name);
* :func:`disagreement` marks the pixels where two label maps differ;
* :func:`side_by_side` joins titled panels; :func:`comparison` builds teacher | student |
  ground truth | disagreement with one legend.

Images are H×W×3 uint8 RGB arrays, label maps H×W integer arrays (``ignore`` pixels unpainted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "default_palette",
    "colorize",
    "overlay",
    "legend",
    "with_legend",
    "disagreement",
    "side_by_side",
    "comparison",
    "present_classes",
    "DISAGREE_COLOR",
]

#: colour of the pixels where two predictions disagree (disagreement panel)
DISAGREE_COLOR = (255, 0, 255)
_TITLE_H = 14
_ROW_H = 14


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A fixed palette (the Pascal VOC bit pattern) for datasets without ``stuff_colors``."""
    out = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def _lut(colors: Sequence[Sequence[int]]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    arr = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    if len(arr) > 255:
        raise ValueError(f"at most 255 class colours are supported, got {len(arr)}")
    lut[: len(arr)] = np.clip(arr, 0, 255)
    return lut


def _check_label(label: np.ndarray, num_colors: int, ignore: int) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"a label map must be H×W, got shape {label.shape}")
    bad = (label != ignore) & ((label < 0) | (label >= num_colors))
    if bad.any():
        raise ValueError(
            f"label value {int(label[bad][0])} has no colour ({num_colors} classes, ignore "
            f"{ignore})"
        )
    return label


def colorize(label: np.ndarray, colors: Sequence[Sequence[int]], ignore: int = 255) -> np.ndarray:
    """H×W×3 uint8: each pixel the colour of its class, ``ignore`` pixels black."""
    label = _check_label(label, len(colors), ignore)
    out = _lut(colors)[np.where(label == ignore, 255, label).astype(np.int64) % 256]
    out[label == ignore] = 0
    return out


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    colors: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore: int = 255,
) -> np.ndarray:
    """The image with the class colours blended in at ``alpha`` (ignore pixels unchanged)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an image must be H×W×3, got shape {image.shape}")
    if image.shape[:2] != np.asarray(label).shape:
        raise ValueError(f"image {image.shape[:2]} and label {np.asarray(label).shape} differ")
    col = colorize(label, colors, ignore).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + col * alpha
    keep = np.asarray(label) == ignore
    out[keep] = image[keep]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _font():
    return ImageFont.load_default()


def legend(
    class_ids: Sequence[int],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    width: int,
) -> np.ndarray:
    """A white strip ``width`` wide listing ``class_ids`` (swatch + name), wrapped in rows."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = []
    for k in class_ids:
        text = names[k] if k < len(names) else str(k)
        tw = int(probe.textlength(text, font=font))
        items.append((k, text, 12 + 4 + tw + 10))
    rows: list[list[tuple[int, str, int]]] = [[]]
    used = 4
    for it in items:
        if rows[-1] and used + it[2] > width:
            rows.append([])
            used = 4
        rows[-1].append(it)
        used += it[2]
    img = Image.new("RGB", (width, max(1, len(rows)) * _ROW_H + 4), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        x, y = 4, 2 + r * _ROW_H
        for k, text, w in row:
            draw.rectangle([x, y + 1, x + 11, y + 11], fill=tuple(int(c) for c in colors[k]))
            draw.text((x + 16, y), text, fill=(0, 0, 0), font=font)
            x += w
    return np.asarray(img)


def present_classes(labels: Sequence[np.ndarray], num_classes: int, ignore: int = 255) -> list[int]:
    """Sorted class ids occurring in any of ``labels`` (ignore left out)."""
    found: set[int] = set()
    for lab in labels:
        vals = np.unique(np.asarray(lab))
        found.update(int(v) for v in vals if v != ignore and 0 <= v < num_classes)
    return sorted(found)


def with_legend(
    picture: np.ndarray,
    labels: Sequence[np.ndarray],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    ignore: int = 255,
) -> np.ndarray:
    """``picture`` with a legend of the classes present in ``labels`` below it."""
    ids = present_classes(labels, len(colors), ignore)
    return np.concatenate([picture, legend(ids, names, colors, picture.shape[1])], axis=0)


def disagreement(
    image: np.ndarray, a: np.ndarray, b: np.ndarray, color: Sequence[int] = DISAGREE_COLOR
) -> np.ndarray:
    """The image in dimmed grey with the pixels where ``a`` and ``b`` differ in ``color``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps of shapes {a.shape} and {b.shape} cannot be compared")
    grey = np.asarray(image, dtype=np.float32).mean(axis=2, keepdims=True) * 0.6 + 40
    out = np.repeat(np.clip(grey, 0, 255), 3, axis=2).astype(np.uint8)
    out[a != b] = np.asarray(color, dtype=np.uint8)
    return out


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str], gap: int = 4) -> np.ndarray:
    """Panels (same height) left to right with a white gap, each under its title."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    h = max(p.shape[0] for p in panels)
    font = _font()
    cols = []
    for i, (p, t) in enumerate(zip(panels, titles)):
        canvas = Image.new("RGB", (p.shape[1], h + _TITLE_H), (255, 255, 255))
        canvas.paste(Image.fromarray(np.ascontiguousarray(p)), (0, _TITLE_H))
        ImageDraw.Draw(canvas).text((2, 1), t, fill=(0, 0, 0), font=font)
        cols.append(np.asarray(canvas))
        if i < len(panels) - 1:
            cols.append(np.full((h + _TITLE_H, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(cols, axis=1)


def comparison(
    image: np.ndarray,
    teacher: np.ndarray,
    student: np.ndarray,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    ground_truth: np.ndarray | None = None,
    alpha: float = 0.5,
    ignore: int = 255,
    titles: Sequence[str] = ("teacher", "student"),
) -> np.ndarray:
    """teacher | student | ground truth (when given) | disagreement (teacher ≠ student pixels
    in :data:`DISAGREE_COLOR`), with a legend of the classes present in any of them."""
    labels = [teacher, student] + ([ground_truth] if ground_truth is not None else [])
    panels = [overlay(image, lab, colors, alpha, ignore) for lab in labels]
    heads = list(titles) + (["ground truth"] if ground_truth is not None else [])
    n_diff = int((np.asarray(teacher) != np.asarray(student)).sum())
    panels.append(disagreement(image, teacher, student))
    heads.append(f"differ: {100.0 * n_diff / max(1, np.asarray(teacher).size):.1f}%")
    return with_legend(side_by_side(panels, heads), labels, names, colors, ignore)
