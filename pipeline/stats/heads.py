"""Per-head attention-pattern statistics over the corpus: the `heads` pattern columns and the
`head_examples` table, streamed from every layer's `attn.hook_pattern` `[batch head q k]`.

Definitions (a query row is one (window, position, head); BOS query rows, i.e. position 0 and
the document separators of packed windows, are excluded from every score; `count` rows remain;
keys k > q are never read: the pattern is causal, exactly 0 there):
- prev_token_score: mean attention to key q - 1, whatever it holds (for the first token of a
  document that key is a BOS, so this mass also counts in bos_score);
- self_score: mean attention to key q;
- bos_score: mean attention summed over the BOS keys k <= q (position 0 and separators);
- entropy_nats: mean of -sum_k p log p (0 log 0 = 0);
- attn_distance_tokens: mean of sum_k p (q - k);
- attn_by_offset[o], o = 0 .. 15: mean attention to key q - o, 0 where q < o (so offsets
  0 and 1 are self_score and prev_token_score);
- duplicate_score: mean attention summed over keys k < q that are not BOS and hold the query's
  token; averaged over the `repeat_count` rows that have at least one such key;
- induction_score: mean attention summed over keys k, 1 <= k <= q, with k and k - 1 not BOS and
  token[k - 1] == token[q]; averaged over the same `repeat_count` rows. k = q is included: when
  the query's token also sits just before it ("A A"), the position after that occurrence is the
  query itself, and an induction head (whose key at k carries "my previous token was A")
  attends there. Excluding it would leave such rows in the average with no target. An
  occurrence followed by a separator (the end of a document) has no target: its BOS is excluded.
  duplicate and induction are null (NaN) where repeat_count is 0.
"Earlier in the window" includes earlier documents packed into the same window: attention is
not masked between documents either.

Top examples (`head_examples`): for every non-BOS query row, its strongest attention to a
non-BOS key k <= q (the earliest such key among equal values) as (attention, src_pos); per head
the `top_k` rows with the largest attention, ties broken by earlier global position (keys from
`keys.encode_top`), kept exactly by `pool.TopPool` (one pool per layer, one list per head). Each
batch offers only its own top k rows per head (exact: a global top-k row is in its batch's top
k), as a fixed-size `topk`, without a host sync to count candidates. Payload per entry:
src_pos, the query's attention row over keys 0 .. seq_len-1, and the w x w block (w =
min(20, seq_len)) of queries and keys block_start .. block_start + w - 1, block_start =
clamp(pos - w + 1, 0, seq_len - w): the rows up to and including the example's. The payload is
float32, not the float16 of neuron contexts: it is small (layers x heads x k rows, not
x neurons: 6 MB for GPT-2 small at k = 20) and float32 is exactly what the model gave, so
pattern[src_pos] equals `attention` in the store.

Cost (gpt2-random, batch 8 x 128, fp32, 2 threads): 3.6-4.1 ms per layer inside the forward,
7% of the neuron-only harvest (`bench/harvest.py`). Each layer packs the lower triangle of its
pattern once and takes two small matmuls and p log p of it, one gather of 16 diagonals and one
masked max; the token masks are built once per batch (~0.9 ms) and shared by the layers. On the
CPU a batch's candidate examples are offered only when they beat the head's kept k-th key (a
host sync, free there), so most batches skip the payload gathers and the list merge; on other
devices every head offers its batch's top k rows, merged with one `topk` and no host sync
(`TopPool.merge_dense`, see `sync.py`). Maths is in `head_scores.py`; the
repeated random tokens scores (rand_* columns) are a function of the model alone,
`pipeline/analysis/induction_probe.py`; the weight-based head columns are elsewhere too.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from pipeline import hooks
from pipeline.stats import head_scores
from pipeline.stats.batch import LayerActs, TokenBatch
from pipeline.stats.contract import StatContext
from pipeline.stats.deferred import TokenWindows
from pipeline.stats.keys import KEY_EMPTY, decode_top, encode_top
from pipeline.stats.pool import TopPool
from pipeline.stats.sync import sync_free
from store import schema

BLOCK = 20  # the block is w x w with w = min(BLOCK, seq_len)


class HeadPatterns:
    name = "heads"
    tables = (schema.HEADS, schema.HEAD_EXAMPLES)

    @classmethod
    def create(cls, ctx: StatContext) -> HeadPatterns:
        return cls(ctx.n_layers, ctx.n_heads, ctx.seq_len, ctx.config.top_k, ctx.device)

    def __init__(self, n_layers: int, n_heads: int, seq_len: int, top_k: int, device: str | torch.device = "cpu"):
        self.n_layers, self.n_heads, self.seq_len, self.top_k = n_layers, n_heads, seq_len, top_k
        self.block = min(BLOCK, seq_len)
        self.count = torch.zeros(n_layers, dtype=torch.int64, device=device)
        self.repeat_count = torch.zeros(n_layers, dtype=torch.int64, device=device)
        self.sums = torch.zeros((n_layers, n_heads, head_scores.N_SUMS), dtype=torch.float64, device=device)
        width = 1 + seq_len + self.block * self.block  # src_pos, attention row, block
        self.examples = [TopPool(n_heads, top_k, width, device, torch.float32) for _ in range(n_layers)]
        # offer only candidates that beat the kept lists: needs a host sync, so on the CPU only
        self.prefilter = not sync_free(device)
        self._masks: tuple[weakref.ref, head_scores.BatchMasks] | None = None

    def hook_points(self) -> tuple[hooks.HookPoint, ...]:
        return tuple(hooks.point("attn_pattern", layer) for layer in range(self.n_layers))

    def update(self, x: LayerActs) -> None:
        pattern, batch = x.acts, x.batch  # [batch head q k]
        masks = self._batch_masks(batch)
        self.count[x.layer] += masks.n_valid
        self.repeat_count[x.layer] += masks.n_repeat
        self.sums[x.layer] += head_scores.pattern_sums(pattern, masks)
        self._offer_examples(x.layer, pattern, masks, batch)

    def _batch_masks(self, batch: TokenBatch) -> head_scores.BatchMasks:
        """The batch's masks, built by the first layer that sees the batch. Keyed by the batch
        object through a weak reference: an id could be reused by a later batch."""
        if self._masks is None or self._masks[0]() is not batch:
            if batch.token_ids is None:
                raise ValueError("head statistics need the batch's token ids (TokenBatch.token_ids)")
            self._masks = (weakref.ref(batch), head_scores.batch_masks(batch.is_bos, batch.token_ids))
        return self._masks[1]

    def _offer_examples(self, layer: int, pattern: torch.Tensor, masks: head_scores.BatchMasks,
                        batch: TokenBatch) -> None:
        n_seqs, n_heads, seq_len, _ = pattern.shape
        device = pattern.device
        pool = self.examples[layer]
        values = head_scores.strongest_values(pattern, masks)  # [batch head q]
        positions = batch.first_pos + torch.arange(n_seqs * seq_len, device=device).view(n_seqs, 1, seq_len)
        keys = encode_top(values, positions).masked_fill(~masks.valid[:, None, :], KEY_EMPTY)
        keys = keys.transpose(0, 1).reshape(n_heads, n_seqs * seq_len)
        keys, rows = keys.topk(min(self.top_k, n_seqs * seq_len), dim=1)  # [head kk]: this batch's top per head
        h = torch.arange(n_heads, device=device)[:, None].expand_as(rows)
        if self.prefilter:
            # A host sync costs nothing on the CPU: offer only the rows that beat the head's kept
            # k-th key (kept keys only grow, so a row below it never enters; exact), and most
            # batches of a long build offer none, skipping the payload gathers and the compaction.
            wins = keys > pool.keys[:, -1:]
            if not bool(wins.any()):
                return
            h, keys, rows = h[wins], keys[wins], rows[wins]
        h, keys, rows = h.reshape(-1), keys.reshape(-1), rows.reshape(-1)
        # Gather the chosen rows' payload by flat index into the pattern.
        b, q = rows // seq_len, rows % seq_len
        plane = (b * n_heads + h) * seq_len  # flat row index of (b, h, q=0)
        flat = pattern.reshape(-1)
        cols = torch.arange(seq_len, device=device)
        row = flat.take(((plane + q) * seq_len)[:, None] + cols)  # [n pos]
        src = head_scores.strongest_key(row, masks.key_weights[b, 0, q] > 0)
        w = self.block
        span = (q - w + 1).clamp(min=0, max=seq_len - w)[:, None] + cols[:w]  # [n w]
        block = flat.take(((plane[:, None] + span) * seq_len)[:, :, None] + span[:, None, :])  # [n w w]
        payload = torch.cat([src.unsqueeze(-1).to(torch.float32), row, block.reshape(-1, w * w)], dim=-1)
        if self.prefilter:
            pool.offer(h, keys, payload)
        else:  # every head offered the same number of rows: one topk, no host sync
            pool.merge_dense(keys.view(n_heads, -1), payload.view(n_heads, -1, payload.shape[-1]))

    def merge(self, other: HeadPatterns) -> None:
        self.count += other.count.to(self.count.device)
        self.repeat_count += other.repeat_count.to(self.count.device)
        self.sums += other.sums.to(self.sums.device)
        for mine, theirs in zip(self.examples, other.examples, strict=True):
            mine.merge(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"count": self.count, "repeat_count": self.repeat_count, "sums": self.sums}
        for i, pool in enumerate(self.examples):
            state.update({f"examples.{i}.{k}": v for k, v in pool.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for f in ("count", "repeat_count", "sums"):
            setattr(self, f, state[f].to(getattr(self, f).device))
        for i, pool in enumerate(self.examples):
            head = f"examples.{i}."
            pool.load_state_dict({k[len(head):]: v for k, v in state.items() if k.startswith(head)})
        self._masks = None

    def finalize(self) -> dict[str, dict[str, object]]:
        """`heads` pattern columns, rows in (layer, head) order, and `head_examples` rows."""
        self._masks = None
        n_layers, n_heads = self.n_layers, self.n_heads
        count = self.count[:, None].expand(n_layers, n_heads)
        repeat_count = self.repeat_count[:, None].expand(n_layers, n_heads)
        scores = head_scores.mean_scores(self.sums, count, repeat_count)
        heads: dict[str, object] = {
            "layer": np.repeat(np.arange(n_layers, dtype=np.int16), n_heads),
            "head": np.tile(np.arange(n_heads, dtype=np.int16), n_layers),
            "count": count.reshape(-1).cpu().numpy().astype(np.int64),
            "repeat_count": repeat_count.reshape(-1).cpu().numpy().astype(np.int64),
        }
        for name, values in scores.items():
            heads[name] = values.reshape(n_layers * n_heads, -1).squeeze(-1).to(torch.float32).cpu().numpy()
        return {"heads": heads, "head_examples": self._example_rows()}

    def _example_rows(self) -> dict[str, object]:
        keys = torch.stack([p.state_dict()["keys"] for p in self.examples])  # [layer head rank]
        payload = torch.stack([p.state_dict()["payload"] for p in self.examples])
        index = (keys != KEY_EMPTY).nonzero(as_tuple=True)
        layer, head, rank = index
        values, positions = decode_top(keys[index])
        payload = payload[index].cpu()
        seq_len, w = self.seq_len, self.block
        seq_id = (positions // seq_len).cpu().numpy().astype(np.int64)
        pos = (positions % seq_len).cpu()
        return {
            "layer": layer.cpu().numpy().astype(np.int16),
            "head": head.cpu().numpy().astype(np.int16),
            "rank": rank.cpu().numpy().astype(np.int16),
            "seq_id": seq_id.astype(np.int32),
            "pos": pos.numpy().astype(np.int16),
            "src_pos": payload[:, 0].numpy().astype(np.int16),
            "attention": values.cpu().numpy().astype(np.float32),
            "pattern": payload[:, 1:1 + seq_len].numpy(),  # [rows, seq_len]
            "block_start": (pos - w + 1).clamp(min=0, max=seq_len - w).numpy().astype(np.int16),
            "block": payload[:, 1 + seq_len:].numpy(),  # [rows, w * w]
            "context_tokens": TokenWindows(seq_id * seq_len, seq_len),
        }
