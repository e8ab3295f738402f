#!/usr/bin/env python
"""Speed and memory benchmark of TextKD training (docs/BENCHMARK.md).

For one or more configs, in one process: the training step (median and spread over ``--iters``
iterations after ``--warmup``), its parts (teacher forward; student forward+backward with the
task loss; distillation losses forward+backward; optimizer), peak memory and evaluation
throughput; derived figures against the targets (distillation overhead, ``--compare``); the loss
micro-benchmarks against their loop references (``--losses``) and the evaluator's memory
(``--eval-memory``). Prints tables and writes JSON (``--json PATH``).

A config is given as one shell word ``[NAME=]PATH [KEY VALUE ...]``: the name (default: the file
name without ``.yaml``) and the config file, then overrides of that config only::

    python tools/benchmark.py --random-teacher --random-text-bank --compare cwd \\
        --config-file configs/Synthetic/deeplabv3_r18_baseline.yaml \\
                      cwd=configs/Synthetic/deeplabv3_r18_cwd.yaml \\
                      "cwd_tcd_trd=configs/Synthetic/deeplabv3_r18_cwd.yaml \\
                          MODEL.DISTILL.TCD.WEIGHT 3.0 MODEL.DISTILL.TRD.WEIGHT 1.0" \\
        --json output/benchmark.json
    python tools/benchmark.py --losses --eval-memory --json output/benchmark_losses.json

``--opts KEY VALUE ...`` applies to every config. ``--random-teacher`` writes a random-init
teacher checkpoint to a temporary directory (benchmarking only: the output marks it; training
never does this). ``--random-text-bank`` replaces a CLIP text bank by the random control bank of
the same size (same cost, no CLIP weights needed).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import glob
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "projects", "TextKD"))
sys.path.insert(0, ROOT)  # the benchmarks/ package

import torch  # noqa: E402

from benchmarks import measure as B  # noqa: E402

logger = logging.getLogger("textkd.tools.benchmark")

DEFAULT_LAD_FALLBACK = (
    "lad_teacher=configs/Synthetic/deeplabv3_r18_baseline.yaml "
    "MODEL.LAD.ENABLED True MODEL.SEG_BACKBONE.IN_CHANS 4"
)


# ------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/BENCHMARK.md for the JSON layout and measured figures.",
    )
    p.add_argument(
        "--config-file",
        nargs="+",
        default=[],
        metavar="SPEC",
        help="configs to measure, each '[NAME=]PATH [KEY VALUE ...]' (quote it as one word)",
    )
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for every config")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--size", default="256x256", help="random input HxW (default 256x256)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up iterations (default 2)")
    p.add_argument("--eval-iters", type=int, default=None, help="timed inference batches")
    p.add_argument(
        "--dataset-loader",
        action="store_true",
        help="feed the config's train loader (Trainer.build_train_loader) instead of random input",
    )
    p.add_argument(
        "--random-teacher",
        action="store_true",
        help="BENCHMARK ONLY: use a random-init teacher checkpoint written to a temp dir",
    )
    p.add_argument(
        "--random-text-bank",
        action="store_true",
        help="use the random control text bank (same K×D size) instead of a CLIP cache",
    )
    p.add_argument(
        "--no-pretrained",
        action="store_true",
        help="build the backbones without their ImageNet weights (MODEL.SEG_BACKBONE.PRETRAINED "
        "''): timing and memory do not depend on the initial weights",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="BASE[:OTHER]",
        help="step-time and peak-memory overhead of OTHER (default: every other config) over BASE",
    )
    p.add_argument(
        "--no-profile-memory",
        action="store_true",
        help="CPU: skip the profiled step that measures the step's peak tensor memory",
    )
    # loss micro-benchmarks
    p.add_argument("--losses", action="store_true", help="run the loss micro-benchmarks")
    p.add_argument("--loss-iters", type=int, default=3)
    p.add_argument("--loss-warmup", type=int, default=1)
    p.add_argument("--noise-shape", default="16x512x1024", help="noise_labels N x H x W")
    p.add_argument("--noise-classes", type=int, default=150)
    p.add_argument("--ifvd-shape", default="2x128x64x128", help="IFVD features B x C x h x w")
    p.add_argument("--ifvd-classes", type=int, nargs="+", default=[19, 150])
    p.add_argument("--cirkd-shape", default="128x64x128", help="CIRKD features C x h x w")
    p.add_argument("--cirkd-batches", type=int, nargs="+", default=[2, 8])
    p.add_argument(
        "--no-cirkd-pooling", action="store_true", help="CIRKD without the 2×2 average pooling"
    )
    p.add_argument(
        "--lad-config",
        default="",
        metavar="SPEC",
        help="LAD teacher config for the noise_labels / step ratio (default: a configs/Synthetic "
        "*lad* config, else the R18 baseline with MODEL.LAD.ENABLED True, IN_CHANS 4)",
    )
    p.add_argument("--no-lad-step", action="store_true", help="skip the LAD teacher step")
    # evaluator memory
    p.add_argument("--eval-memory", action="store_true", help="measure the evaluator's memory")
    p.add_argument("--eval-memory-counts", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--eval-memory-size", default="128x128")
    p.add_argument(
        "--eval-memory-dataset",
        default="",
        help="registered dataset whose classes the evaluator uses (default: the first config's "
        "DATASETS.TEST[0], else textkd_synthetic_val_sem_seg)",
    )
    # runtime
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", metavar="PATH", help="write the report as JSON")
    p.add_argument("--verbose", action="store_true", help="log model building at INFO level")
    return p


def parse_config_spec(spec: str) -> tuple[str, str, list[str]]:
    """``"[NAME=]PATH [KEY VALUE ...]"`` -> ``(name, path, opts)``; ValueError on a bad spec."""
    words = shlex.split(spec)
    if not words:
        raise ValueError("empty --config-file entry")
    head, opts = words[0], words[1:]
    name, sep, path = head.partition("=")
    if not sep:
        name, path = "", head
    if not path:
        raise ValueError(f"--config-file {spec!r}: no config path")
    if len(opts) % 2:
        raise ValueError(
            f"--config-file {spec!r}: overrides must be KEY VALUE pairs, got {len(opts)} words"
        )
    if not name:
        name = os.path.splitext(os.path.basename(path))[0]
    return name, path, opts


def _unique_names(specs: list[tuple[str, str, list[str]]]) -> list[tuple[str, str, list[str]]]:
    seen: dict[str, int] = {}
    out = []
    for name, path, opts in specs:
        if name in seen:
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 0
        out.append((name, path, opts))
    return out


def _resolve_path(path: str) -> str:
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    alt = os.path.join(ROOT, path)
    return alt if os.path.isfile(alt) else path


# ------------------------------------------------------------------------------------ environment
def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and threads of this run."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = _cpu_name()
    try:
        import detectron2

        env["detectron2"] = detectron2.__version__
    except ImportError:
        env["detectron2"] = None
    try:
        env["git_commit"] = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# ------------------------------------------------------------------------------------ configs
@dataclass
class ConfigRun:
    """One config under measurement: its model, optimizer, input source and the samples."""

    name: str
    path: str
    opts: list[str]
    cfg: Any = None
    model: Any = None
    optimizer: Any = None
    source: Any = None
    distill: bool = False
    random_teacher: bool = False
    random_text_bank: bool = False
    times: dict[str, list[float]] = field(default_factory=dict)
    loss_keys: list[str] = field(default_factory=list)
    state_bytes: int = 0
    extra_peak: int | None = None
    cuda_max_allocated: int | None = None
    rss_build_growth: int | None = None
    rss_growth: int = 0
    rss_peak: int | None = None
    memory_method: str | None = None

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)


def _needs_text_bank(cfg) -> bool:
    d = cfg.MODEL.DISTILL
    return cfg.MODEL.META_ARCHITECTURE == "DistillSemanticSegmentor" and (
        d.TCD.WEIGHT > 0 or d.TRD.WEIGHT > 0 or d.TRD.MIMIC_WEIGHT > 0
    )


def write_random_teacher(cfg, directory: str, name: str, seed: int) -> str:
    """Write a random-init checkpoint of the teacher described by ``cfg``'s teacher config
    (``segmentor.*`` keys, the layout the strict teacher loader expects) and return its path.
    For benchmarking only."""
    from textkd.d2.build import build_segmentor_from_cfg
    from textkd.d2.distill_arch import load_teacher_config
    from textkd.d2.teacher import build_d2_model, is_d2_teacher

    tcfg = load_teacher_config(cfg)
    torch.manual_seed(seed)
    path = os.path.join(directory, f"random_teacher_{name.replace(os.sep, '_')}.pth")
    if is_d2_teacher(cfg):  # a detectron2 teacher: its own state dict, as DetectionCheckpointer
        torch.save({"model": build_d2_model(tcfg).state_dict()}, path)
        return path
    teacher = build_segmentor_from_cfg(tcfg)
    torch.save({"model": {f"segmentor.{k}": v for k, v in teacher.state_dict().items()}}, path)
    return path


def build_run(
    name: str, path: str, opts: list[str], args, device: torch.device, tmpdir: str
) -> ConfigRun:
    """Config (``textkd.engine.load_config``) -> model (detectron2 ``build_model``), optimizer
    (the trainer's), and the input source."""
    from detectron2.modeling import build_model
    from textkd.engine import Trainer, check_config, load_config

    run = ConfigRun(name=name, path=path, opts=list(args.opts) + list(opts))
    if args.no_pretrained:
        run.opts += ["MODEL.SEG_BACKBONE.PRETRAINED", ""]
    cfg = load_config(_resolve_path(path), run.opts)
    check_config(cfg, "benchmark")
    cfg.MODEL.DEVICE = str(device)
    if args.dataset_loader:
        cfg.SOLVER.IMS_PER_BATCH = args.batch
    run.distill = cfg.MODEL.META_ARCHITECTURE == "DistillSemanticSegmentor"
    if run.distill and args.random_teacher:
        # the random teacher's weights all come from the checkpoint written below: its backbone
        # needs no ImageNet file
        from textkd.d2.teacher import is_d2_teacher

        teacher_cfg = cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE
        if teacher_cfg and not os.path.isfile(teacher_cfg):
            cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = _resolve_path(teacher_cfg)
        if not is_d2_teacher(cfg):  # a detectron2 teacher's build reads no ImageNet file
            teacher_opts = list(cfg.MODEL.DISTILL.TEACHER.OPTS)
            cfg.MODEL.DISTILL.TEACHER.OPTS = teacher_opts + ["MODEL.SEG_BACKBONE.PRETRAINED", ""]
        cfg.MODEL.DISTILL.TEACHER.WEIGHTS = write_random_teacher(cfg, tmpdir, name, args.seed)
        run.random_teacher = True
    if args.random_text_bank and _needs_text_bank(cfg) and cfg.MODEL.TEXT_BANK.SOURCE == "clip":
        cfg.MODEL.TEXT_BANK.SOURCE = "random"
        run.random_text_bank = True
    cfg.freeze()
    run.cfg = cfg
    torch.manual_seed(args.seed)
    rss0 = B.current_rss_bytes()
    run.model = build_model(cfg)
    run.model.train()
    run.optimizer = Trainer.build_optimizer(cfg, run.model)
    rss1 = B.current_rss_bytes()
    run.rss_build_growth = None if rss0 is None or rss1 is None else rss1 - rss0
    if args.dataset_loader:
        run.source = LoaderBatches(Trainer.build_train_loader(cfg))
    else:
        h, w = B.parse_size(args.size)
        run.source = RandomBatches(
            args.batch,
            h,
            w,
            int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
            int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
            args.seed,
        )
    return run


class RandomBatches:
    """One fixed batch in detectron2's ``batched_inputs`` format: random uint8 3×H×W images
    (channel order irrelevant for random pixels) and blocky random int64 labels with the
    config's class count and ~5 % ignore pixels."""

    def __init__(self, batch: int, h: int, w: int, num_classes: int, ignore: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        labels = B.random_labels(batch, h, w, num_classes, ignore, generator=gen)
        self.batch = [
            {
                "image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
                "sem_seg": labels[i],
                "height": h,
                "width": w,
                "file_name": f"random_{i}.png",
            }
            for i in range(batch)
        ]

    def next(self) -> list[dict]:
        return self.batch


class LoaderBatches:
    """Batches from a detectron2 train loader (infinite)."""

    def __init__(self, loader):
        self._it = iter(loader)

    def next(self) -> list[dict]:
        return next(self._it)


# ------------------------------------------------------------------------------------ one step
def run_step(model, optimizer, batch: list[dict]) -> dict[str, torch.Tensor]:
    """The training step as detectron2's SimpleTrainer runs it: forward -> loss dict, sum,
    ``zero_grad``, backward, ``optimizer.step``."""
    loss_dict = model(batch)
    losses = sum(loss_dict.values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    return loss_dict


def _leaf_output(out):
    """A copy of a SegOutput whose tensors are detached leaves that require grad, so that the
    distillation losses can be differentiated up to the student outputs only."""
    from textkd.models.outputs import SegOutput

    def leaf(t):
        return None if t is None else t.detach().requires_grad_(True)

    return SegOutput(
        logits=leaf(out.logits),
        feature=leaf(out.feature),
        aux_logits=leaf(out.aux_logits),
        extras={k: leaf(v) for k, v in out.extras.items()},
    )


def run_step_parts(model, optimizer, batch: list[dict], device: torch.device) -> dict[str, float]:
    """The same step, decomposed and timed part by part (synchronised):

    * ``student_forward``: normalisation + student forward + task losses (for a single model its
      whole ``training_losses``, e.g. both LAD paths and their consistency);
    * ``teacher_forward``: the teacher's normalisation (+ label code) and forward (no_grad);
    * ``distill``: every distillation term and text plugin (adapters, projectors, probe) forward
      + backward, on detached copies of the student outputs (gradients stop there);
    * ``student_backward``: backward through the student of the task losses together with the
      gradients the distillation losses put on the student outputs;
    * ``optimizer``: ``zero_grad`` + ``step``.

    The gradients equal those of :func:`run_step` (the chain rule split at the student outputs).
    """
    from detectron2.utils.events import get_event_storage
    from textkd.d2.distill_arch import DistillSemanticSegmentor

    times: dict[str, float] = {}
    distill = isinstance(model, DistillSemanticSegmentor)
    with B.timed(device) as t:
        images, targets = model.preprocess(batch, need_targets=True)
        if distill:
            s_out = model.run_segmentor(images.tensor, with_aux=True)
            task = model.task_losses(s_out, targets)
        else:
            task = model.training_losses(images.tensor, targets)
    times["student_forward"] = t.seconds
    if distill:
        with B.timed(device) as t:
            t_out = model.teacher_forward(batch, targets)
        times["teacher_forward"] = t.seconds
    with B.timed(device) as t:
        optimizer.zero_grad()
    zero_grad_s = t.seconds
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    if distill:
        with B.timed(device) as t:
            leaf = _leaf_output(s_out)
            losses = model.distiller(leaf, t_out, targets)
            if model.text_distiller is not None:
                name = "feature"
                losses.update(
                    model.text_distiller(
                        leaf.get(name),
                        t_out.get(name),
                        targets,
                        iteration=get_event_storage().iter,
                    )
                )
            total = sum(losses.values()) if losses else None
            if total is not None and total.requires_grad:
                total.backward()
        times["distill"] = t.seconds
        pairs = [(s_out.logits, leaf.logits), (s_out.feature, leaf.feature)]
        pairs += [(s_out.aux_logits, leaf.aux_logits)]
        pairs += [(s_out.extras[k], leaf.extras[k]) for k in s_out.extras]
        grads = [(s, lf.grad) for s, lf in pairs if s is not None and lf.grad is not None]
    with B.timed(device) as t:
        tensors = [sum(task.values())] + [s for s, _ in grads]
        torch.autograd.backward(tensors, [None] + [g for _, g in grads])
    times["student_backward"] = t.seconds
    with B.timed(device) as t:
        optimizer.step()
    times["optimizer"] = zero_grad_s + t.seconds
    return times


def model_state_bytes(model, optimizer) -> int:
    """Bytes of the model's parameters, buffers and gradients and of the optimizer state."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    return B.tensor_nbytes(tensors)


# ------------------------------------------------------------------------------------ phases
def _track_rss(run: ConfigRun, fn):
    before = B.current_rss_bytes()
    result = fn()
    after = B.current_rss_bytes()
    if before is not None and after is not None:
        run.rss_growth += max(0, after - before)
    return result


def _timed_step(run: ConfigRun, device: torch.device, storage, it: int) -> None:
    data = B.timed(device)
    with data:
        batch = run.source.next()
    run.add("data", data.seconds)
    storage.iter = it
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    with B.timed(device) as t:
        loss_dict = _track_rss(run, lambda: run_step(run.model, run.optimizer, batch))
    run.add("step", t.seconds)
    run.loss_keys = sorted(loss_dict)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        run.extra_peak = max(run.extra_peak or 0, int(peak - base))
        run.cuda_max_allocated = max(run.cuda_max_allocated or 0, int(peak))
        run.memory_method = "cuda_allocator"


def measure(
    runs: list[ConfigRun],
    args,
    device: torch.device,
    parts: bool = True,
    evaluate: bool = True,
    memory: bool = True,
) -> None:
    """Warm-up, then ``--iters`` rounds; in each round every config runs one timed step and
    (``parts``) one timed decomposed step, so that a drifting machine load affects all configs
    and both measurements alike; then each config's memory (CPU: two profiled steps)."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        for run in runs:
            _progress(f"[{run.name}] warm-up ({args.warmup} steps)")
            for i in range(args.warmup):
                storage.iter = i
                run_step(run.model, run.optimizer, run.source.next())
        _progress(
            f"timing {args.iters} steps{' and their parts' if parts else ''} of "
            f"{len(runs)} config(s)"
        )
        it = args.warmup
        for r in range(args.iters):
            if args.iters > 1:
                _progress(f"round {r + 1}/{args.iters}")
            for run in runs:
                _timed_step(run, device, storage, it)
                if parts:
                    storage.iter = it + 1
                    batch = run.source.next()
                    times = _track_rss(
                        run, lambda r=run, b=batch: run_step_parts(r.model, r.optimizer, b, device)
                    )
                    for k, v in times.items():
                        run.add(k, v)
                    run.add(
                        "student_forward_backward",
                        times["student_forward"] + times["student_backward"],
                    )
            it += 2
        for run in runs:
            if memory and device.type != "cuda" and not args.no_profile_memory:
                _progress(f"[{run.name}] profiling the memory of two steps")
                storage.iter = it
                run.optimizer.zero_grad(set_to_none=True)
                run.state_bytes = model_state_bytes(run.model, run.optimizer)
                batch = run.source.next()

                def two_steps(r=run, b=batch):
                    run_step(r.model, r.optimizer, b)
                    run_step(r.model, r.optimizer, b)

                _, run.extra_peak = B.peak_extra_bytes(two_steps, device)
                run.memory_method = "torch_profiler" if run.extra_peak is not None else None
            else:
                run.state_bytes = model_state_bytes(run.model, run.optimizer)
            run.rss_peak = B.peak_rss_bytes()
    if evaluate:
        n = args.eval_iters or args.iters
        _progress(f"timing {n} inference batches")
        batches = {run.name: run.source.next() for run in runs}
        for run in runs:
            run.model.eval()
        with torch.no_grad():
            for run in runs:
                for _ in range(max(1, args.warmup)):
                    run.model(batches[run.name])
            for _ in range(n):
                for run in runs:
                    with B.timed(device) as t:
                        _track_rss(run, lambda r=run: r.model(batches[r.name]))
                    run.add("eval_batch", t.seconds)
        for run in runs:
            run.model.train()


def _progress(msg: str) -> None:
    print(f"[benchmark] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ records
def config_record(run: ConfigRun, args) -> dict[str, Any]:
    """The JSON record of one measured config."""
    step = B.summarize(run.times["step"])
    part_names = ["student_forward", "student_backward", "student_forward_backward", "optimizer"]
    if run.distill:
        part_names = ["teacher_forward"] + part_names + ["distill"]
    parts = {k: B.summarize(run.times[k]) for k in part_names if k in run.times}
    derived: dict[str, Any] = {
        "distill_overhead": None,
        "distill_part_fraction": None,
        "target": B.TARGETS["distill_overhead_max"],
        "pass": None,
    }
    if parts:
        teacher = parts["teacher_forward"]["median"] if run.distill else 0.0
        student = parts["student_forward_backward"]["median"]
        optim = parts["optimizer"]["median"]
        networks = teacher + student
        derived["networks_seconds"] = networks
        if run.distill and networks > 0:
            derived["distill_overhead"] = (step["median"] - networks - optim) / networks
            derived["distill_part_fraction"] = parts["distill"]["median"] / networks
            derived["pass"] = bool(derived["distill_overhead"] <= derived["target"])
            # the same formula per round (a step and its decomposed twin run back to back), then
            # the median: less sensitive to a machine load that drifts between rounds
            per_round = [
                (st - te - sfb - op) / (te + sfb)
                for st, te, sfb, op in zip(
                    run.times["step"],
                    run.times["teacher_forward"],
                    run.times["student_forward_backward"],
                    run.times["optimizer"],
                )
            ]
            derived["distill_overhead_paired"] = B.summarize(per_round)["median"]
        elif networks > 0:
            derived["framework_overhead"] = (step["median"] - networks - optim) / networks
    batch_size = len(run.source.next())
    eval_rec: dict[str, Any] = {"images_per_s": None, "batch_seconds": None, "batch": batch_size}
    if "eval_batch" in run.times:
        ev = B.summarize(run.times["eval_batch"])
        eval_rec["batch_seconds"] = ev
        eval_rec["images_per_s"] = batch_size / ev["median"] if ev["median"] > 0 else None
    peak = None if run.extra_peak is None else run.state_bytes + run.extra_peak
    params = sum(p.numel() for p in run.model.parameters())
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    cfg = run.cfg
    return {
        "name": run.name,
        "config_file": run.path,
        "opts": run.opts,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "distill": run.distill,
        "random_teacher": run.random_teacher,
        "random_text_bank": run.random_text_bank,
        "amp_dtype": cfg.MODEL.AMP_DTYPE,
        "teacher_amp_dtype": cfg.MODEL.DISTILL.TEACHER.AMP_DTYPE if run.distill else None,
        "channels_last": bool(cfg.MODEL.CHANNELS_LAST),
        "pretrained": cfg.MODEL.SEG_BACKBONE.PRETRAINED,
        "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        "parameters": params,
        "trainable_parameters": trainable,
        "loss_keys": run.loss_keys,
        "step": step,
        "data": B.summarize(run.times["data"]) if run.times.get("data") else None,
        "samples": {k: list(v) for k, v in run.times.items()},
        "parts": parts,
        "memory": {
            "peak_bytes": peak,
            "state_bytes": run.state_bytes,
            "step_extra_peak_bytes": run.extra_peak,
            "method": run.memory_method,
            "cuda_max_memory_allocated_bytes": run.cuda_max_allocated,
            "rss_build_growth_bytes": run.rss_build_growth,
            "rss_growth_bytes": run.rss_growth,
            "rss_peak_bytes": run.rss_peak,
        },
        "eval": eval_rec,
        "derived": derived,
    }


def comparisons(records: list[dict], specs: list[str]) -> list[dict]:
    """Relative step-time and peak-memory overhead of configs over a base config."""
    by_name = {r["name"]: r for r in records}
    out = []
    for spec in specs:
        base, _, other = spec.partition(":")
        others = [other] if other else [n for n in by_name if n != base]
        b = by_name[base]
        for name in others:
            o = by_name[name]
            step = o["step"]["median"] / b["step"]["median"] - 1.0
            # per round (the configs' steps of one round run back to back), then the median
            paired = [x / y - 1.0 for x, y in zip(o["samples"]["step"], b["samples"]["step"])]
            bm, om = b["memory"]["peak_bytes"], o["memory"]["peak_bytes"]
            mem = None if not bm or om is None else om / bm - 1.0
            targets = {
                "step": B.TARGETS["compare_step_overhead_max"],
                "memory": B.TARGETS["compare_memory_overhead_max"],
            }
            step_pass = step <= targets["step"]
            mem_pass = None if mem is None else mem <= targets["memory"]
            out.append(
                {
                    "base": base,
                    "config": name,
                    "step_overhead": step,
                    "step_overhead_paired": B.summarize(paired)["median"],
                    "memory_overhead": mem,
                    "targets": targets,
                    "step_pass": step_pass,
                    "memory_pass": mem_pass,
                    "pass": bool(step_pass and mem_pass is not False),
                }
            )
    return out


def _check_compare_specs(specs: list[str], names: list[str]) -> None:
    for spec in specs:
        base, _, other = spec.partition(":")
        for n in [base] + ([other] if other else []):
            if n not in names:
                raise ValueError(f"--compare {spec!r}: no config named {n!r}; configs: {names}")


# ------------------------------------------------------------------------------------ LAD step
def _find_lad_config() -> str:
    """A configs/Synthetic config with MODEL.LAD.ENABLED True, or the R18 fallback spec."""
    from textkd.engine import load_config

    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "Synthetic", "*lad*.yaml"))):
        try:
            cfg = load_config(path)
        except Exception:  # noqa: BLE001 - an unusable candidate is skipped
            continue
        if cfg.MODEL.LAD.ENABLED and cfg.MODEL.META_ARCHITECTURE == "TextKDSemanticSegmentor":
            return f"lad_teacher={os.path.relpath(path, ROOT)}"
    return DEFAULT_LAD_FALLBACK


def lad_step_ratio(args, device: torch.device, tmpdir: str, num_classes: int) -> dict[str, Any]:
    """A LAD teacher training step (both noised-label paths) at ``--batch``/``--size`` with
    ``num_classes`` classes, and the time of its ``noise_labels`` draws at the same shape:
    ``fraction = draws × median(noise_labels) / median(step)``."""
    from textkd.distill.lad import noise_labels

    spec = args.lad_config or _find_lad_config()
    name, path, opts = parse_config_spec(spec)
    if not args.dataset_loader:
        # random inputs with the noise benchmark's class count; no dataset, so no metadata check
        opts = opts + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes)]
        opts += ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
    _progress(f"LAD teacher step: {name} ({path} {' '.join(opts)})")
    run = build_run(name, path, opts, args, device, tmpdir)
    if run.cfg.MODEL.LAD.ENABLED is not True:
        raise ValueError(f"--lad-config {spec!r}: MODEL.LAD.ENABLED is not True")
    measure([run], args, device, parts=False, evaluate=False, memory=False)
    step = B.summarize(run.times["step"])
    batch = run.source.next()
    _, targets = run.model.preprocess(batch, need_targets=True)
    num_classes = int(run.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    alpha = run.model.lad.alpha
    noise = B.summarize(
        B.time_calls(
            lambda: noise_labels(targets, num_classes, 255, alpha, run.model.lad.sigma),
            args.loss_iters,
            args.loss_warmup,
            device,
        )
    )
    draws = 2 if run.cfg.MODEL.LAD.DUAL_PATH else 1
    fraction = draws * noise["median"] / step["median"]
    rec = {
        "config": name,
        "config_file": path,
        "opts": run.opts,
        "batch": len(batch),
        "height": int(targets.shape[-2]),
        "width": int(targets.shape[-1]),
        "num_classes": num_classes,
        "step": step,
        "noise_labels": noise,
        "draws_per_step": draws,
        "fraction": fraction,
        "target": B.TARGETS["noise_labels_step_fraction_max"],
        "pass": bool(fraction < B.TARGETS["noise_labels_step_fraction_max"]),
    }
    _release([run])
    return rec


def _release(runs: list[ConfigRun]) -> None:
    for run in runs:
        run.model = run.optimizer = run.source = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ eval memory
def eval_memory(args, dataset: str) -> dict[str, Any]:
    """The evaluator's state over ``--eval-memory-counts`` fake predictions: TextKD's
    detectron2 evaluator when detectron2 is installed, else its confusion-matrix core."""
    h, w = B.parse_size(args.eval_memory_size)
    try:
        import textkd.d2  # noqa: F401
        from detectron2.data import MetadataCatalog
        from textkd.d2.sem_seg_evaluation import TextKDSemSegEvaluator
    except ImportError:
        rec = B.bench_eval_memory(19, h, w, args.eval_memory_counts, seed=args.seed)
        rec["evaluator"] = "ConfusionMatrix"
        return rec
    k = len(MetadataCatalog.get(dataset).stuff_classes)
    rec = B.bench_eval_memory(
        k,
        h,
        w,
        args.eval_memory_counts,
        make_evaluator=lambda: TextKDSemSegEvaluator(dataset, distributed=False),
        seed=args.seed,
    )
    rec["evaluator"] = f"TextKDSemSegEvaluator({dataset})"
    return rec


# ------------------------------------------------------------------------------------ output
def _ms(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"{1e3 * stats['median']:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.1f}%"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _mb(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def print_tables(report: dict) -> None:
    s = report["settings"]
    env = report["env"]
    print(
        f"\nTextKD benchmark — {env['device']} ({env['device_name']}), torch {env['torch']}, "
        f"{env['threads']} threads; input {s['input']} batch {s['batch']} size {s['size']}; "
        f"{s['iters']} iterations after {s['warmup']} warm-up (times: median ms)"
    )
    if report["configs"]:
        rows = []
        notes = []
        for c in report["configs"]:
            p, d = c["parts"], c["derived"]
            mark = ""
            if c["random_teacher"]:
                mark += "*"
            if c["random_text_bank"]:
                mark += "†"
            step = c["step"]
            rows.append(
                [
                    c["name"] + mark,
                    f"{_ms(step)} ±{1e3 * step['iqr']:.1f}",
                    _ms(p.get("teacher_forward")),
                    _ms(p.get("student_forward_backward")),
                    _ms(p.get("distill")),
                    _ms(p.get("optimizer")),
                    f"{_pct(d['distill_overhead'])} {_verdict(d['pass'])}",
                    _pct(d.get("distill_overhead_paired")),
                    _mb(c["memory"]["peak_bytes"]),
                    _mb(c["memory"]["rss_peak_bytes"]),
                    (
                        "-"
                        if c["eval"]["images_per_s"] is None
                        else f"{c['eval']['images_per_s']:.2f}"
                    ),
                ]
            )
        print(
            B.format_table(
                rows,
                [
                    "config",
                    "step (±IQR)",
                    "teacher fwd",
                    "student f+b",
                    "distill f+b",
                    "optim",
                    "distill overhead (≤10%)",
                    "paired",
                    "peak MB",
                    "RSS peak MB",
                    "eval img/s",
                ],
            )
        )
        if any(c["random_teacher"] for c in report["configs"]):
            notes.append("* RANDOM-INIT TEACHER (benchmark only, --random-teacher)")
        if any(c["random_text_bank"] for c in report["configs"]):
            notes.append("† random control text bank of the CLIP bank's size (--random-text-bank)")
        for n in notes:
            print(n)
    if report["comparisons"]:
        rows = [
            [
                f"{c['config']} vs {c['base']}",
                f"{_pct(c['step_overhead'])} {_verdict(c['step_pass'])}",
                _pct(c["step_overhead_paired"]),
                f"{_pct(c['memory_overhead'])} {_verdict(c['memory_pass'])}",
            ]
            for c in report["comparisons"]
        ]
        print()
        print(
            B.format_table(rows, ["comparison", "step time (≤5%)", "paired", "peak memory (≤5%)"])
        )
    if report.get("losses"):
        rows = []
        for r in report["losses"]:
            diffs = ", ".join(
                f"{k} {v:.1e}" if v is not None else f"{k} -" for k, v in r["max_abs_diff"].items()
            )
            mem = r.get("memory")
            mem_s = "-"
            if mem and mem["vectorised_peak_pair_maps"] is not None:
                mem_s = (
                    f"{mem['vectorised_peak_pair_maps']:.1f} vs "
                    f"{mem['loop_peak_pair_maps']:.1f} maps {_verdict(mem['pass'])}"
                )
            rows.append(
                [
                    r["name"],
                    _ms(r["vectorised"]),
                    _ms(r["loop"]),
                    f"{r['speedup']:.1f}x (≥{r['target_speedup']:g}x)",
                    diffs,
                    mem_s,
                    _verdict(r["pass"]),
                ]
            )
        print()
        print(
            B.format_table(
                rows,
                [
                    "loss",
                    "vectorised ms",
                    "loop ms",
                    "speedup",
                    "max |diff|",
                    "peak memory (pair maps)",
                    "result",
                ],
            )
        )
    lad = report.get("lad_step")
    if lad and "error" in lad:
        print(f"\nLAD teacher step: FAILED ({lad['error']})")
    elif lad:
        print(
            f"\nLAD teacher step {lad['config']} ({lad['batch']}x{lad['height']}x{lad['width']}, "
            f"{lad['num_classes']} classes): step {_ms(lad['step'])} ms, noise_labels "
            f"{_ms(lad['noise_labels'])} ms x {lad['draws_per_step']} = "
            f"{100 * lad['fraction']:.3f}% of the step (<{100 * lad['target']:g}%) "
            f"{_verdict(lad['pass'])}"
        )
    em = report.get("eval_memory")
    if em:
        rows = [
            [
                r["images"],
                r["state_bytes"],
                "-" if r["rss_growth_bytes"] is None else f"{r['rss_growth_bytes'] / 2**20:.1f}",
                f"{1e3 * r['seconds_per_image']:.2f}",
            ]
            for r in em["rows"]
        ]
        print(f"\nevaluator memory: {em['evaluator']}, {em['height']}x{em['width']} predictions")
        print(B.format_table(rows, ["images", "state bytes", "RSS growth MB", "ms/image"]))
        print(f"state flat: {_verdict(em['flat'])}")


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict, path: str) -> None:
    """Write the report atomically (temporary file + rename); non-finite floats become null."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_json_safe(report), f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available")
    for name, value in (("--batch", args.batch), ("--iters", args.iters)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    B.parse_size(args.size)
    specs = _unique_names([parse_config_spec(s) for s in args.config_file])
    _check_compare_specs(args.compare, [n for n, _, _ in specs])
    if not specs and not args.losses and not args.eval_memory:
        raise ValueError("nothing to do: give --config-file, --losses and/or --eval-memory")
    torch.manual_seed(args.seed)

    report: dict[str, Any] = {
        "schema": B.SCHEMA,
        "env": environment(device),
        "settings": {
            "batch": args.batch,
            "size": args.size,
            "iters": args.iters,
            "warmup": args.warmup,
            "eval_iters": args.eval_iters or args.iters,
            "input": "dataset_loader" if args.dataset_loader else "random",
            "device": str(device),
            "seed": args.seed,
            "opts": list(args.opts),
            "argv": list(sys.argv[1:] if argv is None else argv),
        },
        "configs": [],
        "comparisons": [],
        "losses": None,
        "lad_step": None,
        "eval_memory": None,
        "targets": dict(B.TARGETS),
    }
    with tempfile.TemporaryDirectory(prefix="textkd_bench_") as tmpdir:
        if specs:
            try:
                import textkd.d2  # noqa: F401  (registers the meta-architectures and datasets)
            except ImportError as e:
                raise SystemExit(f"measuring configs needs detectron2: {e}") from e
            runs = []
            for name, path, opts in specs:
                _progress(f"building {name}: {path} {' '.join(opts)}")
                runs.append(build_run(name, path, opts, args, device, tmpdir))
            measure(runs, args, device)
            report["configs"] = [config_record(r, args) for r in runs]
            report["comparisons"] = comparisons(report["configs"], args.compare)
            _release(runs)
        if args.losses:
            report["losses"] = B.run_loss_benchmarks(
                noise_shape=B.parse_shape(args.noise_shape, 3, "--noise-shape"),
                noise_classes=args.noise_classes,
                ifvd_classes=args.ifvd_classes,
                ifvd_shape=B.parse_shape(args.ifvd_shape, 4, "--ifvd-shape"),
                cirkd_batches=args.cirkd_batches,
                cirkd_shape=B.parse_shape(args.cirkd_shape, 3, "--cirkd-shape"),
                cirkd_pooling=not args.no_cirkd_pooling,
                iters=args.loss_iters,
                warmup=args.loss_warmup,
                device=device,
                seed=args.seed,
                progress=_progress,
            )
            if not args.no_lad_step:
                try:
                    import textkd.d2  # noqa: F401,F811
                except ImportError:
                    _progress("LAD teacher step skipped: it needs detectron2")
                else:
                    try:
                        report["lad_step"] = lad_step_ratio(
                            args, device, tmpdir, args.noise_classes
                        )
                    except Exception as e:  # noqa: BLE001 - keep the loss figures measured so far
                        logger.error("LAD teacher step failed: %s", e)
                        report["lad_step"] = {"error": f"{type(e).__name__}: {e}"}
        if args.eval_memory:
            dataset = args.eval_memory_dataset
            if not dataset:
                tests = [r.cfg.DATASETS.TEST for r in runs] if specs else []
                dataset = tests[0][0] if tests and len(tests[0]) else "textkd_synthetic_val_sem_seg"
            _progress(f"evaluator memory over {args.eval_memory_counts} fake predictions")
            report["eval_memory"] = eval_memory(args, dataset)
    B.validate_report(report)
    print_tables(report)
    if args.json:
        write_json(report, args.json)
        print(f"\nJSON written to {args.json}")
    return report


if __name__ == "__main__":
    main()
