"""Each neuron's strongest activations: top-k examples with context, and sparse records.

Two exact top lists per layer share one pass over the activations:
- `records`: the R strongest (activation, position) pairs per neuron -> the `activations` table;
- `examples`: the k strongest *windows*, each represented by its strongest position, with a
  window of the neuron's activations around it -> `neuron_examples` rows of kind 'top'. At most
  one example per window (seq_id), so that a neuron's evidence is k distinct passages rather
  than neighbouring positions of one sentence. A batch always holds whole windows, so a
  window's strongest position is found within one batch, and the top k of those is as exact and
  mergeable as a top k of positions.
Order: activation descending, then earlier position first (see `keys`), so the lists do not
depend on batch size, on resuming, or on how the corpus was split.

Two ways to keep the lists, with the same results: on the CPU, per-neuron heaps that the native
kernel updates in place (`heap.HeapTop`); elsewhere, pools of candidates filtered by a threshold
and compacted with `topk` (`pool.TopPool`), all torch.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import hooks
from pipeline.stats import native
from pipeline.stats.batch import LayerActs
from pipeline.stats.context import ContextWindow
from pipeline.stats.contract import StatContext
from pipeline.stats.deferred import TokenIdsAt, TokenWindows
from pipeline.stats.heap import HeapTop
from pipeline.stats.keys import KEY_EMPTY, decode_top, encode_top
from pipeline.stats.pool import TopPool
from pipeline.stats.sync import sync_free
from store import schema


class TopActivations:
    name = "top"
    tables = (schema.NEURONS, schema.NEURON_EXAMPLES, schema.ACTIVATIONS)

    @classmethod
    def create(cls, ctx: StatContext) -> TopActivations:
        c = ctx.config
        return cls(ctx.n_layers, ctx.d_mlp, c.top_k, c.records, c.seq_len, c.window, ctx.device, ctx.use_native)

    def hook_points(self) -> tuple[hooks.HookPoint, ...]:
        return tuple(hooks.point("mlp_post", layer) for layer in range(len(self.examples)))

    def __init__(self, n_layers: int, d_mlp: int, top_k: int, records: int, seq_len: int,
                 window: ContextWindow, device: str | torch.device = "cpu", use_native: bool | None = None):
        if records < top_k:
            raise ValueError("records per neuron must be at least top_k")
        self.top_k, self.n_records, self.seq_len, self.window = top_k, records, seq_len, window
        self.native = native.enabled(device) if use_native is None else use_native
        self.dense = not self.native and sync_free(device)  # fixed-size offers: see sync.py
        width = window.width(seq_len)
        kind = HeapTop if self.native else TopPool
        self.examples = [kind(d_mlp, top_k, width, device) for _ in range(n_layers)]
        self._seen = [0] * n_layers  # positions seen per layer: decides when to pre-filter
        self.records = [kind(d_mlp, records, 0, device) for _ in range(n_layers)]
        self._fresh = native.scratch(d_mlp, 2 * top_k) if self.native else None

    def update(self, x: LayerActs) -> None:
        if self.native:
            return self._update_native(x)
        if self.dense:
            return self._update_dense(x)
        layer, acts, flat, batch = x.layer, x.acts, x.flat, x.batch
        records, examples = self.records[layer], self.examples[layer]
        # Records: only activations above the current R-th best can enter.
        mask = flat > records.threshold
        early = self._seen[layer] < _EARLY * self.n_records
        self._seen[layer] += flat.shape[0]
        if early:
            # Early in the stream nearly everything passes: keep only this batch's own top R per
            # neuron (>= its R-th value, so ties stay in) before parking candidates. Any filter
            # that keeps the batch's top R is exact; this one only saves time.
            mask &= flat >= _kth_largest(flat, self.n_records)
        rows, neurons = mask.nonzero(as_tuple=True)
        if rows.numel():
            records.offer(neurons, encode_top(flat[rows, neurons], batch.positions[rows]))
        # Examples: one candidate per (window, neuron), the window's strongest non-BOS position
        # (`max` returns the first of equal values: the earlier position, as the keys order them).
        best, at = acts.masked_fill(batch.is_bos.unsqueeze(-1), float("-inf")).max(dim=1)  # [window d_mlp]
        hit = (best > examples.threshold) & (best > float("-inf"))
        seqs, neurons = hit.nonzero(as_tuple=True)
        if seqs.numel() == 0:
            return
        flat_rows = seqs * batch.seq_len + at[seqs, neurons]
        keys = encode_top(best[seqs, neurons], flat_rows + batch.first_pos)
        ctx = self.window.gather(acts, flat_rows, neurons, batch.is_bos)
        examples.offer(neurons, keys, ctx)

    def _update_dense(self, x: LayerActs) -> None:
        """The same lists without a host sync: per neuron, this batch's R strongest rows and its k
        strongest windows (keys, so ties order as everywhere), merged into the kept lists with one
        `topk` each. Exact: an entry of the final top R (k) is in its own batch's top R (k).
        Memory: the batch's keys, rows x d_mlp x 8 bytes (100 MB for 4,096 rows of GPT-2 small)."""
        layer, acts, batch = x.layer, x.acts, x.batch
        n_seqs, seq_len, d_mlp = acts.shape
        rows = x.rows  # [batch * pos, d_mlp]
        positions = batch.first_pos + torch.arange(rows.shape[0], device=rows.device)
        bos = batch.is_bos.reshape(-1, 1)
        keys = encode_top(rows, positions[:, None]).masked_fill(bos, KEY_EMPTY)  # [rows d_mlp]
        records = keys.topk(min(self.n_records, rows.shape[0]), dim=0).values  # [r d_mlp]
        self.records[layer].merge_dense(records.T)
        # Examples: each window's strongest non-BOS position (the first of equal values), then
        # this batch's k strongest windows per neuron.
        best, at = acts.masked_fill(batch.is_bos.unsqueeze(-1), float("-inf")).max(dim=1)  # [window d_mlp]
        flat_rows = torch.arange(n_seqs, device=acts.device)[:, None] * seq_len + at
        window_keys = encode_top(best, flat_rows + batch.first_pos).masked_fill(best == float("-inf"), KEY_EMPTY)
        top, seqs = window_keys.topk(min(self.top_k, n_seqs), dim=0)  # [kk d_mlp]
        chosen = flat_rows.gather(0, seqs)  # [kk d_mlp]
        neurons = torch.arange(d_mlp, device=acts.device).expand_as(chosen)
        ctx = self.window.gather(acts, chosen.reshape(-1), neurons.reshape(-1), batch.is_bos)  # [kk * d_mlp, w]
        self.examples[layer].merge_dense(top.T, ctx.view(*chosen.shape, -1).transpose(0, 1))

    def _update_native(self, x: LayerActs) -> None:
        examples, batch = self.examples[x.layer], x.batch
        fresh = native.top(x.rows, batch.skip, batch.first_pos, batch.seq_len, self.records[x.layer], examples,
                           self._fresh)
        if fresh.numel():
            neurons, slots = fresh[:, 0], fresh[:, 1]
            rows = examples.row[neurons, slots].long()
            ctx = self.window.gather(x.acts, rows, neurons, batch.is_bos)
            examples.payload[neurons, slots] = ctx.to(examples.payload.dtype)

    def merge(self, other: TopActivations) -> None:
        for mine, theirs in zip(self.examples + self.records, other.examples + other.records, strict=True):
            mine.merge(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for i, pool in enumerate(self.examples):
            state.update({f"examples.{i}.{k}": v for k, v in pool.state_dict().items()})
        for i, pool in enumerate(self.records):
            state.update({f"records.{i}.{k}": v for k, v in pool.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, pools in (("examples", self.examples), ("records", self.records)):
            for i, pool in enumerate(pools):
                head = f"{prefix}.{i}."
                pool.load_state_dict({k[len(head):]: v for k, v in state.items() if k.startswith(head)})

    def top_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """[layers, d_mlp, k] global positions and activations of the top examples (-1: none)."""
        keys = torch.stack([p.state_dict()["keys"] for p in self.examples])
        values, positions = decode_top(keys)
        return positions.cpu().numpy(), values.cpu().numpy()

    def finalize(self) -> dict[str, dict[str, object]]:
        """`neuron_examples` (kind 'top') and `activations` rows; for `neurons`, the token after
        each top example (`_top_next_token_ids`, [layer*neuron, k], -1 where there is none: the
        end of a window, a BOS) for the derived key-value agreement, and the token before it
        (`_top_prev_token_ids`, -1 for a BOS or no example) with the number of examples
        (`_top_n_examples`) for the derived `after_bos_frac` (`stats/derived.py`)."""
        positions, _ = self.top_positions()
        next_pos = np.where(positions >= 0, positions + 1, -1)
        next_pos[(next_pos % self.seq_len) == 0] = -1  # the next position is in another window
        # An example is never at a BOS, so position - 1 lies in the same window.
        prev_pos = np.where(positions >= 0, positions - 1, -1)
        k = positions.shape[-1]
        return {
            "neurons": {"_top_next_token_ids": TokenIdsAt(next_pos.reshape(-1, k)),
                        "_top_prev_token_ids": TokenIdsAt(prev_pos.reshape(-1, k)),
                        "_top_n_examples": (positions >= 0).reshape(-1, k).sum(1)},
            "neuron_examples": self._example_rows(),
            "activations": self._record_rows(),
        }

    def _flatten(self, pools: list[TopPool]) -> tuple[dict[str, np.ndarray], tuple[torch.Tensor, ...]]:
        """Non-empty entries of per-layer pools as columns (layer, neuron, rank, seq_id, pos,
        activation), and their (layer, neuron, rank) indices."""
        keys = torch.stack([p.state_dict()["keys"] for p in pools])  # [layer neuron rank]
        index = (keys != KEY_EMPTY).nonzero(as_tuple=True)
        layer, neuron, rank = index
        values, positions = decode_top(keys[index])
        return {
            "layer": layer.cpu().numpy().astype(np.int16),
            "neuron": neuron.cpu().numpy().astype(np.int32),
            "rank": rank.cpu().numpy().astype(np.int16),
            "seq_id": (positions // self.seq_len).cpu().numpy().astype(np.int32),
            "pos": (positions % self.seq_len).cpu().numpy().astype(np.int16),
            "activation": values.cpu().numpy().astype(np.float32),
        }, index

    def _record_rows(self) -> dict[str, np.ndarray]:
        rows, _ = self._flatten(self.records)
        del rows["rank"]
        return rows

    def _example_rows(self) -> dict[str, np.ndarray]:
        rows, index = self._flatten(self.examples)
        payload = torch.stack([p.state_dict()["payload"] for p in self.examples])
        ctx = payload[index].to(torch.float32).cpu().numpy()
        pos = torch.from_numpy(rows["pos"].astype(np.int64))
        rows["kind"] = np.full(len(rows["pos"]), "top", dtype=object)
        rows["ctx_start"] = self.window.start(pos, self.seq_len).numpy().astype(np.int16)
        rows["context_acts"] = ctx  # [rows, width]
        starts = rows["seq_id"].astype(np.int64) * self.seq_len + rows["ctx_start"]
        rows["context_tokens"] = TokenWindows(starts, self.window.width(self.seq_len))
        rows["context_display"] = TokenWindows(starts, self.window.width(self.seq_len), merged=True)
        return rows


_EARLY = 8  # pre-filter while fewer than 8 R positions were seen (then ~1/8 of a batch would pass)


def _kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """[d_mlp] the k-th largest value of each column (-inf where a column has fewer rows)."""
    if flat.shape[0] < k:
        return torch.full((flat.shape[1],), float("-inf"), device=flat.device)
    return flat.topk(k, dim=0, sorted=False).values.amin(0)
