"""The reference training augmentation (CIRKD protocol) as pure numpy functions.

Training: optionally resize so the long side is ``base_size``; scale by a random factor drawn
uniformly from ``scale_range``, or, when a ``scale_set`` is given, drawn with equal probability from
that discrete set and applied as CIRKD's datasets do (``cv2.resize(img, None, fx=s, fy=s)``, the
factor itself maps the pixels; CIRKD draws from 0.5, 0.6, ..., 2.0) -- bilinear for the image,
nearest for the label; pad bottom/right
up to the crop size where the image is smaller (image with the pixel mean, so it normalises to
0; label with the ignore value); take a random crop; flip horizontally with probability 0.5.
Images are H×W×C uint8 arrays, labels H×W uint8 arrays (or None). Every random draw comes from
the ``numpy.random.Generator`` passed in, so results are reproducible from a seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

Label = np.ndarray | None


def _check(image: np.ndarray, label: Label) -> None:
    if image.ndim != 3:
        raise ValueError(f"image must be H×W×C, got shape {image.shape}")
    if label is not None and label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} differs from image size {image.shape[:2]}")


def resize(image: np.ndarray, label: Label, height: int, width: int) -> tuple[np.ndarray, Label]:
    """Resize to ``height × width``: bilinear interpolation for the image, nearest neighbour for
    the label (so no new class ids appear)."""
    _check(image, label)
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}×{width}")
    if (height, width) == image.shape[:2]:
        return image, label
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    if label is not None:
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return out, label


def rescale(image: np.ndarray, label: Label, scale: float) -> tuple[np.ndarray, Label]:
    """Scale both sides by ``scale``: new size ``(round(h·s), round(w·s))``, at least 1 pixel."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    h, w = image.shape[:2]
    return resize(image, label, max(1, round(h * scale)), max(1, round(w * scale)))


def resize_long_side(image: np.ndarray, label: Label, long_side: int) -> tuple[np.ndarray, Label]:
    """Rescale so that ``max(h, w) == long_side`` (aspect ratio kept); ``long_side <= 0`` keeps
    the image as it is."""
    if long_side <= 0:
        return image, label
    h, w = image.shape[:2]
    s = long_side / max(h, w)
    return resize(image, label, max(1, round(h * s)), max(1, round(w * s)))


def random_scale(
    image: np.ndarray, label: Label, scale_range: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, Label]:
    """Rescale by a factor ``s ~ U(scale_range[0], scale_range[1])``."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale range must satisfy 0 < min <= max, got {list(scale_range)}")
    return rescale(image, label, float(rng.uniform(lo, hi)) if hi > lo else lo)


def rescale_by_factor(image: np.ndarray, label: Label, factor: float) -> tuple[np.ndarray, Label]:
    """Scale both sides by ``factor`` the way CIRKD's datasets do:
    ``cv2.resize(x, None, fx=factor, fy=factor)`` (OpenCV rounds the output size and samples with
    the factor itself), bilinear for the image, nearest neighbour for the label."""
    _check(image, label)
    if not factor > 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    out = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    if out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    if label is not None:
        label = cv2.resize(label, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    return out, label


def check_scale_set(scale_set: Sequence[float]) -> tuple[float, ...]:
    """The discrete scale set as floats; raises when it is empty or holds a value <= 0."""
    values = tuple(float(v) for v in scale_set)
    if not values or any(not v > 0 for v in values):
        raise ValueError(f"scale set must be non-empty with values > 0, got {list(scale_set)}")
    return values


def draw_scale_from_set(scale_set: Sequence[float], rng: np.random.Generator) -> float:
    """One factor from ``scale_set``, each entry with equal probability (one ``rng.integers``
    draw, so the result is a function of the generator's state only)."""
    values = check_scale_set(scale_set)
    return values[int(rng.integers(0, len(values)))]


def random_scale_from_set(
    image: np.ndarray, label: Label, scale_set: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, Label]:
    """Rescale by a factor drawn from ``scale_set`` (:func:`draw_scale_from_set`) with
    :func:`rescale_by_factor`."""
    return rescale_by_factor(image, label, draw_scale_from_set(scale_set, rng))


def pad_to_size(
    image: np.ndarray,
    label: Label,
    min_height: int,
    min_width: int,
    pad_value: Sequence[float],
    ignore_value: int = 255,
) -> tuple[np.ndarray, Label]:
    """Pad bottom and right until the image is at least ``min_height × min_width``: the image with
    ``pad_value`` per channel (rounded to the image dtype), the label with ``ignore_value``."""
    _check(image, label)
    h, w, c = image.shape
    ph, pw = max(min_height - h, 0), max(min_width - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    if len(pad_value) != c:
        raise ValueError(f"pad value has {len(pad_value)} entries for an image with {c} channels")
    fill = np.asarray(pad_value, dtype=np.float64)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        fill = np.clip(np.rint(fill), info.min, info.max)
    out = np.empty((h + ph, w + pw, c), dtype=image.dtype)
    out[...] = fill.astype(image.dtype)
    out[:h, :w] = image
    if label is not None:
        lab = np.full((h + ph, w + pw), ignore_value, dtype=label.dtype)
        lab[:h, :w] = label
        label = lab
    return out, label


def random_crop(
    image: np.ndarray, label: Label, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, Label]:
    """Crop ``height × width`` at a uniformly drawn offset (the image must be at least that big;
    pad first with :func:`pad_to_size`)."""
    _check(image, label)
    h, w = image.shape[:2]
    if h < height or w < width:
        raise ValueError(f"cannot crop {height}×{width} from a {h}×{w} image; pad it first")
    y = int(rng.integers(0, h - height + 1))
    x = int(rng.integers(0, w - width + 1))
    image = image[y : y + height, x : x + width]
    if label is not None:
        label = label[y : y + height, x : x + width]
    return image, label


def random_hflip(
    image: np.ndarray, label: Label, rng: np.random.Generator, prob: float = 0.5
) -> tuple[np.ndarray, Label]:
    """Mirror left-right with probability ``prob``."""
    if rng.random() < prob:
        image = image[:, ::-1]
        if label is not None:
            label = label[:, ::-1]
    return image, label


def train_augment(
    image: np.ndarray,
    label: Label,
    rng: np.random.Generator,
    *,
    crop_size: Sequence[int] | None,
    scale_range: Sequence[float] | None = (0.5, 2.0),
    base_size: int = 0,
    flip: bool = True,
    pad_value: Sequence[float] = (0.0, 0.0, 0.0),
    ignore_value: int = 255,
    scale_set: Sequence[float] | None = None,
) -> tuple[np.ndarray, Label]:
    """The reference training augmentation: long side to ``base_size`` (if > 0) -> random scale
    from ``scale_set`` (if non-empty, :func:`random_scale_from_set`) or else in ``scale_range``
    (if given) -> pad to ``crop_size`` (image: ``pad_value``, label: ``ignore_value``) -> random
    crop ``crop_size`` (if given) -> random horizontal flip (if ``flip``). Returns contiguous
    arrays."""
    _check(image, label)
    image, label = resize_long_side(image, label, base_size)
    if scale_set:
        image, label = random_scale_from_set(image, label, scale_set, rng)
    elif scale_range is not None:
        image, label = random_scale(image, label, scale_range, rng)
    if crop_size is not None:
        ch, cw = int(crop_size[0]), int(crop_size[1])
        image, label = pad_to_size(image, label, ch, cw, pad_value, ignore_value)
        image, label = random_crop(image, label, ch, cw, rng)
    if flip:
        image, label = random_hflip(image, label, rng)
    image = np.ascontiguousarray(image)
    if label is not None:
        label = np.ascontiguousarray(label)
    return image, label
