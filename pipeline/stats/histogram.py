"""Activation histograms and band samples, on fixed bins (see `bins`).

Histogram: counts per neuron per bin. Band samples: for every (neuron, bin), one position drawn
uniformly at random from the positions whose activation fell in that bin — the one with the
smallest position hash (`keys.encode_sample`), so the draw is the same however the corpus was
batched or split. Each sample keeps a window of context activations. Bins outside
|x| >= 2^-6 (the near-zero bin) get no sample: they say nothing about what the neuron detects.

Both cover the positions of `TokenBatch.sample_rows` (all non-BOS positions unless the build
samples histograms, see `--hist-sample`).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import hooks
from pipeline.stats import native
from pipeline.stats.batch import LayerActs
from pipeline.stats.bins import KERNEL_CONSTANTS, N_BINS, ZERO_BIN, bin_index
from pipeline.stats.context import ContextWindow
from pipeline.stats.contract import StatContext
from pipeline.stats.deferred import TokenWindows
from pipeline.stats.keys import KEY_FULL, decode_sample
from pipeline.stats.sync import sync_free
from store import schema


class Histogram:
    name = "histogram"
    tables = (schema.NEURONS, schema.NEURON_EXAMPLES)

    @classmethod
    def create(cls, ctx: StatContext) -> Histogram:
        return cls(ctx.n_layers, ctx.d_mlp, ctx.seq_len, ctx.config.window, ctx.device, ctx.use_native)

    def hook_points(self) -> tuple[hooks.HookPoint, ...]:
        return tuple(hooks.point("mlp_post", layer) for layer in range(self.counts.shape[0]))

    def __init__(self, n_layers: int, d_mlp: int, seq_len: int, window: ContextWindow,
                 device: str | torch.device = "cpu", use_native: bool | None = None):
        self.d_mlp, self.seq_len, self.window = d_mlp, seq_len, window
        self.native = native.enabled(device) if use_native is None else use_native
        self.dense = not self.native and sync_free(device)  # band samples updated with `where`: see sync.py
        self._won = native.scratch(d_mlp, N_BINS) if self.native else None
        width = window.width(seq_len)
        slots = d_mlp * N_BINS
        self.counts = torch.zeros((n_layers, slots), dtype=torch.int64, device=device)
        self.sample_keys = torch.full((n_layers, slots), KEY_FULL, dtype=torch.int64, device=device)
        self.sample_values = torch.zeros((n_layers, slots), dtype=torch.float32, device=device)
        self.sample_ctx = torch.zeros((n_layers, slots, width), dtype=torch.float16, device=device)
        self._offsets = torch.arange(d_mlp, device=device, dtype=torch.int32) * N_BINS

    def update(self, la: LayerActs) -> None:
        layer, batch = la.layer, la.batch
        rows = batch.sample_rows
        if rows.numel() == 0:
            return
        if self.native:
            return self._update_native(la)
        flat = la.flat
        x = flat if rows.numel() == flat.shape[0] else flat.index_select(0, rows)
        slot = (bin_index(x) + self._offsets).reshape(-1).long()  # [rows * d_mlp] neuron * N_BINS + bin
        # scatter_add, not bincount: bincount sizes its output from the data (a host sync on a GPU)
        self.counts[layer].scatter_add_(0, slot, torch.ones_like(slot))

        # Smallest hash key per slot in this batch, then keep the slots where it beats the past.
        keys = batch.sample_keys.unsqueeze(1).expand(-1, self.d_mlp).reshape(-1)
        best = torch.full_like(self.sample_keys[layer], KEY_FULL)
        best.scatter_reduce_(0, slot, keys, "amin")
        if self.dense:
            return self._take_samples_dense(la, best)
        won = (best < self.sample_keys[layer]).nonzero().squeeze(1)
        if won.numel() == 0:
            return
        self.sample_keys[layer, won] = best[won]
        self._take_samples(la, won)

    def _take_samples_dense(self, la: LayerActs, best: torch.Tensor) -> None:
        """`_take_samples` for every slot at once, kept where this batch's key wins: no host sync,
        at the price of a context window gathered per (neuron, bin) slot."""
        layer, batch = la.layer, la.batch
        won = best < self.sample_keys[layer]
        self.sample_keys[layer] = torch.where(won, best, self.sample_keys[layer])
        rows = (decode_sample(best) - batch.first_pos).masked_fill(~won, 0)  # a valid row where nothing won
        neuron = torch.arange(won.numel(), device=won.device) // N_BINS
        values = la.rows[rows, neuron]
        ctx = self.window.gather(la.acts, rows, neuron, batch.is_bos).to(torch.float16)
        self.sample_values[layer] = torch.where(won, values, self.sample_values[layer])
        self.sample_ctx[layer] = torch.where(won.unsqueeze(-1), ctx, self.sample_ctx[layer])

    def _update_native(self, la: LayerActs) -> None:
        layer, batch = la.layer, la.batch
        first = batch.first_pos
        won = native.hist(la.rows, batch.valid_rows[batch.sample_rows], batch.sample_keys,
                          (first, first + batch.skip.numel()), KERNEL_CONSTANTS, self.counts[layer],
                          self.sample_keys[layer], self._won)
        if won.numel():
            self._take_samples(la, won)

    def _take_samples(self, la: LayerActs, won: torch.Tensor) -> None:
        """Value and context of the band samples whose slots `won` this batch: their positions
        are in their keys, which already hold the winners."""
        layer, neuron = la.layer, won // N_BINS
        rows = decode_sample(self.sample_keys[layer, won]) - la.batch.first_pos  # b * seq_len + pos
        self.sample_values[layer, won] = la.rows[rows, neuron]
        self.sample_ctx[layer, won] = self.window.gather(la.acts, rows, neuron, la.batch.is_bos).to(torch.float16)

    def merge(self, other: Histogram) -> None:
        self.counts += other.counts
        theirs = other.sample_keys < self.sample_keys
        self.sample_keys = torch.where(theirs, other.sample_keys, self.sample_keys)
        self.sample_values = torch.where(theirs, other.sample_values, self.sample_values)
        self.sample_ctx = torch.where(theirs.unsqueeze(-1), other.sample_ctx, self.sample_ctx)

    _FIELDS = ("counts", "sample_keys", "sample_values", "sample_ctx")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in self._FIELDS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for f in self._FIELDS:
            setattr(self, f, state[f].to(getattr(self, f).device))

    def finalize(self) -> dict[str, dict]:
        n_layers = self.counts.shape[0]
        counts = self.counts.reshape(n_layers * self.d_mlp, N_BINS).cpu().numpy()
        keys = self.sample_keys.reshape(n_layers, self.d_mlp, N_BINS)
        present = keys != KEY_FULL
        present[:, :, ZERO_BIN] = False
        layer, neuron, band = present.nonzero(as_tuple=True)
        positions = decode_sample(keys[layer, neuron, band])
        pos = positions % self.seq_len
        slot = neuron * N_BINS + band
        seq_id = (positions // self.seq_len).cpu().numpy().astype(np.int32)
        ctx_start = self.window.start(pos, self.seq_len).cpu().numpy().astype(np.int16)
        width = self.window.width(self.seq_len)
        return {
            "neurons": {"hist_counts": counts},  # [layer * neuron, N_BINS]
            "neuron_examples": {
                "layer": layer.cpu().numpy().astype(np.int16),
                "neuron": neuron.cpu().numpy().astype(np.int32),
                "kind": np.full(layer.numel(), "band", dtype=object),
                "rank": band.cpu().numpy().astype(np.int16),
                "seq_id": seq_id,
                "pos": pos.cpu().numpy().astype(np.int16),
                "activation": self.sample_values[layer, slot].cpu().numpy(),
                "ctx_start": ctx_start,
                "context_acts": self.sample_ctx[layer, slot].to(torch.float32).cpu().numpy(),
                "context_tokens": TokenWindows(seq_id.astype(np.int64) * self.seq_len + ctx_start, width),
                "context_display": TokenWindows(seq_id.astype(np.int64) * self.seq_len + ctx_start, width,
                                                merged=True),
            },
        }
