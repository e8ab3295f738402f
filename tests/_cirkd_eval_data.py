"""The images and labels of the CIRKD evaluation-equality fixture (not a test module).

``tests/fixtures/make_cirkd_eval_fixture.py`` (run once beside the CIRKD code) and
``tests/test_cirkd_eval_equality_d2.py`` build the same tiny CamVid-layout dataset from a seed, so
no image needs to be stored: :func:`synthetic_images` draws smooth colour fields with a few
rectangles (uint8 RGB, CamVid's 360×480), :func:`synthetic_labels` blocky class maps with a void
band; the fixture records a SHA-256 of both so a drift of the generator cannot go unnoticed.
:func:`write_camvid` writes them the way both code bases read CamVid: ``camvid/<split>/x.png``
(the image), ``<split>annot/x.png`` (raw ids, void 11, CIRKD's ``CamvidValSet``) and
``<split>annot_detectron2/x.png`` (void 255, TextKD's prepared labels). Plain torch / numpy /
PIL.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "HEIGHT",
    "WIDTH",
    "NUM_CLASSES",
    "VOID_ID",
    "synthetic_images",
    "synthetic_labels",
    "array_digest",
    "write_camvid",
]

HEIGHT, WIDTH = 360, 480  # CamVid's size (TextKD's CamVid records carry it)
NUM_CLASSES = 11
VOID_ID = 11  # CamVid's raw void id (CIRKD: -1, TextKD: 255)


def synthetic_images(n: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` uint8 RGB images (n×H×W×3): a 6×8 random colour grid bilinearly smoothed to H×W,
    plus three flat rectangles each."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        grid = torch.rand(1, 3, 6, 8, generator=gen) * 255
        img = F.interpolate(grid, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)[0]
        img = img.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy().copy()
        for _ in range(3):
            y0 = int(torch.randint(0, HEIGHT - 60, (1,), generator=gen))
            x0 = int(torch.randint(0, WIDTH - 80, (1,), generator=gen))
            h = int(torch.randint(30, 120, (1,), generator=gen))
            w = int(torch.randint(40, 160, (1,), generator=gen))
            color = (torch.rand(3, generator=gen) * 255).round().to(torch.uint8).numpy()
            img[y0 : y0 + h, x0 : x0 + w] = color
        out.append(img)
    return np.stack(out)


def synthetic_labels(n: int = 2, seed: int = 1) -> np.ndarray:
    """``n`` uint8 label maps (n×H×W) in raw CamVid ids: 9×12 blocks of random classes 0..10 and
    a void (11) band across the bottom rows."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        blocks = torch.randint(0, NUM_CLASSES, (1, 1, 9, 12), generator=gen).float()
        lab = F.interpolate(blocks, size=(HEIGHT, WIDTH), mode="nearest")[0, 0].to(torch.uint8)
        lab = lab.numpy().copy()
        lab[HEIGHT - 24 :] = VOID_ID
        out.append(lab)
    return np.stack(out)


def array_digest(*arrays: np.ndarray) -> str:
    """SHA-256 over the shapes, dtypes and bytes of ``arrays``."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_camvid(root: str, split: str, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Write ``images`` (n×H×W×3 RGB) and raw ``labels`` (n×H×W, void 11) as CamVid ``split``
    under ``root/camvid`` (raw and prepared labels); returns the image paths."""
    base = os.path.join(root, "camvid")
    paths = []
    for sub in (split, split + "annot", split + "annot_detectron2"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for i, (img, lab) in enumerate(zip(images, labels)):
        name = f"synthetic_{i:03d}.png"
        path = os.path.join(base, split, name)
        Image.fromarray(img, "RGB").save(path)
        Image.fromarray(lab, "L").save(os.path.join(base, split + "annot", name))
        prepared = np.where(lab == VOID_ID, 255, lab).astype(np.uint8)
        Image.fromarray(prepared, "L").save(os.path.join(base, split + "annot_detectron2", name))
        paths.append(path)
    return paths
