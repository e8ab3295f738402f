"""Timing and memory utilities and the loss micro-benchmarks of ``tools/benchmark.py``
(framework-free: plain PyTorch, no detectron2).

Timing: every measured call is bracketed by a device synchronisation (``torch.cuda.synchronize``
on CUDA) and ``time.perf_counter``; a series of samples is summarised by :func:`summarize`
(median, mean, standard deviation, quartiles / IQR, min, max). Implementations compared with each
other are timed alternately (:func:`time_interleaved`), so a drifting machine load hits them alike.

Memory:

- :func:`peak_extra_bytes` runs a function and returns the peak number of tensor bytes it
  allocated on top of what was allocated before it: on CUDA ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats`` minus ``memory_allocated`` before; on the CPU the running sum
  of the allocation / free events that ``torch.profiler`` (``profile_memory=True``) records, i.e.
  the same allocator quantity for CPU tensors.
- :func:`current_rss_bytes` / :func:`peak_rss_bytes`: the process resident set size now
  (``/proc/self/statm``) and its lifetime peak (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).
- :func:`state_nbytes`: bytes held by an object's arrays and tensors (an evaluator's state).

Loss micro-benchmarks (each vectorised implementation against the loop reference of
``benchmarks.reference``, same inputs, same run): :func:`bench_noise_labels`,
:func:`bench_ifvd`, :func:`bench_cirkd`; :func:`bench_eval_memory` feeds fake predictions to an
evaluator and records its state size. :data:`TARGETS` holds the figures the tool reports against.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tabulate import tabulate
from textkd.distill.lad import noise_labels
from textkd.distill.losses import cirkd_pixel_pairs, ifvd
from textkd.evaluation.metrics import ConfusionMatrix

from .reference import cirkd_pixel_pairs_loop, ifvd_loop, noise_labels_loop

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA",
    "TARGETS",
    "STATS_KEYS",
    "synchronize",
    "timed",
    "time_calls",
    "time_interleaved",
    "summarize",
    "current_rss_bytes",
    "peak_rss_bytes",
    "peak_extra_bytes",
    "tensor_nbytes",
    "state_nbytes",
    "parse_size",
    "parse_shape",
    "random_labels",
    "bench_noise_labels",
    "bench_ifvd",
    "bench_cirkd",
    "run_loss_benchmarks",
    "bench_eval_memory",
    "format_table",
    "validate_report",
]

#: version tag of the JSON report written by ``tools/benchmark.py --json``
SCHEMA = "textkd-benchmark/1"

#: the targets of the speed / memory issue, as fractions or factors
TARGETS: dict[str, float] = {
    # (step − teacher fwd − student fwd/bwd − optimizer) / (teacher fwd + student fwd/bwd)
    "distill_overhead_max": 0.10,
    # TCD+TRD over a base method: relative step-time and peak-memory increase
    "compare_step_overhead_max": 0.05,
    "compare_memory_overhead_max": 0.05,
    # loop time / vectorised time
    "noise_labels_speedup_min": 5.0,
    "ifvd_speedup_min_19": 5.0,
    "ifvd_speedup_min_150": 20.0,
    "cirkd_speedup_min": 1.0,
    # the two LNM draws of a dual-path LAD teacher step / that step
    "noise_labels_step_fraction_max": 0.02,
    # CIRKD vectorised peak tensor memory (forward+backward) at most this many of one pair's
    # P×P float32 similarity maps plus this many B×C×h×w float32 feature maps: bounded by one
    # pair's maps whatever the batch, never the B² maps of all pairs
    "cirkd_peak_pair_maps_max": 10.0,
    "cirkd_peak_feature_maps_max": 4.0,
    # vectorised vs loop results
    "equality_atol": 1e-5,
}

#: keys of every timing summary (seconds)
STATS_KEYS = ("n", "median", "mean", "std", "q1", "q3", "iqr", "min", "max")


# ------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(dev if dev is not None and dev.type == "cuda" else None)


class timed:
    """Context manager measuring wall time with synchronisation on entry and exit::

    with timed(device) as t:
        work()
    t.seconds
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> timed:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


def time_calls(
    fn: Callable[[], Any],
    iters: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times, each bracketed by
    :class:`timed`; returns the ``iters`` wall times in seconds."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        with timed(device) as t:
            fn()
        out.append(t.seconds)
    return out


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    iters: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> list[list[float]]:
    """Like :func:`time_calls` for several functions whose calls alternate (round i calls each
    function once, in order), so that a machine load drifting over time affects them alike;
    returns one list of ``iters`` wall times per function."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for fn, times in zip(fns, out):
            with timed(device) as t:
                fn()
            times.append(t.seconds)
    return out


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Summary of a series of timings: ``n``, ``median``, ``mean``, sample standard deviation
    ``std`` (0 for one sample), quartiles ``q1``/``q3`` (linear interpolation between order
    statistics, numpy's default), ``iqr = q3 − q1``, ``min``, ``max``."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("summarize: no samples")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"summarize: non-finite samples {values}")
    q1, q3 = (float(v) for v in np.percentile(values, [25, 75]))
    return {
        "n": len(values),
        "median": float(statistics.median(values)),
        "mean": float(statistics.fmean(values)),
        "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": min(values),
        "max": max(values),
    }


# ------------------------------------------------------------------------------------ memory
def current_rss_bytes() -> int | None:
    """Resident set size of this process now, from ``/proc/self/statm`` (None where that file
    does not exist)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Lifetime peak resident set size of this process: ``getrusage(RUSAGE_SELF).ru_maxrss``
    (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _profiler_peak(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """Run ``fn`` under ``torch.profiler`` with memory profiling and return its result and the
    peak of the running sum of the recorded CPU allocation (+) and free (−) events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # profiler internals changed: no figure rather than a wrong one
        logger.warning("torch.profiler exposes no memory events: CPU peak memory unavailable")
        return result, None
    mem = sorted(
        (e.start_ns(), int(e.nbytes()))
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    cur = peak = 0
    for _, nbytes in mem:
        cur += nbytes
        peak = max(peak, cur)
    return result, peak


def peak_extra_bytes(
    fn: Callable[[], Any], device: torch.device | str = "cpu"
) -> tuple[Any, int | None]:
    """Run ``fn`` once and return ``(result, peak)``, where ``peak`` is the largest number of
    tensor bytes allocated during the call on top of those allocated before it: on CUDA
    ``max_memory_allocated − memory_allocated(before)`` after ``reset_peak_memory_stats``; on
    the CPU the peak running sum of ``torch.profiler``'s allocation events (None if the profiler
    records none). The profiler does not see frees of blocks allocated before the call, so on the
    CPU start from a state in which ``fn`` frees nothing it did not allocate itself (e.g.
    gradients set to None), or the figure over-counts."""
    dev = torch.device(device)
    if dev.type == "cuda":
        synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        result = fn()
        synchronize(dev)
        return result, int(torch.cuda.max_memory_allocated(dev) - base)
    return _profiler_peak(fn)


def tensor_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total bytes of distinct tensor storages among ``tensors`` (a storage counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not torch.is_tensor(t):
            continue
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(t), t.numel() * t.element_size()
        if key in seen and key != 0:
            continue
        seen.add(key)
        total += size
    return total


def state_nbytes(obj: Any, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """Bytes held by the numpy arrays, tensors, ``bytes`` and ``str`` reachable from ``obj``
    through its attributes, dicts, lists, tuples and sets (each object counted once): the state
    size of an evaluator, whatever its layout."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen or _depth > 12:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if torch.is_tensor(obj):
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    if isinstance(obj, Mapping):
        return sum(
            state_nbytes(k, seen, _depth + 1) + state_nbytes(v, seen, _depth + 1)
            for k, v in obj.items()
        )
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(state_nbytes(v, seen, _depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        return state_nbytes(vars(obj), seen, _depth + 1)
    return 0


# ------------------------------------------------------------------------------------ inputs
def parse_shape(text: str, ndim: int | None = None, what: str = "shape") -> tuple[int, ...]:
    """``"16x512x1024"`` -> ``(16, 512, 1024)``; ValueError naming ``what`` on bad input."""
    try:
        dims = tuple(int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"{what}: expected integers separated by 'x', got {text!r}") from None
    if any(d <= 0 for d in dims) or (ndim is not None and len(dims) != ndim):
        n = f"{ndim} " if ndim is not None else ""
        raise ValueError(f"{what}: expected {n}positive integers separated by 'x', got {text!r}")
    return dims


def parse_size(text: str) -> tuple[int, int]:
    """``"256x512"`` (height x width) or ``"256"`` (square) -> ``(256, 512)``."""
    dims = parse_shape(text, what="size")
    if len(dims) == 1:
        return dims[0], dims[0]
    if len(dims) != 2:
        raise ValueError(f"size: expected HxW, got {text!r}")
    return dims[0], dims[1]


def random_labels(
    batch: int,
    height: int,
    width: int,
    num_classes: int,
    ignore_label: int = 255,
    block: int = 16,
    ignore_fraction: float = 0.05,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random int64 N×H×W label maps made of ``block``×``block`` patches, each a uniformly drawn
    class in ``[0, num_classes)`` or, with probability ``ignore_fraction``, ``ignore_label``
    (piecewise-constant like real label maps, so every class occurs in contiguous regions)."""
    gh, gw = math.ceil(height / block), math.ceil(width / block)
    coarse = torch.randint(0, num_classes, (batch, gh, gw), generator=generator)
    if ignore_fraction > 0:
        ign = torch.rand((batch, gh, gw), generator=generator) < ignore_fraction
        coarse = torch.where(ign, torch.full_like(coarse, ignore_label), coarse)
    labels = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)
    return labels[:, :height, :width].contiguous().to(device)


def _max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    a, b = a.detach().double(), b.detach().double()
    both_nan = torch.isnan(a) & torch.isnan(b)
    if bool(((torch.isnan(a) | torch.isnan(b)) & ~both_nan).any()):
        return float("inf")
    return float((a - b).abs().masked_fill(both_nan, 0).max())


def _pair_record(
    name: str,
    params: dict[str, Any],
    vec_times: list[float],
    loop_times: list[float],
    target_speedup: float,
    diffs: dict[str, float | None],
    backward: bool,
) -> dict[str, Any]:
    vec, loop = summarize(vec_times), summarize(loop_times)
    speedup = loop["median"] / vec["median"] if vec["median"] > 0 else float("inf")
    finite = [d for d in diffs.values() if d is not None]
    equal = all(d <= TARGETS["equality_atol"] for d in finite)
    return {
        "name": name,
        "params": params,
        "backward": backward,
        "vectorised": vec,
        "loop": loop,
        "speedup": speedup,
        "target_speedup": target_speedup,
        "max_abs_diff": diffs,
        "equal": equal,
        "pass": bool(speedup >= target_speedup and equal),
    }


# ------------------------------------------------------------------------------------ losses
def bench_noise_labels(
    batch: int = 16,
    height: int = 512,
    width: int = 1024,
    num_classes: int = 150,
    iters: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``lad.noise_labels`` against ``reference.noise_labels_loop`` (per image and class) on
    the same N×H×W labels; both draw from a generator seeded alike, so their maps must be equal
    (``max_abs_diff["output"]``). No backward (the label channel is an input)."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    labels = random_labels(batch, height, width, num_classes, generator=gen, device=dev)

    def run(fn):
        g = torch.Generator(device=dev).manual_seed(seed + 1)
        return fn(labels, num_classes, 255, generator=g)

    vec_times, loop_times = time_interleaved(
        [lambda: run(noise_labels), lambda: run(noise_labels_loop)], iters, warmup, dev
    )
    diff = _max_abs_diff(run(noise_labels), run(noise_labels_loop))
    params = {"batch": batch, "height": height, "width": width, "num_classes": num_classes}
    return _pair_record(
        "noise_labels",
        params,
        vec_times,
        loop_times,
        TARGETS["noise_labels_speedup_min"],
        {"output": diff},
        backward=False,
    )


def _forward_backward(fn: Callable[..., torch.Tensor], f_s: torch.Tensor, *args, **kwargs):
    """``loss = fn(student leaf, *args)``, ``loss.backward()``; returns (loss, student grad)."""
    leaf = f_s.detach().clone().requires_grad_(True)
    loss = fn(leaf, *args, **kwargs)
    loss.backward()
    return loss.detach(), leaf.grad


def bench_ifvd(
    num_classes: int = 19,
    batch: int = 2,
    channels: int = 128,
    height: int = 64,
    width: int = 128,
    label_scale: int = 8,
    iters: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Time IFVD forward+backward, ``losses.ifvd`` against ``reference.ifvd_loop`` (per image and
    class), on the same B×C×h×w student/teacher features and labels at ``label_scale`` times the
    feature size; reports the loss and student-gradient differences."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    f_s = torch.randn((batch, channels, height, width), generator=gen).to(dev)
    f_t = torch.randn((batch, channels, height, width), generator=gen).to(dev)
    labels = random_labels(
        batch, height * label_scale, width * label_scale, num_classes, generator=gen, device=dev
    )
    args = (f_t, labels, num_classes, 255)
    vec_times, loop_times = time_interleaved(
        [
            lambda: _forward_backward(ifvd, f_s, *args),
            lambda: _forward_backward(ifvd_loop, f_s, *args),
        ],
        iters,
        warmup,
        dev,
    )
    loss_v, grad_v = _forward_backward(ifvd, f_s, *args)
    loss_l, grad_l = _forward_backward(ifvd_loop, f_s, *args)
    key = "ifvd_speedup_min_150" if num_classes >= 150 else "ifvd_speedup_min_19"
    params = {
        "num_classes": num_classes,
        "batch": batch,
        "channels": channels,
        "height": height,
        "width": width,
        "label_height": height * label_scale,
        "label_width": width * label_scale,
    }
    return _pair_record(
        f"ifvd_{num_classes}",
        params,
        vec_times,
        loop_times,
        TARGETS[key],
        {"loss": _max_abs_diff(loss_v, loss_l), "grad": _max_abs_diff(grad_v, grad_l)},
        backward=True,
    )


def bench_cirkd(
    batch: int = 2,
    channels: int = 128,
    height: int = 64,
    width: int = 128,
    pooling: bool = True,
    temperature: float = 0.1,
    iters: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    measure_memory: bool = True,
) -> dict[str, Any]:
    """Time CIRKD mini-batch pixel pairs forward+backward, ``losses.cirkd_pixel_pairs`` against
    ``reference.cirkd_pixel_pairs_loop`` (per image pair), on the same features, and measure
    each one's peak extra tensor memory (:func:`peak_extra_bytes`) in bytes and in units of one
    pair's P×P float32 similarity map (P = pixels per image after the optional pooling).

    Memory passes when the vectorised peak is at most ``cirkd_peak_pair_maps_max`` pair maps
    plus ``cirkd_peak_feature_maps_max`` input-sized feature maps (B×C×h×w float32: the input
    copy, its gradient, pooled / normalised copies), a bound that does not grow with B²."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    f_s = torch.randn((batch, channels, height, width), generator=gen).to(dev)
    f_t = torch.randn((batch, channels, height, width), generator=gen).to(dev)
    kw = {"temperature": temperature, "pooling": pooling}
    vec_times, loop_times = time_interleaved(
        [
            lambda: _forward_backward(cirkd_pixel_pairs, f_s, f_t, **kw),
            lambda: _forward_backward(cirkd_pixel_pairs_loop, f_s, f_t, **kw),
        ],
        iters,
        warmup,
        dev,
    )
    (loss_v, grad_v), peak_v = (
        peak_extra_bytes(lambda: _forward_backward(cirkd_pixel_pairs, f_s, f_t, **kw), dev)
        if measure_memory
        else (_forward_backward(cirkd_pixel_pairs, f_s, f_t, **kw), None)
    )
    (loss_l, grad_l), peak_l = (
        peak_extra_bytes(lambda: _forward_backward(cirkd_pixel_pairs_loop, f_s, f_t, **kw), dev)
        if measure_memory
        else (_forward_backward(cirkd_pixel_pairs_loop, f_s, f_t, **kw), None)
    )
    ph, pw = (math.ceil(height / 2), math.ceil(width / 2)) if pooling else (height, width)
    pixels = ph * pw
    pair_map = pixels * pixels * 4
    feature_map = batch * channels * height * width * 4
    bound = (
        TARGETS["cirkd_peak_pair_maps_max"] * pair_map
        + TARGETS["cirkd_peak_feature_maps_max"] * feature_map
    )
    params = {
        "batch": batch,
        "channels": channels,
        "height": height,
        "width": width,
        "pooling": pooling,
        "temperature": temperature,
        "pixels_per_image": pixels,
    }
    rec = _pair_record(
        f"cirkd_b{batch}",
        params,
        vec_times,
        loop_times,
        TARGETS["cirkd_speedup_min"],
        {"loss": _max_abs_diff(loss_v, loss_l), "grad": _max_abs_diff(grad_v, grad_l)},
        backward=True,
    )
    mem_pass = None if peak_v is None else bool(peak_v <= bound)
    rec["memory"] = {
        "pair_map_bytes": pair_map,
        "feature_map_bytes": feature_map,
        "bound_bytes": int(bound),
        "all_pairs_bytes": pair_map * batch * batch,
        "vectorised_peak_bytes": peak_v,
        "loop_peak_bytes": peak_l,
        "vectorised_peak_pair_maps": None if peak_v is None else peak_v / pair_map,
        "loop_peak_pair_maps": None if peak_l is None else peak_l / pair_map,
        "method": "cuda_max_memory_allocated" if dev.type == "cuda" else "torch_profiler",
        "pass": mem_pass,
    }
    rec["speed_pass"] = rec["pass"]
    rec["pass"] = bool(rec["pass"] and mem_pass is not False)
    return rec


def run_loss_benchmarks(
    noise_shape: Sequence[int] = (16, 512, 1024),
    noise_classes: int = 150,
    ifvd_classes: Sequence[int] = (19, 150),
    ifvd_shape: Sequence[int] = (2, 128, 64, 128),
    cirkd_batches: Sequence[int] = (2, 8),
    cirkd_shape: Sequence[int] = (128, 64, 128),
    cirkd_pooling: bool = True,
    iters: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """All loss micro-benchmarks with the issue's sizes by default: ``noise_labels`` on
    N×H×W = ``noise_shape`` with ``noise_classes`` classes, IFVD at each of ``ifvd_classes``
    on B×C×h×w = ``ifvd_shape``, CIRKD pixel pairs at each of ``cirkd_batches`` on C×h×w =
    ``cirkd_shape``. Returns one record per benchmark (see :func:`bench_ifvd`)."""
    say = progress or (lambda msg: logger.info(msg))
    n, h, w = (int(v) for v in noise_shape)
    b, c, fh, fw = (int(v) for v in ifvd_shape)
    cc, ch, cw = (int(v) for v in cirkd_shape)
    common = {"iters": iters, "warmup": warmup, "device": device, "seed": seed}
    out = []
    say(f"noise_labels {n}x{h}x{w}, {noise_classes} classes")
    out.append(bench_noise_labels(n, h, w, noise_classes, **common))
    for k in ifvd_classes:
        say(f"ifvd {b}x{c}x{fh}x{fw}, {k} classes")
        out.append(bench_ifvd(int(k), b, c, fh, fw, **common))
    for bb in cirkd_batches:
        say(f"cirkd pixel pairs {bb}x{cc}x{ch}x{cw}, pooling {cirkd_pooling}")
        out.append(bench_cirkd(int(bb), cc, ch, cw, cirkd_pooling, **common))
    return out


# ------------------------------------------------------------------------------------ evaluation
class _MatrixEvaluator:
    """The framework-free evaluator core: one :class:`ConfusionMatrix` fed with
    ``process(inputs, outputs)`` like a detectron2 evaluator (``argmax`` of ``sem_seg``)."""

    def __init__(self, num_classes: int, ignore_label: int = 255) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_label)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            self.matrix.update(out["sem_seg"].argmax(0), inp["sem_seg"])


def bench_eval_memory(
    num_classes: int = 19,
    height: int = 64,
    width: int = 64,
    counts: Sequence[int] = (10, 100, 1000),
    make_evaluator: Callable[[], Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Feed ``count`` fake predictions (random K×H×W scores against random H×W labels, one image
    per ``process`` call) to a fresh evaluator for each of ``counts`` and record its state size
    (:func:`state_nbytes`), the RSS before/after and the time per image. ``make_evaluator``
    returns an object with ``process(inputs, outputs)`` (default: the framework-free
    confusion-matrix core). ``flat`` is True when the state after the largest count is no larger
    than after the smallest."""
    factory = make_evaluator or (lambda: _MatrixEvaluator(num_classes))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for count in counts:
        evaluator = factory()
        if hasattr(evaluator, "reset"):
            evaluator.reset()
        rss_before = current_rss_bytes()
        start = time.perf_counter()
        for i in range(int(count)):
            gt = random_labels(1, height, width, num_classes, generator=gen)[0]
            scores = torch.randn((num_classes, height, width), generator=gen)
            evaluator.process(
                [{"sem_seg": gt, "file_name": f"fake_{i}.png", "height": height, "width": width}],
                [{"sem_seg": scores}],
            )
        seconds = time.perf_counter() - start
        rss_after = current_rss_bytes()
        rows.append(
            {
                "images": int(count),
                "state_bytes": state_nbytes(evaluator),
                "rss_before_bytes": rss_before,
                "rss_after_bytes": rss_after,
                "rss_growth_bytes": (
                    None if rss_before is None or rss_after is None else rss_after - rss_before
                ),
                "seconds_per_image": seconds / max(int(count), 1),
            }
        )
        del evaluator
    flat = bool(rows[-1]["state_bytes"] <= rows[0]["state_bytes"]) if rows else True
    return {
        "num_classes": num_classes,
        "height": height,
        "width": width,
        "rows": rows,
        "flat": flat,
        "pass": flat,
    }


# ------------------------------------------------------------------------------------ output
def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table (``tabulate``'s "simple" format): the header, a dashed rule, one line
    per row; cells as given (``str``, left-aligned, None empty), columns padded to their widest
    cell."""
    text = tabulate(
        [["" if v is None else str(v) for v in r] for r in rows],
        headers=[str(h) for h in header],
        tablefmt="simple",
        disable_numparse=True,
        stralign="left",
    )
    return "\n".join(line.rstrip() for line in text.splitlines())


def _require(obj: Mapping, keys: Iterable[str], where: str) -> None:
    if not isinstance(obj, Mapping):
        raise ValueError(f"benchmark report: {where} must be a mapping, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"benchmark report: {where} lacks keys {missing}")


def _check_stats(stats: Any, where: str) -> None:
    _require(stats, STATS_KEYS, where)
    if not stats["min"] <= stats["median"] <= stats["max"]:
        raise ValueError(f"benchmark report: {where} has median outside [min, max]")


def validate_report(report: Mapping[str, Any]) -> None:
    """Check the layout of a ``tools/benchmark.py`` JSON report (docs/BENCHMARK.md): raise
    ValueError naming the first missing key or bad value."""
    _require(report, ("schema", "env", "settings", "configs", "comparisons"), "top level")
    if report["schema"] != SCHEMA:
        raise ValueError(f"benchmark report: schema {report['schema']!r}, expected {SCHEMA!r}")
    _require(report["env"], ("torch", "python", "device", "threads"), "env")
    _require(report["settings"], ("batch", "size", "iters", "warmup", "input"), "settings")
    for i, c in enumerate(report["configs"]):
        where = f"configs[{i}]"
        _require(c, ("name", "config_file", "opts", "distill", "step", "parts", "memory"), where)
        _require(c, ("eval", "derived", "random_teacher", "random_text_bank"), where)
        _check_stats(c["step"], f"{where}.step")
        for part, stats in c["parts"].items():
            _check_stats(stats, f"{where}.parts.{part}")
        _require(c["memory"], ("peak_bytes", "state_bytes", "step_extra_peak_bytes"), where)
        _require(c["memory"], ("rss_peak_bytes", "rss_growth_bytes", "method"), where)
        _require(c["eval"], ("images_per_s", "batch_seconds"), f"{where}.eval")
        _require(c["derived"], ("distill_overhead", "target", "pass"), f"{where}.derived")
    for i, c in enumerate(report["comparisons"]):
        _require(
            c,
            ("base", "config", "step_overhead", "memory_overhead", "targets", "pass"),
            f"comparisons[{i}]",
        )
    for i, rec in enumerate(report.get("losses") or []):
        where = f"losses[{i}]"
        _require(rec, ("name", "params", "vectorised", "loop", "speedup", "max_abs_diff"), where)
        _require(rec, ("target_speedup", "equal", "pass"), where)
        _check_stats(rec["vectorised"], f"{where}.vectorised")
        _check_stats(rec["loop"], f"{where}.loop")
    if report.get("eval_memory") is not None:
        _require(report["eval_memory"], ("rows", "flat", "pass"), "eval_memory")
