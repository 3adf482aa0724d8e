"""Streaming neuron statistics: one small accumulator per statistic.

Every accumulator has the same shape: `update(layer, acts, flat, batch)` with one layer's MLP
activations, `merge(other)` (shards), `state_dict()` / `load_state_dict()` (checkpoints) and
`finalize()` -> {table: {column: values}}. They keep constant memory over the stream and give
the same result however the corpus was batched or split. `NEURON_STATS` lists them in order.
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


def make_neuron_stats(config: StatsConfig, n_layers: int, d_mlp: int,
                      device: str | torch.device) -> list:
    """One instance of every accumulator in NEURON_STATS, sized for a model."""
    return [
        Moments(n_layers, d_mlp, device),
        TopActivations(n_layers, d_mlp, config.top_k, config.records, config.seq_len,
                       config.window, device),
        Histogram(n_layers, d_mlp, config.seq_len, config.window, device),
    ]
