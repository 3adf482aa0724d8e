"""The forward pass that feeds the accumulators: one batch of windows at a time.

Hooks at every layer's `mlp.hook_post` hand the activations (as float32, on the model's device)
to each accumulator as soon as the layer has run, so at most one layer's activations are alive
at once. After the last layer the forward is stopped: the final norm and the unembedding are
not needed for neuron statistics. No maths lives here; see `pipeline/stats/`.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import hooks
from pipeline.stats import StatsConfig, make_neuron_stats
from pipeline.stats.batch import LayerActs, TokenBatch


class _LastLayerDone(Exception):
    """Raised from the last layer's hook to skip the rest of the forward pass."""


def run_through_last_mlp(model, tokens: torch.Tensor, fwd_hooks: list) -> None:
    """Run the bridge with `fwd_hooks` and stop right after the last layer's `mlp.hook_post`
    (its own hooks there run first: hooks fire in the order they were added)."""

    def stop(acts: torch.Tensor, hook=None) -> None:
        raise _LastLayerDone

    last = (hooks.mlp_post(model.n_layers - 1), stop)
    try:
        with model.bridge.hooks(fwd_hooks=[*fwd_hooks, last]):
            model.bridge(tokens, return_type=None)
    except _LastLayerDone:
        pass


class NeuronHarvest:
    def __init__(self, model, config: StatsConfig, use_native: bool | None = None):
        """use_native: the fused CPU kernels of `stats.native` (None: wherever available)."""
        self.model, self.config = model, config
        self.stats = make_neuron_stats(config, model.n_layers, model.d_mlp, model.device, use_native)
        self._batch: TokenBatch | None = None

    def _hook(self, layer: int):
        def fn(acts: torch.Tensor, hook=None) -> None:
            batch = self._batch
            assert batch is not None
            # statistics accumulate in fp32 at least
            x = LayerActs(layer, acts.detach().to(torch.float32).contiguous(), batch)
            for stat in self.stats:
                stat.update(x)

        return fn

    def fwd_hooks(self) -> list:
        return [(hooks.mlp_post(layer), self._hook(layer)) for layer in range(self.model.n_layers)]

    @torch.no_grad()
    def process(self, first_seq: int, token_ids: np.ndarray, is_bos: np.ndarray) -> None:
        """Run one batch of windows ([batch pos] token ids, BOS mask) through the model."""
        device = self.model.device
        tokens = torch.from_numpy(np.ascontiguousarray(token_ids)).to(device=device, dtype=torch.long)
        bos = torch.from_numpy(np.ascontiguousarray(is_bos)).to(device)
        self._batch = TokenBatch.build(first_seq, bos, self.config.hist_sample_shift)
        try:
            run_through_last_mlp(self.model, tokens, self.fwd_hooks())
        finally:
            self._batch = None

    def merge(self, other: NeuronHarvest) -> None:
        for mine, theirs in zip(self.stats, other.stats, strict=True):
            mine.merge(theirs)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {stat.name: stat.state_dict() for stat in self.stats}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for stat in self.stats:
            stat.load_state_dict(state[stat.name])

    def finalize(self) -> dict[str, dict]:
        """Merge every accumulator's columns, table by table."""
        tables: dict[str, dict] = {}
        for stat in self.stats:
            for table, columns in stat.finalize().items():
                into = tables.setdefault(table, {})
                for name, values in columns.items():
                    if name in into:  # row-wise tables: append
                        into[name] = _concat(into[name], values)
                    else:
                        into[name] = values
        return tables

    @property
    def top(self):
        return next(s for s in self.stats if s.name == "top")


def _concat(a, b):
    if isinstance(a, list):
        return a + list(b)
    return np.concatenate([a, b])
