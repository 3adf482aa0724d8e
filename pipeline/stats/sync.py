"""Whether the statistics may ask the device a question (a host sync) in the per-batch path.

On a GPU a host sync (`nonzero`, `.item()`, `int(t.max())`, a boolean index, `bincount`
sizing its output) makes the CPU wait until every queued kernel has run, so the next layer's
kernels are not queued meanwhile and the GPU idles. Off the CPU, the accumulators therefore take
fixed-size paths: every batch offers the same number of candidates per neuron or head, merged
with one `topk` into the kept lists (`pool.TopPool.merge_dense`), and band samples are
updated densely with `where`. On the CPU a sync costs nothing and the sparse paths (filter, then
offer the few survivors) are faster; `$MECHSCOPE_SYNC_FREE=1` forces the fixed-size paths there,
so that the tests compare them with the others on the same machine.
"""

from __future__ import annotations

import os

import torch

SYNC_FREE_ENV = "MECHSCOPE_SYNC_FREE"


def sync_free(device: str | torch.device) -> bool:
    """True off the CPU, or where $MECHSCOPE_SYNC_FREE=1."""
    return torch.device(device).type != "cpu" or os.environ.get(SYNC_FREE_ENV) == "1"
