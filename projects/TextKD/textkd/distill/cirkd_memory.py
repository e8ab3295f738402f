"""CIRKD's memory-based pixel-to-pixel and pixel-to-region contrast (framework-free).

The two memory terms of CIRKD (METHODS.md §1; reference ``losses/cirkd_memory.py`` and
``train_cirkd.py`` of winycg/CIRKD), as one stateful :class:`~textkd.distill.base.TrainingTerm`:

* **Queues.** Per class, a queue of ``M`` teacher pixel embeddings and one of ``R`` teacher region
  embeddings (L2-normalised), with a write pointer each; registered buffers, so training
  checkpoints save and ``--resume`` restores them (``cirkd_memory.pixel_queue`` …).
* **Enqueue** (every training step, before the sampling): the teacher features (L2-normalised over
  channels) and the labels (nearest-resized to the feature size) of the whole step, gathered over
  all ranks, are written image by image, class by class (ascending), as the reference loops do:
  per (image, class) one region embedding (the normalised mean of the class's pixels) at the
  region pointer (``+1`` modulo ``R``), and ``k = min(n, PIXELS_PER_CLASS)`` pixel embeddings at
  the pixel pointer (``+k``; when ``ptr + k >= M`` the ``k`` go to the last ``k`` slots and the
  pointer restarts at 0). Reference detail kept on purpose: the reference picks the ``k`` pixels as
  ``feat[:, randperm(n)[:k]]``, i.e. ``k`` random *raster positions among the first n of the
  image* (n = the class's pixel count), not ``k`` pixels of the class; this module does the same.
* **Loss.** Student features go through a projection head (1×1 conv → BN → ReLU → 1×1 conv to
  the teacher's width; trained with the student, never exported) and are L2-normalised; every
  non-ignored pixel of this rank is an anchor. The contrast set is the same ``P`` random slots of
  every class's pixel queue (``P = PIXEL_CONTRAST_SIZE // K + 1``, as ``train_cirkd.py`` passes
  it) and ``Q`` of every region queue (``REGION_CONTRAST_SIZE // K + 1``), class-major. With
  ``A = anchors · contrastᵀ / τ`` for the teacher and the student,
  ``loss = τ_kd² · KL(softmax(A_t/τ_kd) ‖ softmax(A_s/τ_kd))`` "batchmean" over the anchors.

Everything is vectorised: the enqueue is a few scatter/gather operations over all (image, class)
groups at once (the pointer recursion runs as prefix sums, repeated only for classes whose
pointer wraps within the step: once in practice); the random choices are one ``topk`` over random
keys per group and one ``randperm`` per queue.

Randomness is identical on every rank and a function of ``(seed, iteration)`` only, so queues stay
identical across ranks and a resumed run draws what the uninterrupted one draws: the draws come
from a private generator seeded by :func:`textkd.data.sampling.step_seed` on a stream no rank uses
(the global RNGs, seeded per rank by the trainer, are not touched). The pure functions
:func:`enqueue` and :func:`contrast_losses` take the random choices as arguments (the reference
equivalence tests feed both sides the same choices).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from ..data.sampling import step_seed
from .base import TermContext, TrainingTerm
from .losses import _align, check_labels, resize_labels

__all__ = [
    "CIRKDMemory",
    "MemoryState",
    "enqueue",
    "group_pixel_choices",
    "contrast_losses",
    "gather_across_ranks",
]

#: the ``rank`` argument of :func:`step_seed` for this term's draws: a stream no process uses
RNG_STREAM = 2**31 - 1


class MemoryState:
    """The queues and pointers the pure functions update in place (views of the term's
    buffers): ``pixel_queue`` K×M×D, ``pixel_ptr`` K, ``region_queue`` K×R×D, ``region_ptr`` K."""

    def __init__(self, pixel_queue, pixel_ptr, region_queue, region_ptr) -> None:
        self.pixel_queue = pixel_queue
        self.pixel_ptr = pixel_ptr
        self.region_queue = region_queue
        self.region_ptr = region_ptr


def _groups(labels: torch.Tensor, num_classes: int, ignore_label: int):
    """The (image, class) groups of a B×h×w label map in the reference's order (image-major,
    classes ascending): image index, class, pixel count (each G), and the B×K count table."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1)
    valid = (flat != ignore_label) & (flat >= 0) & (flat < num_classes)
    bins = torch.where(valid, flat, num_classes) + torch.arange(b, device=flat.device)[:, None] * (
        num_classes + 1
    )
    counts = torch.bincount(bins.reshape(-1), minlength=b * (num_classes + 1))
    counts = counts.view(b, num_classes + 1)[:, :num_classes]
    img, cls = torch.nonzero(counts, as_tuple=True)  # row-major: image-major, class ascending
    return img, cls, counts[img, cls], counts


def group_pixel_choices(
    counts: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random keys G×max(counts) (drawn on the CPU) for the pixel choices of G groups with
    ``counts`` pixels: group g picks the raster positions ``< counts[g]`` with the
    ``min(counts[g], PIXELS_PER_CLASS)`` smallest keys, smallest first (the reference's
    ``randperm(count)[:k]`` when that permutation is the argsort of the group's first ``count``
    keys)."""
    width = int(counts.max()) if counts.numel() else 0
    return torch.rand(counts.numel(), width, generator=generator).to(counts.device)


def _pixel_pointer_starts(
    k: torch.Tensor, cls: torch.Tensor, ptr: torch.Tensor, memory: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start slots of G sequential writes of ``k[g]`` embeddings to class ``cls[g]`` (groups in
    write order) and the final pointers, following the reference's recursion per class:
    ``start = ptr, ptr += k`` unless ``ptr + k >= memory``, then ``start = memory − k, ptr = 0``.

    Vectorised: within a run without a wrap the starts are the pointer plus an exclusive prefix
    sum; the loop only repeats for classes that wrap within the step (at most once per class when
    ``memory`` exceeds the step's writes, as with the reference sizes)."""
    g = k.numel()
    num_classes = ptr.numel()
    starts = torch.empty_like(k)
    if g == 0:
        return starts, ptr.clone()
    # order the writes by class, keeping the write order within a class (stable sort)
    order = torch.sort(cls, stable=True).indices
    kc, cc = k[order], cls[order]
    first_of_class = torch.searchsorted(cc, torch.arange(num_classes, device=cc.device))
    pos_in_class = torch.arange(g, device=k.device) - first_of_class[cc]
    base = ptr.clone()  # pointer at the start of each class's current run
    run_begin = torch.zeros(num_classes, dtype=torch.long, device=k.device)  # first write index
    open_ = torch.ones(g, dtype=torch.bool, device=k.device)  # writes not yet placed
    out = torch.empty_like(kc)
    while bool(open_.any()):
        in_run = open_ & (pos_in_class >= run_begin[cc])
        kr = torch.where(in_run, kc, torch.zeros_like(kc))
        # exclusive prefix sum of the run's sizes, per class (classes are contiguous blocks)
        csum_excl = torch.cumsum(kr, 0) - kr
        excl = csum_excl - csum_excl[first_of_class[cc]]
        pos = base[cc] + excl
        wraps = in_run & (pos + kc >= memory)
        # the first wrap of each class ends its run: later writes wait for the next round
        big = torch.full((num_classes,), g, dtype=torch.long, device=k.device)
        first_wrap = big.scatter_reduce(
            0, cc, torch.where(wraps, pos_in_class, torch.full_like(pos_in_class, g)), "amin"
        )
        before = in_run & (pos_in_class < first_wrap[cc])
        at = in_run & (pos_in_class == first_wrap[cc])
        out = torch.where(before, pos, out)
        out = torch.where(at, memory - kc, out)
        open_ = open_ & ~(before | at)
        wrapped = first_wrap < g
        # classes without a wrap are done: their pointer moves past the run
        run_total = torch.zeros(num_classes, dtype=torch.long, device=k.device).index_add_(
            0, cc, torch.where(before, kc, torch.zeros_like(kc))
        )
        base = torch.where(wrapped, torch.zeros_like(base), base + run_total)
        run_begin = torch.where(wrapped, first_wrap + 1, run_begin)
    starts[order] = out
    return starts, base


def _last_writes(slots: torch.Tensor) -> torch.Tensor:
    """Mask of the writes (in order) that survive when several write the same slot: the last."""
    sorted_slots, order = torch.sort(slots, stable=True)
    is_last = torch.ones_like(sorted_slots, dtype=torch.bool)
    is_last[:-1] = sorted_slots[1:] != sorted_slots[:-1]
    keep = torch.empty_like(is_last)
    keep[order] = is_last
    return keep


@torch.no_grad()
def enqueue(
    state: MemoryState,
    feats: torch.Tensor,
    labels: torch.Tensor,
    pixel_keys: torch.Tensor,
    *,
    ignore_label: int = 255,
    pixels_per_class: int = 16,
    sizes: torch.Tensor | None = None,
) -> None:
    """Write one step's teacher embeddings into the queues of ``state`` (in place), as the
    reference's ``_dequeue_and_enqueue`` (see the module docstring).

    ``feats``: B×D×h×w L2-normalised teacher features; ``labels``: B×h×w (ignore =
    ``ignore_label``); ``pixel_keys``: G×(h·w) random keys, one row per (image, class) group in
    order (:func:`group_pixel_choices`); ``sizes``: optional B×2 true (h, w) of each image when the
    maps are padded to a common size (gathered from ranks with other sizes)."""
    num_classes, memory, _ = state.pixel_queue.shape
    region_memory = state.region_queue.shape[1]
    b, d, h, w = feats.shape
    img, cls, n, _ = _groups(labels, num_classes, ignore_label)
    if img.numel() == 0:
        return
    if pixel_keys.dim() != 2 or pixel_keys.shape[0] != img.numel():
        raise ValueError(
            f"pixel_keys must have one row per (image, class) group ({img.numel()} groups), got "
            f"shape {tuple(pixel_keys.shape)}"
        )
    if pixel_keys.shape[1] < int(n.max()):
        raise ValueError(
            f"pixel_keys has {pixel_keys.shape[1]} keys per group, the largest group has "
            f"{int(n.max())} pixels"
        )
    flat = feats.reshape(b, d, h * w)
    lab = labels.reshape(b, h * w)

    # regions: normalised class means, one per group, at region_ptr[c] + (rank within class)
    valid = (lab != ignore_label) & (lab >= 0) & (lab < num_classes)
    bins = torch.where(valid, lab, num_classes) + torch.arange(b, device=lab.device)[:, None] * (
        num_classes + 1
    )
    sums = feats.new_zeros(b * (num_classes + 1), d).index_add_(
        0, bins.reshape(-1), flat.transpose(1, 2).reshape(-1, d)
    )
    means = sums[img * (num_classes + 1) + cls] / n[:, None].to(sums.dtype)
    regions = F.normalize(means, p=2, dim=1)
    one_hot = F.one_hot(cls, num_classes)
    rank = (torch.cumsum(one_hot, 0) - one_hot)[torch.arange(cls.numel()), cls]
    total = one_hot.sum(0)
    keep = rank >= (total[cls] - region_memory)  # more writes than slots: the last R survive
    slot = (state.region_ptr[cls] + rank) % region_memory
    state.region_queue[cls[keep], slot[keep]] = regions[keep]
    state.region_ptr.copy_((state.region_ptr + total) % region_memory)

    # pixels: k = min(n, PIXELS_PER_CLASS) random raster positions < n of the image
    k = n.clamp(max=pixels_per_class)
    keys = pixel_keys[:, : int(n.max())].to(feats.device)
    kmax = int(min(pixels_per_class, keys.shape[1]))
    positions = torch.arange(keys.shape[1], device=feats.device)
    keys = keys.masked_fill(positions[None, :] >= n[:, None], float("inf"))
    chosen = torch.topk(keys, kmax, dim=1, largest=False, sorted=True).indices  # G×kmax
    if sizes is not None:  # raster position in the true image -> position in the padded map
        wi = sizes[img, 1][:, None]
        chosen = (chosen // wi) * w + chosen % wi
    starts, new_ptr = _pixel_pointer_starts(k, cls, state.pixel_ptr, memory)
    j = torch.arange(kmax, device=feats.device)[None, :]
    used = j < k[:, None]
    pix = flat[img[:, None].expand_as(chosen), :, chosen]  # G×kmax×D
    pix = F.normalize(pix[used], p=2, dim=1)
    cls_w = cls[:, None].expand_as(chosen)[used]
    slot_w = (starts[:, None] + j)[used]
    flat_slot = cls_w * memory + slot_w
    last = _last_writes(flat_slot)
    state.pixel_queue[cls_w[last], slot_w[last]] = pix[last]
    state.pixel_ptr.copy_(new_ptr)


def _contrast_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, kd_temperature: float):
    log_ps = F.log_softmax(s_logits / kd_temperature, dim=1)
    log_pt = F.log_softmax(t_logits / kd_temperature, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
    return kl * kd_temperature**2 / s_logits.shape[0]


def contrast_losses(
    s_anchor: torch.Tensor,
    t_anchor: torch.Tensor,
    state: MemoryState,
    pixel_index: torch.Tensor,
    region_index: torch.Tensor,
    *,
    contrast_temperature: float = 0.1,
    kd_temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (pixel, region) memory contrast losses of N×D L2-normalised student and teacher
    anchors against the queue slots ``pixel_index`` / ``region_index`` of every class."""
    d = state.pixel_queue.shape[2]
    x_pixel = state.pixel_queue[:, pixel_index, :].reshape(-1, d)
    x_region = state.region_queue[:, region_index, :].reshape(-1, d)
    t_anchor = t_anchor.detach()
    losses = []
    for x in (x_pixel, x_region):
        t_logits = torch.mm(t_anchor, x.t()) / contrast_temperature
        s_logits = torch.mm(s_anchor, x.t()) / contrast_temperature
        losses.append(_contrast_kl(s_logits, t_logits, kd_temperature))
    return losses[0], losses[1]


@torch.no_grad()
def gather_across_ranks(
    feats: torch.Tensor, labels: torch.Tensor, ignore_label: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All ranks' (feats B×D×h×w, labels B×h×w) concatenated in rank order, identical on every
    rank; ranks may have other batch sizes and spatial sizes (padded to the largest, labels with
    ``ignore_label``; the true sizes come back as a B×2 tensor, None when all agree). Without an
    initialised process group (or with one process) the inputs come back unchanged."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return feats, labels, None
    world = dist.get_world_size()
    b, d, h, w = feats.shape
    shape = torch.tensor([b, h, w], dtype=torch.long, device=feats.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes_t = torch.stack(shapes).cpu()
    bm, hm, wm = (int(v) for v in shapes_t.max(0).values)
    pf = feats.new_zeros(bm, d, hm, wm)
    pf[:b, :, :h, :w] = feats
    pl = labels.new_full((bm, hm, wm), ignore_label)
    pl[:b, :h, :w] = labels
    fs = [torch.empty_like(pf) for _ in range(world)]
    ls = [torch.empty_like(pl) for _ in range(world)]
    dist.all_gather(fs, pf.contiguous())
    dist.all_gather(ls, pl.contiguous())
    counts = shapes_t[:, 0].tolist()
    feats_all = torch.cat([f[:c] for f, c in zip(fs, counts)])
    labels_all = torch.cat([lab[:c] for lab, c in zip(ls, counts)])
    same = bool((shapes_t[:, 1:] == shapes_t[0, 1:]).all())
    if same:
        return feats_all, labels_all, None
    sizes = torch.cat([shapes_t[r, 1:].expand(c, 2) for r, c in enumerate(counts)])
    return feats_all, labels_all, sizes.to(feats.device)


def _shared_seed(seed: int) -> int:
    """``seed`` when >= 0, else a random one drawn on rank 0 and shared with every rank."""
    if seed >= 0:
        return int(seed)
    value = torch.randint(0, 2**31 - 1, (1,), dtype=torch.long)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(value, 0)
    return int(value)


class CIRKDMemory(TrainingTerm):
    """CIRKD's memory-based pixel and region contrast (module docstring); reports
    ``loss_cirkd_memory_pixel`` and ``loss_cirkd_memory_region`` (those with a weight > 0).

    Config node ``MODEL.DISTILL.CIRKD_MEMORY`` (keys of :mod:`textkd.config`); the term is off
    when both PIXEL_WEIGHT and REGION_WEIGHT are 0."""

    needs_targets = True
    #: buffers kept identical on every rank by the term itself: DDP must not broadcast them
    rank_synced_buffers = (
        "pixel_queue",
        "pixel_ptr",
        "region_queue",
        "region_ptr",
        "rng_seed",
        "steps",
    )

    def __init__(
        self,
        num_classes: int,
        student_channels: int,
        teacher_channels: int,
        *,
        pixel_weight: float = 0.1,
        region_weight: float = 0.1,
        pixel_memory_size: int = 20000,
        region_memory_size: int = 2000,
        pixels_per_class: int = 16,
        pixel_contrast_size: int = 4096,
        region_contrast_size: int = 1024,
        contrast_temperature: float = 0.1,
        kd_temperature: float = 1.0,
        proj_dim: int = 0,
        input: str = "feature",
        ignore_label: int = 255,
        sync_bn: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.pixel_weight = float(pixel_weight)
        self.region_weight = float(region_weight)
        self.pixels_per_class = int(pixels_per_class)
        # per class, as train_cirkd.py passes them: total // K + 1
        self.pixel_contrast_per_class = int(pixel_contrast_size) // self.num_classes + 1
        self.region_contrast_per_class = int(region_contrast_size) // self.num_classes + 1
        self.contrast_temperature = float(contrast_temperature)
        self.kd_temperature = float(kd_temperature)
        self.input = str(input)
        self.ignore_label = int(ignore_label)
        hidden = int(proj_dim) or int(teacher_channels)
        norm = nn.SyncBatchNorm if sync_bn else nn.BatchNorm2d
        self.project_head = nn.Sequential(
            nn.Conv2d(int(student_channels), hidden, 1, bias=False),
            norm(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, int(teacher_channels), 1, bias=False),
        )
        seed = _shared_seed(seed)
        # the initial queues: random unit vectors (as the reference), identical on every rank
        gen = torch.Generator().manual_seed(step_seed(seed, 0, RNG_STREAM - 1))
        d = int(teacher_channels)
        pixel_queue = torch.randn(self.num_classes, int(pixel_memory_size), d, generator=gen)
        region_queue = torch.randn(self.num_classes, int(region_memory_size), d, generator=gen)
        self.register_buffer("pixel_queue", F.normalize(pixel_queue, p=2, dim=2))
        self.register_buffer("pixel_ptr", torch.zeros(self.num_classes, dtype=torch.long))
        self.register_buffer("region_queue", F.normalize(region_queue, p=2, dim=2))
        self.register_buffer("region_ptr", torch.zeros(self.num_classes, dtype=torch.long))
        # the seed of the draws (checkpointed: a resumed run goes on with the saved one) and the
        # training steps taken (the iteration when the caller gives none)
        self.register_buffer("rng_seed", torch.tensor(seed, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, node: Mapping[str, Any], context: TermContext) -> CIRKDMemory | None:
        pixel_weight, region_weight = float(node["PIXEL_WEIGHT"]), float(node["REGION_WEIGHT"])
        for key, value in (("PIXEL_WEIGHT", pixel_weight), ("REGION_WEIGHT", region_weight)):
            if not value >= 0:
                raise ValueError(f"MODEL.DISTILL.CIRKD_MEMORY.{key} must be >= 0, got {value!r}")
        if pixel_weight == 0 and region_weight == 0:
            return None
        for key in (
            "PIXEL_MEMORY_SIZE",
            "REGION_MEMORY_SIZE",
            "PIXELS_PER_CLASS",
            "PIXEL_CONTRAST_SIZE",
            "REGION_CONTRAST_SIZE",
        ):
            if not int(node[key]) > 0:
                raise ValueError(f"MODEL.DISTILL.CIRKD_MEMORY.{key} must be > 0, got {node[key]!r}")
        for key in ("CONTRAST_TEMPERATURE", "KD_TEMPERATURE"):
            if not float(node[key]) > 0:
                raise ValueError(f"MODEL.DISTILL.CIRKD_MEMORY.{key} must be > 0, got {node[key]!r}")
        if int(node["PROJ_DIM"]) < 0:
            raise ValueError(
                f"MODEL.DISTILL.CIRKD_MEMORY.PROJ_DIM must be >= 0 (0 = the teacher's width), "
                f"got {node['PROJ_DIM']!r}"
            )
        name = str(node["INPUT"])
        channels = []
        for who, table in (
            ("student", context.student_channels),
            ("teacher", context.teacher_channels),
        ):
            if table.get(name) is None:
                available = [k for k, v in table.items() if v is not None]
                raise ValueError(
                    f"MODEL.DISTILL.CIRKD_MEMORY.INPUT: the {who} has no output {name!r}; "
                    f"available: {available}"
                )
            channels.append(int(table[name]))
        return cls(
            context.num_classes,
            channels[0],
            channels[1],
            pixel_weight=pixel_weight,
            region_weight=region_weight,
            pixel_memory_size=int(node["PIXEL_MEMORY_SIZE"]),
            region_memory_size=int(node["REGION_MEMORY_SIZE"]),
            pixels_per_class=int(node["PIXELS_PER_CLASS"]),
            pixel_contrast_size=int(node["PIXEL_CONTRAST_SIZE"]),
            region_contrast_size=int(node["REGION_CONTRAST_SIZE"]),
            contrast_temperature=float(node["CONTRAST_TEMPERATURE"]),
            kd_temperature=float(node["KD_TEMPERATURE"]),
            proj_dim=int(node["PROJ_DIM"]),
            input=name,
            ignore_label=context.ignore_label,
            sync_bn=context.sync_bn,
            seed=context.seed,
        )

    @property
    def state(self) -> MemoryState:
        return MemoryState(self.pixel_queue, self.pixel_ptr, self.region_queue, self.region_ptr)

    def random_choices(
        self, counts: torch.Tensor, iteration: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The draws of step ``iteration`` from a generator seeded by (seed, iteration) only:
        the pixel keys of the G groups with ``counts`` pixels (:func:`group_pixel_choices`) and
        the contrast slots of the pixel and region queues (a random permutation's first
        ``P`` / ``Q``), in that order."""
        gen = torch.Generator().manual_seed(
            step_seed(int(self.rng_seed), int(iteration), RNG_STREAM)
        )
        keys = group_pixel_choices(counts, gen)
        pixel_index = torch.randperm(self.pixel_queue.shape[1], generator=gen)
        region_index = torch.randperm(self.region_queue.shape[1], generator=gen)
        return (
            keys,
            pixel_index[: self.pixel_contrast_per_class],
            region_index[: self.region_contrast_per_class],
        )

    def forward(
        self, student_out, teacher_out, targets: torch.Tensor | None = None, *, iteration=None
    ) -> dict[str, torch.Tensor]:
        if targets is None:
            raise ValueError("the CIRKD memory term needs the ground-truth labels (targets)")
        s = student_out.get(self.input)
        t = teacher_out.get(self.input)
        s, t = _align(s, t, "cirkd_memory", same_channels=False)
        check_labels(targets, self.num_classes, self.ignore_label)
        t = F.normalize(t, p=2, dim=1)
        # the head may run under autocast; the similarities and the KL are float32
        s = F.normalize(self.project_head(s).float(), p=2, dim=1)
        labels = resize_labels(targets.to(t.device), tuple(t.shape[-2:]))
        step = int(self.steps) if iteration is None else int(iteration)
        feats_all, labels_all, sizes = t, labels, None
        if self.training:
            feats_all, labels_all, sizes = gather_across_ranks(t, labels, self.ignore_label)
        _, _, n, _ = _groups(labels_all, self.num_classes, self.ignore_label)
        keys, pixel_index, region_index = self.random_choices(n, step)
        if self.training:
            enqueue(
                self.state,
                feats_all,
                labels_all,
                keys,
                ignore_label=self.ignore_label,
                pixels_per_class=self.pixels_per_class,
                sizes=sizes,
            )
            self.steps += 1
        d = t.shape[1]
        anchors = (labels != self.ignore_label).reshape(-1)
        s_anchor = s.permute(0, 2, 3, 1).reshape(-1, d)[anchors]
        t_anchor = t.permute(0, 2, 3, 1).reshape(-1, d)[anchors]
        if s_anchor.shape[0] == 0:  # every pixel ignored: zero, still connected to the graph
            zero = 0.0 * s.pow(2).mean()
            pixel, region = zero, zero
        else:
            with torch.autocast(device_type=s.device.type, enabled=False):
                pixel, region = contrast_losses(
                    s_anchor,
                    t_anchor,
                    self.state,
                    pixel_index.to(t.device),
                    region_index.to(t.device),
                    contrast_temperature=self.contrast_temperature,
                    kd_temperature=self.kd_temperature,
                )
        out = {}
        if self.pixel_weight > 0:
            out["loss_cirkd_memory_pixel"] = self.pixel_weight * pixel
        if self.region_weight > 0:
            out["loss_cirkd_memory_region"] = self.region_weight * region
        return out

    def extra_repr(self) -> str:
        k, m, d = self.pixel_queue.shape
        return (
            f"pixel={self.pixel_weight:g}, region={self.region_weight:g}, queues {k}×{m}×{d} / "
            f"{k}×{self.region_queue.shape[1]}×{d}"
        )
