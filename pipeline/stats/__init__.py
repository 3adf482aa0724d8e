"""Streaming neuron statistics: one small accumulator per statistic.

Every accumulator has the same shape: `update(LayerActs)` with one layer's MLP activations on
one batch, `merge(other)` (shards), `state_dict()` / `load_state_dict()` (checkpoints) and
`finalize()` -> {table: {column: values}}. They keep constant memory over the stream and give
the same result however the corpus was batched or split. `NEURON_STATS` lists them in order.
On the CPU each runs a fused kernel (`native`), elsewhere torch ops; both give the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.stats.context import ContextWindow
from pipeline.stats.histogram import Histogram
from pipeline.stats.moments import Moments
from pipeline.stats.top import TopActivations


@dataclass(frozen=True)
class StatsConfig:
    seq_len: int = 128
    top_k: int = 20
    records: int = 256  # sparse activation records per neuron (`activations` table)
    context_before: int = 16
    context_after: int = 4
    hist_sample_shift: int = 3  # histograms and band samples see 1 / 2^shift of the positions

    @property
    def window(self) -> ContextWindow:
        return ContextWindow(self.context_before, self.context_after)


NEURON_STATS = (Moments, TopActivations, Histogram)


def make_neuron_stats(config: StatsConfig, n_layers: int, d_mlp: int, device: str | torch.device,
                      use_native: bool | None = None) -> list:
    """One instance of every accumulator in NEURON_STATS, sized for a model. `use_native`: the
    fused CPU kernels (`native`); None = wherever they are available (CPU, a C compiler)."""
    return [
        Moments(n_layers, d_mlp, device, use_native),
        TopActivations(n_layers, d_mlp, config.top_k, config.records, config.seq_len, config.window, device,
                       use_native),
        Histogram(n_layers, d_mlp, config.seq_len, config.window, device, use_native),
    ]
