"""Exact, mergeable orderings of activations, packed into int64 keys.

A top-k over a stream is only independent of batching and sharding if ties are broken the same
way everywhere. We order (activation, position) pairs by activation descending, then by global
position ascending (earlier wins), and pack both into one int64 so that `topk` over the keys is
exact and unique:

    key = (monotone_int32(activation) << 32) | (MAX_POS - position)

Band samples use a second key, (hash(position) << 32) | position: the minimum over a set is a
uniform random member chosen by the hash, the same whichever way the set was split.

Global positions are `seq_id * seq_len + pos`, so a store may hold up to 2^32 tokens.
"""

from __future__ import annotations

import torch

MAX_POS = (1 << 32) - 1
KEY_EMPTY = torch.iinfo(torch.int64).min  # sorts below every real key
KEY_FULL = torch.iinfo(torch.int64).max  # sorts above every real key (empty min-hash slot)
_LOW32 = 0xFFFFFFFF
_SIGN_FLIP = 0x7FFFFFFF


def _monotone_int32(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 such that integer order equals float order (for non-NaN values)."""
    # `+ 0.0` turns -0.0 into 0.0, so that the two zeros tie instead of ordering.
    bits = (values.to(torch.float32) + 0.0).contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ _SIGN_FLIP, bits)


def encode_top(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Pack (activation, global position) into int64 keys: larger key = stronger, earlier."""
    hi = _monotone_int32(values).to(torch.int64) << 32
    return hi | (MAX_POS - positions.to(torch.int64))


def decode_top(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `encode_top`: (values float32, positions int64). Empty keys give (-inf, -1)."""
    mono = (keys >> 32).to(torch.int32)
    bits = torch.where(mono < 0, mono ^ _SIGN_FLIP, mono)
    values = bits.view(torch.float32)
    positions = MAX_POS - (keys & _LOW32)
    empty = keys == KEY_EMPTY  # `where`, not a boolean index: no host sync on a GPU
    return values.masked_fill(empty, float("-inf")), positions.masked_fill(empty, -1)


def value_threshold(keys: torch.Tensor) -> torch.Tensor:
    """Activation of each key (-inf for empty keys): the admission threshold of a full top list."""
    return decode_top(keys)[0]


_MIX1 = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as a signed int64
_MIX2 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9
_MIX3 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB


def position_hash(positions: torch.Tensor) -> torch.Tensor:
    """A well-mixed 31-bit hash of global positions (splitmix64's finaliser, wrapping int64)."""
    z = positions.to(torch.int64) * _MIX1
    z = (z ^ ((z >> 30) & 0x3FFFFFFFF)) * _MIX2
    z = (z ^ ((z >> 27) & 0x1FFFFFFFFF)) * _MIX3
    z = z ^ ((z >> 31) & 0x1FFFFFFFF)
    return (z >> 1) & _SIGN_FLIP


def encode_sample(positions: torch.Tensor) -> torch.Tensor:
    """Min-hash key: the smallest key over a set picks a uniform random member of it."""
    positions = positions.to(torch.int64)
    return (position_hash(positions) << 32) | positions


def decode_sample(keys: torch.Tensor) -> torch.Tensor:
    """Global positions of min-hash keys; -1 for empty slots."""
    return torch.where(keys == KEY_FULL, -1, keys & _LOW32)
