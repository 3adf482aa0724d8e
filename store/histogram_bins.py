"""The histogram bins every store uses: fixed, symmetric quarter-octaves (no torch here).

A histogram can only be merged across batches and shards if its edges are fixed before the
first token, so the bins are part of the store's contract, not of one build:

    bin 0              x <= -2^6 (and -inf)
    bins 1 .. 48       negative quarter-octaves, most negative first
    bin 49             |x| < 2^-6 (near zero, both signs)
    bins 50 .. 97      positive quarter-octaves
    bin 98             x >= 2^6 (and +inf, NaN)

A bin's magnitude range is [lo, hi): a negative bin holds x with -hi < x <= -lo. The fast
tensor binning is `pipeline.stats.bins.bin_index`; `bin_of` here is the plain-Python reference.
"""

from __future__ import annotations

import bisect

LOW_EXP = -6
HIGH_EXP = 6
PER_OCTAVE = 4
N_SIDE = (HIGH_EXP - LOW_EXP) * PER_OCTAVE  # 48 quarter-octaves per sign
N_BINS = 2 * N_SIDE + 3  # 99
ZERO_BIN = N_SIDE + 1  # 49


def magnitude_edges() -> list[float]:
    """The N_SIDE + 1 magnitude boundaries 2^LOW_EXP ... 2^HIGH_EXP (quarter-octave steps)."""
    edges = [(2.0**e) * (1 + j / PER_OCTAVE) for e in range(LOW_EXP, HIGH_EXP) for j in range(PER_OCTAVE)]
    return edges + [2.0**HIGH_EXP]


def bin_ranges() -> list[tuple[float, float]]:
    """(low, high) value range of every bin, infinite at the outer ends."""
    mags = magnitude_edges()
    inf = float("inf")
    neg = [(-inf, -mags[-1])] + [(-mags[i + 1], -mags[i]) for i in reversed(range(N_SIDE))]
    pos = [(mags[i], mags[i + 1]) for i in range(N_SIDE)] + [(mags[-1], inf)]
    return neg + [(-mags[0], mags[0])] + pos


def bin_of(x: float) -> int:
    """The bin of one value (reference implementation, for tests and synthetic stores)."""
    mags = magnitude_edges()
    if abs(x) < mags[0]:
        return ZERO_BIN
    q = min(bisect.bisect_right(mags, abs(x)) - 1, N_SIDE)  # N_SIDE: overflow
    return ZERO_BIN + 1 + q if x > 0 or x != x else ZERO_BIN - 1 - q


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
