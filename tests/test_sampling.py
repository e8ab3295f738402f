"""The resumable training order of :mod:`textkd.data.sampling` (no detectron2 needed): the stream
started at iteration k is the uninterrupted stream's tail, ranks split every global batch, each
epoch is a permutation, and augmentation and step seeds depend on (seed, position / iteration,
rank) only."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from textkd.data.sampling import (
    KeyedMapDataset,
    ResumableTrainingSampler,
    sample_rng,
    seed_step_rngs,
)


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_started_at_iteration_k_equals_the_uninterrupted_tail():
    full = _take(ResumableTrainingSampler(10, 4, seed=3), 4 * 9)
    for k in (1, 2, 5, 7):
        late = ResumableTrainingSampler(10, 4, seed=3)
        late.set_start(k)
        assert _take(late, 4 * (9 - k)) == full[4 * k :]
    # keys carry the seed and the global position
    assert [p for _, _, p in full] == list(range(36)) and {s for _, s, _ in full} == {3}


def test_each_epoch_is_a_permutation_and_the_seed_matters():
    s = ResumableTrainingSampler(7, 1, seed=0)
    idx = [i for i, _, _ in _take(s, 21)]
    for e in range(3):
        assert sorted(idx[7 * e : 7 * e + 7]) == list(range(7))
    assert idx[:7] != idx[7:14]  # a new permutation per epoch
    other = [i for i, _, _ in _take(ResumableTrainingSampler(7, 1, seed=1), 21)]
    assert other != idx
    ordered = ResumableTrainingSampler(7, 1, seed=0, shuffle=False)
    assert [i for i, _, _ in _take(ordered, 9)] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


def test_ranks_split_every_global_batch():
    single = _take(ResumableTrainingSampler(9, 6, seed=5), 6 * 4)
    ranks = [
        _take(ResumableTrainingSampler(9, 6, seed=5, rank=r, world_size=3), 2 * 4) for r in range(3)
    ]
    for it in range(4):
        merged = [k for r in range(3) for k in ranks[r][2 * it : 2 * it + 2]]
        assert merged == single[6 * it : 6 * it + 6]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="empty"):
        ResumableTrainingSampler(0, 2, seed=0)
    with pytest.raises(ValueError, match="IMS_PER_BATCH 3 .* processes \\(2\\)"):
        ResumableTrainingSampler(5, 3, seed=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        ResumableTrainingSampler(5, 2, seed=-1)


def test_augmentation_and_step_seeds_are_functions_of_their_arguments():
    a = sample_rng(0, 17).random(4)
    np.testing.assert_array_equal(a, sample_rng(0, 17).random(4))
    assert not np.array_equal(a, sample_rng(0, 18).random(4))
    assert not np.array_equal(a, sample_rng(1, 17).random(4))

    def draws(seed, it, rank):
        seed_step_rngs(seed, it, rank)
        return torch.rand(3).tolist(), float(np.random.rand()), random.random()

    torch.rand(5), np.random.rand(5), random.random()  # whatever came before does not matter
    first = draws(2, 10, 0)
    assert draws(2, 10, 0) == first
    assert draws(2, 11, 0) != first and draws(2, 10, 1) != first and draws(3, 10, 0) != first


def test_keyed_dataset_maps_with_the_sample_rng():
    ds = KeyedMapDataset(["a", "b"], lambda rec, rng: (rec, float(rng.random())))
    assert len(ds) == 2
    assert ds[(1, 4, 9)] == ("b", float(sample_rng(4, 9).random()))
