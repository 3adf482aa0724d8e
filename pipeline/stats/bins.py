"""Fast binning of activations into the store's fixed histogram bins.

The bins themselves (edges, ranges, what the manifest says) are a store contract and live in
`store.histogram_bins`. Here: `bin_index`, which reads a value's quarter-octave straight from
its float32 bits (exponent and the top two mantissa bits), so binning costs a shift, not a
search.
"""

from __future__ import annotations

import torch

from store.histogram_bins import LOW_EXP, N_BINS, N_SIDE, PER_OCTAVE, ZERO_BIN, bin_ranges, describe

__all__ = ["KERNEL_CONSTANTS", "N_BINS", "ZERO_BIN", "bin_index", "bin_ranges", "describe"]

_FIRST = (127 + LOW_EXP) * PER_OCTAVE  # (biased exponent, 2 mantissa bits) of 2^LOW_EXP
# what native.c's histogram kernel needs to compute the same bins
KERNEL_CONSTANTS = (_FIRST - 1, N_SIDE + 1, ZERO_BIN, N_BINS)


def bin_index(x: torch.Tensor) -> torch.Tensor:
    """Bin of every element of a float tensor, as int32 in [0, N_BINS)."""
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    # q: quarter-octave of |x| counted from 2^LOW_EXP, -1 = near zero, N_SIDE = overflow.
    q = torch.bitwise_and(bits, 0x7FFFFFFF).bitwise_right_shift_(21).sub_(_FIRST - 1).clamp_(0, N_SIDE + 1)
    # bin = ZERO_BIN + (q + 1) for x >= 0 and ZERO_BIN - (q + 1) for x < 0: negate via the sign
    # bit (neg is 0 or -1, and (t ^ neg) - neg is t or -t). q + 1 = 0 lands on ZERO_BIN either way.
    neg = bits >> 31
    return q.bitwise_xor_(neg).sub_(neg).add_(ZERO_BIN)
