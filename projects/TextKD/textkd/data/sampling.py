"""Resumable training order (framework-free: numpy and torch only).

Everything random in a training run is a function of ``(seed, iteration, rank, sample)``, never of
a stream that restarts when a run resumes:

* **Data order**: global sample position ``p`` (0, 1, 2, ... over the whole run) is sample
  ``perm_e[p mod N]`` of epoch ``e = p // N``, where ``perm_e`` is a permutation of the ``N``
  records drawn from ``numpy.random.default_rng([seed, e])``. Iteration ``i`` uses the positions
  ``[i·B, (i+1)·B)`` of the total batch ``B``; rank ``r`` of ``W`` takes the slice
  ``[i·B + r·b, i·B + (r+1)·b)`` with ``b = B / W``. A run started at iteration ``k`` therefore
  sees exactly the samples an uninterrupted run sees from iteration ``k`` on.
* **Augmentation**: the sample at position ``p`` is augmented with its own generator
  ``numpy.random.default_rng([seed, p])`` (:func:`sample_rng`), whichever process or data-loader
  worker maps it.
* **Training step**: :func:`seed_step_rngs` seeds torch (CPU and CUDA), numpy and Python's
  ``random`` from ``(seed, iteration, rank)`` before every step, so dropout, LAD's noised labels
  or CIRKD's sampling of iteration ``i`` draw the same numbers in a resumed run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "SampleKey",
    "ResumableTrainingSampler",
    "KeyedMapDataset",
    "sample_rng",
    "step_seed",
    "seed_step_rngs",
]

# domain tags keep the streams of data order, augmentation and training step apart
_ORDER, _AUGMENT, _STEP = 0, 1, 2

SampleKey = tuple[int, int, int]  # (record index, seed, global sample position)


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"the data-order seed must be >= 0, got {seed}")
    return seed


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The augmentation generator of the sample at global ``position`` of a run seeded ``seed``."""
    return np.random.default_rng([_check_seed(seed), _AUGMENT, int(position)])


def step_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """A 63-bit seed of training step ``iteration`` on ``rank`` (a function of the three only)."""
    ss = np.random.SeedSequence([_check_seed(seed), _STEP, int(iteration), int(rank)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_step_rngs(seed: int, iteration: int, rank: int = 0) -> int:
    """Seed torch (CPU and every CUDA device), numpy's and Python's global generators for
    training step ``iteration`` on ``rank``; returns the seed used."""
    s = step_seed(seed, iteration, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    return s


class ResumableTrainingSampler(Sampler):
    """An infinite training sampler whose stream is a function of the global sample position
    (see the module docstring); it yields :data:`SampleKey` tuples ``(index, seed, position)``
    for this rank, starting at iteration :attr:`start_iter`.

    Args:
        size: number of records N (> 0).
        total_batch_size: images per iteration over all ranks (B, divisible by ``world_size``).
        seed: data-order seed (>= 0).
        rank, world_size: this process's share of every global batch.
        shuffle: a new permutation per epoch (else the records in order, epoch after epoch).
        start_iter: first iteration to yield; :meth:`set_start` changes it (and the seed) before
            the stream is iterated, e.g. after a checkpoint has been loaded.
    """

    def __init__(
        self,
        size: int,
        total_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start_iter: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError(f"the training set is empty (size {size}): nothing to sample")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if total_batch_size < 1 or total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH {total_batch_size} must be a positive multiple of the "
                f"number of processes ({world_size})"
            )
        self.size = int(size)
        self.total_batch_size = int(total_batch_size)
        self.batch_size = self.total_batch_size // world_size
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.seed = _check_seed(seed)
        self.start_iter = int(start_iter)
        self._perm: tuple[int, np.ndarray] | None = None

    def set_start(self, start_iter: int, seed: int | None = None) -> None:
        """Continue the stream at iteration ``start_iter`` (with ``seed`` when given)."""
        if start_iter < 0:
            raise ValueError(f"start iteration must be >= 0, got {start_iter}")
        self.start_iter = int(start_iter)
        if seed is not None:
            self.seed = _check_seed(seed)
        self._perm = None

    def index(self, position: int) -> int:
        """The record index at global sample ``position``."""
        epoch, offset = divmod(int(position), self.size)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, _ORDER, epoch])
            self._perm = (epoch, rng.permutation(self.size))
        return int(self._perm[1][offset])

    def positions(self, iteration: int) -> range:
        """The global sample positions this rank loads at ``iteration``."""
        first = iteration * self.total_batch_size + self.rank * self.batch_size
        return range(first, first + self.batch_size)

    def __iter__(self) -> Iterator[SampleKey]:
        it = self.start_iter
        while True:
            for p in self.positions(it):
                yield self.index(p), self.seed, p
            it += 1


class KeyedMapDataset(Dataset):
    """Map-style dataset over ``records`` indexed by :data:`SampleKey`: item ``(i, seed, p)`` is
    ``map_fn(records[i], sample_rng(seed, p))``, so a sample's augmentation depends on its
    position in the run only (not on the worker or process that maps it)."""

    def __init__(
        self, records: Sequence[Any], map_fn: Callable[[Any, np.random.Generator], Any]
    ) -> None:
        self.records = records
        self.map_fn = map_fn

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: SampleKey) -> Any:
        index, seed, position = key
        return self.map_fn(self.records[index], sample_rng(seed, position))
