"""Deterministic weights for a model of another codebase, from its parameter names and shapes.

The reference-equivalence fixtures (``tests/fixtures/make_*_fixture.py``, run once beside the
reference code) and the tests that check TextKD against them both build the same state dict from
the same ``(key, shape)`` list, so no model weights need to be stored: each tensor comes from a
generator seeded by the CRC32 of its key (and ``seed``), at a scale that keeps activations sane
(Kaiming-normal convolutions and linear layers, BatchNorm affine near 1/0, running variances in
[0.5, 1.5]). Plain PyTorch; imported by the fixture scripts as well as by the tests.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping

import torch

__all__ = ["deterministic_tensor", "deterministic_state_dict", "key_shapes"]


def deterministic_tensor(key: str, shape: Iterable[int], seed: int = 0) -> torch.Tensor:
    """The tensor of parameter or buffer ``key`` with ``shape`` (float32, or int64 for
    ``num_batches_tracked``)."""
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    gen = torch.Generator().manual_seed(
        (zlib.crc32(key.encode("utf-8")) + 1_000_003 * seed) % 2**63
    )
    if key.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    normal = torch.randn(shape, generator=gen)
    if key.endswith("running_mean"):
        return 0.1 * normal
    if len(shape) >= 2:  # convolution / linear weight: Kaiming normal over the fan-in
        fan_in = math.prod(shape[1:])
        return normal * math.sqrt(2.0 / max(fan_in, 1))
    if key.endswith("weight"):  # normalisation scale
        return 1.0 + 0.1 * normal
    return 0.1 * normal  # biases, normalisation shifts, other vectors


def deterministic_state_dict(
    shapes: Mapping[str, Iterable[int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """``{key: deterministic_tensor(key, shape, seed)}`` for every entry of ``shapes``."""
    return {key: deterministic_tensor(key, shape, seed) for key, shape in shapes.items()}


def key_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """``{key: shape}`` of a state dict: what a fixture stores to regenerate the weights."""
    return {key: list(value.shape) for key, value in state_dict.items()}
