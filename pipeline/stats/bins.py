"""Fixed, symmetric-log histogram bins shared by every neuron of every model.

A histogram can only be merged across batches and shards if its edges are fixed before the
first token. Bins are quarter-octaves by magnitude — read straight from the float32 bits
(exponent and the top two mantissa bits), so binning costs a shift, not a search — for
|x| in [2^-6, 2^6), mirrored for negative values:

    bin 0              x <= -2^6 (and -inf)
    bins 1 .. 48       negative quarter-octaves, most negative first
    bin 49             |x| < 2^-6 (near zero, both signs)
    bins 50 .. 97      positive quarter-octaves
    bin 98             x >= 2^6 (and +inf, NaN)

A bin's magnitude range is [lo, hi): a negative bin holds x with -hi < x <= -lo.
"""

from __future__ import annotations

import torch

LOW_EXP = -6
HIGH_EXP = 6
PER_OCTAVE = 4
N_SIDE = (HIGH_EXP - LOW_EXP) * PER_OCTAVE  # 48 quarter-octaves per sign
N_BINS = 2 * N_SIDE + 3  # 99
ZERO_BIN = N_SIDE + 1  # 49
_FIRST = (127 + LOW_EXP) * PER_OCTAVE  # (biased exponent, 2 mantissa bits) of 2^LOW_EXP


def bin_index(x: torch.Tensor) -> torch.Tensor:
    """Bin of every element of a float tensor, as int32 in [0, N_BINS)."""
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    # q: quarter-octave of |x| counted from 2^LOW_EXP, -1 = near zero, N_SIDE = overflow.
    q = torch.bitwise_and(bits, 0x7FFFFFFF).bitwise_right_shift_(21).sub_(_FIRST - 1).clamp_(0, N_SIDE + 1)
    # bin = ZERO_BIN + (q + 1) for x >= 0 and ZERO_BIN - (q + 1) for x < 0: negate via the sign
    # bit (neg is 0 or -1, and (t ^ neg) - neg is t or -t). q + 1 = 0 lands on ZERO_BIN either way.
    neg = bits >> 31
    return q.bitwise_xor_(neg).sub_(neg).add_(ZERO_BIN)


def magnitude_edges() -> list[float]:
    """The N_SIDE + 1 magnitude boundaries 2^LOW_EXP ... 2^HIGH_EXP (quarter-octave steps)."""
    edges = []
    for e in range(LOW_EXP, HIGH_EXP):
        edges.extend((2.0**e) * (1 + j / PER_OCTAVE) for j in range(PER_OCTAVE))
    edges.append(2.0**HIGH_EXP)
    return edges


def bin_ranges() -> list[tuple[float, float]]:
    """(low, high) value range of every bin, for display: [low, high) up to sign conventions."""
    mags = magnitude_edges()
    inf = float("inf")
    neg = [(-inf, -mags[-1])] + [(-mags[i + 1], -mags[i]) for i in reversed(range(N_SIDE))]
    pos = [(mags[i], mags[i + 1]) for i in range(N_SIDE)] + [(mags[-1], inf)]
    return neg + [(-mags[0], mags[0])] + pos


def describe() -> dict:
    """What the manifest records about the bins."""
    return {
        "kind": "symmetric quarter-octaves",
        "n_bins": N_BINS,
        "zero_bin": ZERO_BIN,
        "magnitude_edges": magnitude_edges(),
        # JSON has no infinity: the open ends of the outer bins are null.
        "bin_ranges": [[v if abs(v) != float("inf") else None for v in r] for r in bin_ranges()],
    }
