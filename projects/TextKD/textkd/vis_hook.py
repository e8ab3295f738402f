"""TensorBoard pictures of a few fixed validation images during training (detectron2 layer).

:class:`ValImageHook` takes the first ``TEST.VIS_IMAGES`` images of ``DATASETS.TEST[0]`` and, at
every evaluation (``TEST.EVAL_PERIOD``) and at the end of training, puts one picture per image
into detectron2's event storage: prediction | teacher (distillation runs) | ground truth as
colour overlays with a legend. detectron2's TensorBoard writer writes them with the scalars
(tag ``val_images/<i>_<file>``). A failure here is logged once and turns the hook off: a
picture never stops a training run.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils import comm
from PIL import Image

from .d2.mapper import TextKDSemSegDatasetMapper
from .visualize import default_palette, overlay, side_by_side, with_legend

logger = logging.getLogger(__name__)

__all__ = ["ValImageHook", "add_val_image_hook"]


def _resize_nearest(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if label.shape == tuple(hw):
        return label
    im = Image.fromarray(label.astype(np.uint8)).resize((hw[1], hw[0]), Image.NEAREST)
    return np.asarray(im)


class ValImageHook(HookBase):
    """See the module docstring. ``period``: iterations between pictures (0: only at the end)."""

    def __init__(self, cfg, num_images: int, period: int):
        self.cfg = cfg.clone()
        self.num_images = int(num_images)
        self.period = int(period)
        self.inputs: list[dict] | None = None
        self.disabled = False

    # ------------------------------------------------------------------ data
    def _load_inputs(self) -> list[dict]:
        name = self.cfg.DATASETS.TEST[0]
        records = DatasetCatalog.get(name)[: self.num_images]
        mapper = TextKDSemSegDatasetMapper(self.cfg, False)
        return [mapper(r) for r in records]

    def _names_colors(self, k: int):
        meta = MetadataCatalog.get(self.cfg.DATASETS.TEST[0])
        names = list(meta.get("stuff_classes", None) or [str(i) for i in range(k)])
        colors = meta.get("stuff_colors", None)
        if colors is None or len(colors) < k:
            colors = default_palette(k)
        return names, [tuple(int(v) for v in c) for c in colors[:k]]

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def pictures(self, model) -> list[tuple[str, np.ndarray]]:
        """``[(tag, H×W×3 uint8)]`` of the fixed images for ``model`` (eval mode inside)."""
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        if self.inputs is None:
            self.inputs = self._load_inputs()
        inputs = self.inputs
        was_training = model.training
        model.eval()
        cuda = [model.device] if model.device.type == "cuda" else []
        try:
            # the global RNG (e.g. a LAD teacher's label-code noise) stays as training left it
            with torch.random.fork_rng(devices=cuda):
                preds, teacher = self._predict(model, inputs)
        finally:
            model.train(was_training)
        return self._draw(model, inputs, preds, teacher)

    @staticmethod
    def _predict(model, inputs) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Label maps of the model (a distillation model's student) and of its teacher."""
        preds = [o["sem_seg"].argmax(0).cpu().numpy() for o in model(inputs)]
        teacher = None
        if getattr(model, "teacher", None) is not None:
            lad = getattr(model, "teacher_lad", None) is not None
            images, targets = model.preprocess(inputs, need_targets=lad)
            t_out = model.teacher_forward(inputs, targets)
            runs = model.postprocess({"sem_seg": t_out.logits}, inputs, images)
            teacher = [r["sem_seg"].argmax(0).cpu().numpy() for r in runs]
        return preds, teacher

    def _draw(self, model, inputs, preds, teacher) -> list[tuple[str, np.ndarray]]:
        names, colors = self._names_colors(model.num_classes)
        out = []
        for i, inp in enumerate(inputs):
            img = inp["image"].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            if self.cfg.INPUT.FORMAT == "BGR":
                img = img[..., ::-1]
            img = np.ascontiguousarray(img[..., :3])
            hw = img.shape[:2]
            labels = [_resize_nearest(preds[i], hw)]
            titles = ["prediction"]
            if teacher is not None:
                labels.append(_resize_nearest(teacher[i], hw))
                titles.append("teacher")
            if "sem_seg" in inp:
                labels.append(inp["sem_seg"].cpu().numpy())
                titles.append("ground truth")
            panels = [overlay(img, lab, colors) for lab in labels]
            pic = with_legend(side_by_side(panels, titles), labels, names, colors)
            base = os.path.splitext(os.path.basename(inp.get("file_name", str(i))))[0]
            out.append((f"val_images/{i}_{base}", pic))
        return out

    def _log(self) -> None:
        if self.disabled:
            return
        try:
            pics = self.pictures(self.trainer.model)
        except Exception as e:  # noqa: BLE001 - a picture must not stop training
            self.disabled = True
            logger.warning(
                "validation images for TensorBoard turned off: %s: %s", type(e).__name__, e
            )
            return
        storage = self.trainer.storage
        for tag, pic in pics:
            storage.put_image(tag, np.ascontiguousarray(pic.transpose(2, 0, 1)))

    def after_step(self) -> None:
        nxt = self.trainer.iter + 1
        if self.period > 0 and nxt % self.period == 0 and nxt != self.trainer.max_iter:
            self._log()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._log()


def add_val_image_hook(cfg, hooks: list) -> list:
    """``hooks`` with a :class:`ValImageHook` before the writer (main process, when
    ``TEST.VIS_IMAGES`` > 0 and there is a test dataset); otherwise ``hooks`` unchanged."""
    n = int(cfg.TEST.get("VIS_IMAGES", 0))
    if n <= 0 or not cfg.DATASETS.TEST or not comm.is_main_process():
        return hooks
    hook = ValImageHook(cfg, n, cfg.TEST.EVAL_PERIOD)
    pos = next((i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)), len(hooks))
    return hooks[:pos] + [hook] + hooks[pos:]
