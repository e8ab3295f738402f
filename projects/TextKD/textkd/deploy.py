"""Deployable student: one module from image to logits (or labels), and its export (pure PyTorch).

:class:`DeployableSegmentor` wraps a core :class:`~textkd.models.segmentor.Segmentor` with the
normalisation of its config inside: it takes an ``N×3×H×W`` float image tensor with pixel values
0–255 in the model's channel order (``INPUT.FORMAT``, RGB by default) and returns ``N×K×H×W``
logits bilinearly resized to the input size, or the ``N×H×W`` int64 label map (``argmax``). It is
the computation of ``TextKDSemanticSegmentor.inference`` for one unpadded batch (``INPUT.
SIZE_DIVISIBILITY`` ≤ 0, the default) and exports as it is:

* :func:`export_torchscript` traces it (sizes stay dynamic: shapes are read in the graph);
* :func:`export_onnx` writes ONNX with dynamic batch, height and width. PSPNet's adaptive pooling
  to b×b bins has no ONNX form for dynamic sizes: during export it is computed by
  :func:`adaptive_avg_pool2d_matmul` (the same bins as PyTorch, as two averaging matrices).

:func:`compare_outputs` and :func:`measure_latency` are the parity check and timing of
``tools/export_student.py``. No detectron2 here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeployableSegmentor",
    "adaptive_avg_pool2d_matmul",
    "onnx_friendly_pooling",
    "export_torchscript",
    "export_onnx",
    "load_exported",
    "compare_outputs",
    "measure_latency",
    "onnxruntime_available",
]


class DeployableSegmentor(nn.Module):
    """Image (0–255, ``N×3×H×W``) → logits at the input size, or the label map when ``argmax``.

    Args:
        segmentor: a core Segmentor (put in eval mode; its auxiliary head is not run).
        pixel_mean, pixel_std: the config's ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` (input order).
        argmax: return ``N×H×W`` int64 class ids instead of logits.
    """

    def __init__(
        self,
        segmentor: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        argmax: bool = False,
    ) -> None:
        super().__init__()
        in_chans = _input_channels(segmentor)
        if in_chans is not None and in_chans != len(pixel_mean):
            raise ValueError(
                f"the model takes {in_chans} input channels but PIXEL_MEAN has {len(pixel_mean)} "
                "values: a LAD label-conditioned teacher (image + label channel) needs the label "
                "as input and cannot run on images alone; deploy an RGB model (e.g. its student)"
            )
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"PIXEL_MEAN {list(pixel_mean)} and PIXEL_STD {list(pixel_std)} differ"
            )
        self.segmentor = segmentor.eval()
        self.num_classes = int(segmentor.num_classes)
        self.argmax = bool(argmax)
        # the final upsampling resizes like the model's own loss (MODEL.SEM_SEG_HEAD.ALIGN_CORNERS)
        self.align_corners = bool(getattr(segmentor, "align_corners", False))
        self.register_buffer(
            "pixel_mean", torch.tensor([float(v) for v in pixel_mean]).view(1, -1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor([float(v) for v in pixel_std]).view(1, -1, 1, 1), False
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.float() - self.pixel_mean) / self.pixel_std
        logits = self.segmentor(x, with_aux=False).logits
        logits = F.interpolate(
            logits.float(),
            size=image.shape[-2:],
            mode="bilinear",
            align_corners=self.align_corners,
        )
        if self.argmax:
            return logits.argmax(dim=1)
        return logits

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[np.ndarray]:
        """Label maps (H×W uint8/int64 numpy) of H×W×3 uint8 images of any sizes; images of
        the same size share a batch."""
        device = self.pixel_mean.device
        out: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(tuple(im.shape[:2]), []).append(i)
        for idx in by_size.values():
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                x = torch.stack(
                    [torch.from_numpy(np.array(images[i], dtype=np.uint8)) for i in part]
                )
                x = x.permute(0, 3, 1, 2).to(device)
                y = self(x)
                labels = y if self.argmax else y.argmax(dim=1)
                for i, lab in zip(part, labels.cpu().numpy()):
                    out[i] = lab
        return out  # type: ignore[return-value]


def _input_channels(segmentor: nn.Module) -> int | None:
    for m in segmentor.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


# --------------------------------------------------------------------------- pooling for ONNX


def _bin_matrix(pos: torch.Tensor, bins: int) -> torch.Tensor:
    """``bins×n`` averaging matrix of adaptive pooling over a dimension whose positions
    ``0..n-1`` are ``pos`` (float): row i averages ``[floor(i·n/b), ceil((i+1)·n/b))``, as
    ``F.adaptive_avg_pool2d`` does. Built from ``pos`` so n stays dynamic in a traced graph."""
    n = pos[-1:] + 1  # 1-element tensor
    i = torch.arange(bins, dtype=pos.dtype, device=pos.device).unsqueeze(1)  # b×1
    start = torch.floor(i * n / bins)
    end = torch.ceil((i + 1) * n / bins)
    p = pos.unsqueeze(0)
    mask = ((p >= start) & (p < end)).to(pos.dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d_matmul(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` as ``P_h · x · P_wᵀ`` with averaging matrices
    built from the input's size in the graph (exportable with dynamic height and width)."""
    if isinstance(output_size, int):
        bh = bw = output_size
    else:
        bh, bw = output_size
    if bh == 1 and bw == 1:
        return x.mean(dim=(-2, -1), keepdim=True)
    plane = x.reshape(-1, x.shape[-2], x.shape[-1])[0]
    pos_h = torch.cumsum(torch.ones_like(plane[:, 0], dtype=torch.float32), 0) - 1
    pos_w = torch.cumsum(torch.ones_like(plane[0, :], dtype=torch.float32), 0) - 1
    ph = _bin_matrix(pos_h, bh).to(x.dtype)
    pw = _bin_matrix(pos_w, bw).to(x.dtype)
    return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))


@contextlib.contextmanager
def onnx_friendly_pooling():
    """Inside the block, ``F.adaptive_avg_pool2d`` (as the heads call it) and
    ``nn.AdaptiveAvgPool2d`` compute with :func:`adaptive_avg_pool2d_matmul`."""
    orig_fn = F.adaptive_avg_pool2d
    orig_fwd = nn.AdaptiveAvgPool2d.forward
    F.adaptive_avg_pool2d = adaptive_avg_pool2d_matmul  # type: ignore[assignment]
    nn.AdaptiveAvgPool2d.forward = lambda self, x: adaptive_avg_pool2d_matmul(  # type: ignore
        x, self.output_size
    )
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = orig_fn  # type: ignore[assignment]
        nn.AdaptiveAvgPool2d.forward = orig_fwd  # type: ignore[method-assign]


# --------------------------------------------------------------------------- export


def _tmp_path(path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    return path + ".tmp"


def export_torchscript(model: DeployableSegmentor, path: str, sample: torch.Tensor) -> str:
    """Trace ``model`` on ``sample`` and save the TorchScript module to ``path`` (atomically)."""
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (sample,), check_trace=False)
    tmp = _tmp_path(path)
    traced.save(tmp)
    os.replace(tmp, path)
    return path


def export_onnx(
    model: DeployableSegmentor, path: str, sample: torch.Tensor, opset: int = 17
) -> str:
    """Write ``model`` as ONNX to ``path`` with input ``image`` (``N×3×H×W`` float, dynamic N, H,
    W) and output ``labels`` (argmax) or ``logits``."""
    model = model.eval()
    output = "labels" if model.argmax else "logits"
    axes = {0: "batch", 2: "height", 3: "width"}
    out_axes = {0: "batch", 1: "height", 2: "width"} if model.argmax else axes
    tmp = _tmp_path(path)
    import warnings

    with torch.no_grad(), onnx_friendly_pooling(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes read as Python values
        torch.onnx.export(
            model,
            (sample,),
            tmp,
            input_names=["image"],
            output_names=[output],
            dynamic_axes={"image": axes, output: out_axes},
            opset_version=opset,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_exported(
    path: str, fmt: str, device: str = "cpu"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``image tensor -> output tensor`` running the exported file: TorchScript via
    ``torch.jit.load``, ONNX via onnxruntime (ImportError when it is not installed)."""
    if fmt == "torchscript":
        module = torch.jit.load(path, map_location=device).eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return run
    if fmt == "onnx":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        sess = ort.InferenceSession(path, providers=providers)
        name = sess.get_inputs()[0].name

        def run_ort(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])

        return run_ort
    raise ValueError(f"unknown export format {fmt!r} (torchscript or onnx)")


def compare_outputs(reference: torch.Tensor, exported: torch.Tensor, argmax: bool) -> dict:
    """Parity of an exported model's output with PyTorch's: ``max_abs`` and ``max_rel``
    (max |Δ| over max |reference|) of the logits, and ``argmax_agreement`` (fraction of pixels
    with the same class). For label outputs only the agreement is defined."""
    reference = reference.detach().cpu()
    exported = exported.detach().cpu()
    if tuple(reference.shape) != tuple(exported.shape):
        raise ValueError(
            f"exported output has shape {tuple(exported.shape)}, PyTorch {tuple(reference.shape)}"
        )
    if argmax:
        agree = (reference == exported).double().mean().item()
        return {"max_abs": float("nan"), "max_rel": float("nan"), "argmax_agreement": agree}
    diff = (reference.float() - exported.float()).abs().max().item()
    scale = reference.float().abs().max().item()
    agree = (reference.argmax(1) == exported.argmax(1)).double().mean().item()
    return {"max_abs": diff, "max_rel": diff / max(scale, 1e-12), "argmax_agreement": agree}


def measure_latency(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 10, warmup: int = 2
) -> float:
    """Median wall time of ``fn(x)`` in milliseconds (CUDA synchronised when ``x`` is on a GPU)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        sync()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn(x)
            sync()
            times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))
