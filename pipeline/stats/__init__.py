"""Streaming statistics: one small accumulator per statistic, on one contract (`contract.py`).

Every statistic declares its hook points and tables, and has `update(LayerActs)` with one hook
point's tensor on one batch, `merge(other)` (shards), `state_dict()` / `load_state_dict()`
(checkpoints) and `finalize()` -> {table: {column: values}}. They keep constant memory over the
stream and give the same result however the corpus was batched or split. `registry.STATISTICS`
lists the ones a build runs. The neuron statistics (moments, top, histogram) run a fused CPU
kernel (`native`) where they can, elsewhere torch ops; both give the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.stats.context import ContextWindow


@dataclass(frozen=True)
class StatsConfig:
    seq_len: int = 128
    top_k: int = 20
    records: int = 256  # sparse activation records per neuron (`activations` table)
    context_before: int = 16
    context_after: int = 4
    hist_sample_shift: int = 3  # histograms and band samples see 1 / 2^shift of the positions
    lens_sample_shift: int = 8  # the logit lens decodes 1 / 2^shift of the positions (in spans: stats/lens.py)
    lens_top_k: int = 5  # top tokens kept per position and depth

    @property
    def window(self) -> ContextWindow:
        return ContextWindow(self.context_before, self.context_after)
