"""The logit lens and the residual stream on a sample of positions: the `logit_lens`,
`lens_positions` and `layer_stats` tables and the heads' `dla_mean` column.

Which positions: the corpus is cut into spans of SPAN consecutive positions (global position //
SPAN), and a span is decoded when the hash of its index has its low `lens_sample_shift` bits
zero (1 / 2^shift of the spans; 0 decodes everything); BOS positions are dropped. The sample is
a function of global positions alone, so batching, resuming and sharding never change it; spans
(not single positions) give the logit-lens page runs of text to show.

What is read: every block's `resid_pre` and `resid_mid`, the last block's `resid_post` and every
block's `attn.hook_z`, only at the sampled rows (the rows are gathered in each hook; nothing else
is kept). When the last block's output arrives, the sampled positions are decoded
(`lens_maths.lens_positions`: every depth through the final norm with its own scale and the
unembedding, a few positions at a time, never all layers' full-vocabulary logits of a batch at
once; the chunks have a fixed size, padded, so that a position's floats do not depend on what
else its batch held) and only the small results are kept: top-k, scalars, per-head attributions.

State: one record per sampled position, in the order seen; merging concatenates, and `finalize`
sorts the records by global position before anything is summed, so `layer_stats` (means over the
sampled positions, float64, in position order) is the same however the corpus was split.
The forward pass now runs to the last block's output (one MLP further than the neuron statistics
need); the final norm and the unembedding of the full batch are still skipped.

Cost: a sampled position costs (2L + 1) x d_model x d_vocab multiply-adds plus a few passes over
its (2L + 1) x d_vocab log-probabilities: 16 ms on GPT-2 small's shape and 25-50 ms on smollm2's
(2 cores), i.e. 15-40 forward tokens; the default 1 span in 256 keeps the lens under a tenth of
the harvest (`bench/harvest.py` measures it).
"""

from __future__ import annotations

import weakref

import numpy as np
import pyarrow as pa
import torch

from pipeline import hooks
from pipeline.stats.batch import LayerActs, TokenBatch
from pipeline.stats.contract import StatContext
from pipeline.stats.keys import position_hash
from pipeline.stats.lens_maths import Unembed, lens_positions, site_of, writer_of
from store import schema

SPAN = 16  # consecutive positions decoded together
CHUNK_BYTES = 32 << 20  # positions are decoded in chunks whose logits [chunk depth vocab] fit this
FIELDS = ("top_ids", "top_probs", "kl", "entropy", "agrees", "true_prob", "true_rank", "resid_norm",
          "write_norm", "write_dla", "head_dla", "pca", "pca_top")


def sampled_rows(batch: TokenBatch, shift: int) -> torch.Tensor:
    """Flat row indices (b * seq_len + pos) of the batch's sampled non-BOS positions, ascending;
    chosen on the host (`TokenBatch.host_bos`) and moved to the batch's device, so that a GPU is
    never asked how many there are."""
    flat = torch.arange(batch.n_seqs * batch.seq_len)
    keep = ~batch.host_bos.reshape(-1)
    if shift:
        spans = (flat + batch.first_seq * batch.seq_len) // SPAN
        keep &= (position_hash(spans) & ((1 << shift) - 1)) == 0
    return flat[keep].to(batch.is_bos.device, non_blocking=True)


class LogitLens:
    name = "logit_lens"
    tables = (schema.LOGIT_LENS, schema.LENS_POSITIONS, schema.LAYER_STATS, schema.HEADS)

    @classmethod
    def create(cls, ctx: StatContext) -> LogitLens:
        if ctx.model is None:
            raise ValueError("the logit lens needs the model's weights (StatContext.model)")
        return cls(Unembed.of(ctx.model), ctx.model.tokenizer, ctx.n_layers, ctx.n_heads, ctx.seq_len,
                   ctx.config.lens_sample_shift, ctx.config.lens_top_k)

    def __init__(self, unembed: Unembed, tokenizer, n_layers: int, n_heads: int, seq_len: int, shift: int, k: int):
        self.U, self.tokenizer = unembed, tokenizer
        self.n_layers, self.n_heads, self.seq_len, self.shift, self.k = n_layers, n_heads, seq_len, shift, k
        self.depths = 2 * n_layers + 1
        self.chunk = max(1, min(SPAN, CHUNK_BYTES // (4 * self.depths * unembed.W_U.shape[1])))
        self.records: list[dict[str, torch.Tensor]] = []  # per batch: fields stacked over its positions
        self._batch: tuple[weakref.ref, torch.Tensor, dict] | None = None

    def hook_points(self) -> tuple[hooks.HookPoint, ...]:
        L = self.n_layers
        points = [hooks.point(kind, layer) for layer in range(L) for kind in ("resid_pre", "attn_z", "resid_mid")]
        return (*points, hooks.point("resid_post", L - 1))

    def _rows(self, batch: TokenBatch) -> tuple[torch.Tensor, dict]:
        if self._batch is None or self._batch[0]() is not batch:
            self._batch = (weakref.ref(batch), sampled_rows(batch, self.shift), {})
        return self._batch[1], self._batch[2]

    def update(self, x: LayerActs) -> None:
        rows, held = self._rows(x.batch)
        if rows.numel() == 0:
            return
        kind, layer = x.point.kind, x.layer
        if kind == "attn_z":
            acts = x.acts.reshape(-1, *x.acts.shape[2:])  # [rows head d_head]
            held[("z", layer)] = acts.index_select(0, rows)
            return
        depth = 2 * layer + {"resid_pre": 0, "resid_mid": 1, "resid_post": 2}[kind]
        held[depth] = x.acts.reshape(-1, x.acts.shape[-1]).index_select(0, rows)
        if depth == self.depths - 1:
            self._decode(x.batch, rows, held)
            held.clear()

    def _decode(self, batch: TokenBatch, rows: torch.Tensor, held: dict) -> None:
        states = torch.stack([held[d] for d in range(self.depths)], dim=1)  # [n D d_model]
        z = torch.stack([held[("z", layer)] for layer in range(self.n_layers)], dim=1)  # [n layer head d_head]
        tokens = batch.token_ids.reshape(-1)
        pos = rows % batch.seq_len
        has_next = pos < batch.seq_len - 1
        next_ids = torch.where(has_next, tokens[(rows + 1).clamp(max=tokens.numel() - 1)], -1)
        n, c = rows.numel(), self.chunk
        pad = -n % c  # every chunk has the same shape: floating-point kernels then see the same shapes
        if pad:
            states = torch.cat([states, states.new_zeros(pad, *states.shape[1:])])
            z = torch.cat([z, z.new_zeros(pad, *z.shape[1:])])
        ids = torch.cat([next_ids, next_ids.new_full((pad,), -1)])
        parts = [lens_positions(self.U, states[i : i + c], z[i : i + c], ids[i : i + c], self.k)
                 for i in range(0, n + pad, c)]
        record = {f: torch.cat([getattr(p, f) for p in parts])[:n] for f in FIELDS}
        record["position"] = rows + batch.first_seq * batch.seq_len
        record["token_id"] = tokens[rows]
        record["next_id"] = next_ids
        self.records.append(record)

    def merge(self, other: LogitLens) -> None:
        self.records.extend(other.records)

    def _stacked(self) -> dict[str, torch.Tensor]:
        if not self.records:
            return {}
        return {f: torch.cat([r[f].cpu() for r in self.records]) for f in self.records[0]}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._stacked()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.records = [dict(state)] if state else []
        self._batch = None

    def finalize(self) -> dict[str, dict[str, object]]:
        from pipeline.windows import decode_tokens

        self._batch = None
        s = self._stacked()
        if not s:  # no position sampled: empty tables
            s = self._empty()
        order = torch.argsort(s["position"])
        s = {f: v[order] for f, v in s.items()}
        n, D, L = len(s["position"]), self.depths, self.n_layers
        seq_id = (s["position"] // self.seq_len).numpy().astype(np.int32)
        pos = (s["position"] % self.seq_len).numpy().astype(np.int16)
        has_next = (s["next_id"] >= 0).numpy()
        ids = np.unique(np.concatenate([s["top_ids"].reshape(-1).numpy(), s["pca_top"].reshape(-1).numpy()]))
        text = decode_tokens(self.tokenizer, ids.tolist())
        depth = np.tile(np.arange(D, dtype=np.int16), n)
        layer_site = [site_of(d, L) for d in range(D)]
        top_ids = s["top_ids"].reshape(n * D, -1).numpy()
        rank = s["true_rank"].reshape(-1).numpy()
        lens = {
            "seq_id": np.repeat(seq_id, D), "pos": np.repeat(pos, D), "depth": depth,
            "layer": np.array([layer_site[d][0] for d in range(D)], dtype=np.int16)[depth],
            "site": np.array([layer_site[d][1] for d in range(D)], dtype=object)[depth],
            "top_token_ids": top_ids.astype(np.int32),
            "top_tokens": [[text[int(i)] for i in row] for row in top_ids],
            "top_probs": s["top_probs"].reshape(n * D, -1).numpy().astype(np.float32),
            "true_prob": s["true_prob"].reshape(-1).numpy().astype(np.float32),
            "true_rank": pa.array(rank.astype(np.int32), mask=rank < 0, type=pa.int32()),
            "kl_to_final": s["kl"].reshape(-1).numpy().astype(np.float32),
            "entropy_nats": s["entropy"].reshape(-1).numpy().astype(np.float32),
            "top1_agrees": s["agrees"].reshape(-1).numpy().astype(bool),
        }
        final_top = s["top_ids"][:, -1, 0].numpy()
        pca, pca_top = s["pca"].numpy(), s["pca_top"].numpy()
        next_ids = s["next_id"].numpy()
        positions = {
            "seq_id": seq_id, "pos": pos, "token_id": s["token_id"].numpy().astype(np.int32),
            "next_token_id": pa.array(next_ids.astype(np.int32), mask=~has_next, type=pa.int32()),
            "final_top_token_id": final_top.astype(np.int32),
            "final_top_token": [text[int(i)] for i in final_top],
            "pca_share": pca[:, 0].astype(np.float32), "pca_match": pca[:, 1] > 0.5,
            "pca_top_token": [text[int(i)] for i in pca_top[:, 0]],
            "pca_share_normalized": pca[:, 2].astype(np.float32), "pca_match_normalized": pca[:, 3] > 0.5,
            "pca_top_token_normalized": [text[int(i)] for i in pca_top[:, 1]],
        }
        return {"logit_lens": lens, "lens_positions": positions, "layer_stats": self._layer_stats(s, has_next),
                "heads": self._head_columns(s, has_next)}

    def _empty(self) -> dict[str, torch.Tensor]:
        D, L, H, k = self.depths, self.n_layers, self.n_heads, self.k
        f, i = torch.float32, torch.int64
        shapes = {"top_ids": ((0, D, k), i), "top_probs": ((0, D, k), f), "kl": ((0, D), f), "entropy": ((0, D), f),
                  "agrees": ((0, D), torch.bool), "true_prob": ((0, D), f), "true_rank": ((0, D), i),
                  "resid_norm": ((0, D), f), "write_norm": ((0, D), f), "write_dla": ((0, D), f),
                  "head_dla": ((0, L, H), f), "pca": ((0, 4), torch.float64), "pca_top": ((0, 2), i),
                  "position": ((0,), i), "token_id": ((0,), i), "next_id": ((0,), i)}
        return {name: torch.zeros(shape, dtype=dt) for name, (shape, dt) in shapes.items()}

    def _layer_stats(self, s: dict[str, torch.Tensor], has_next: np.ndarray) -> dict[str, object]:
        """Per depth, means over the sampled positions (next-token columns over those with one)."""
        D, L = self.depths, self.n_layers

        def mean(values: torch.Tensor, rows=None) -> np.ndarray:
            v = values.to(torch.float64).numpy()
            v = v if rows is None else v[rows]
            return (v.sum(0) / len(v)).astype(np.float32) if len(v) else np.full(v.shape[1:], np.nan, np.float32)

        nxt = has_next
        writers = [writer_of(d) for d in range(D)]
        sq = (s["write_norm"].to(torch.float64) ** 2).numpy()
        sq_mean = sq.mean(0) if len(sq) else np.full(D, np.nan)
        share = np.full(D, np.nan, dtype=np.float32)
        for layer in range(L):  # attention (depth 2l+1) against the MLP (2l+2) of the same block
            a, m = sq_mean[2 * layer + 1], sq_mean[2 * layer + 2]
            if a + m > 0:
                share[2 * layer + 1], share[2 * layer + 2] = a / (a + m), m / (a + m)
        true_prob = s["true_prob"].to(torch.float64).numpy()[nxt]
        loss = (-np.log(np.maximum(true_prob, 1e-45))).sum(0) / max(len(true_prob), 1)
        layer_site = [site_of(d, L) for d in range(D)]
        return {
            "depth": np.arange(D, dtype=np.int16),
            "layer": np.array([ls[0] for ls in layer_site], dtype=np.int16),
            "site": np.array([ls[1] for ls in layer_site], dtype=object),
            "n_positions": np.full(D, len(has_next), dtype=np.int64),
            "n_next": np.full(D, int(nxt.sum()), dtype=np.int64),
            "kl_to_final_mean": mean(s["kl"]),
            "top1_agreement": mean(s["agrees"].to(torch.float64)),
            "entropy_nats_mean": mean(s["entropy"]),
            "next_token_accuracy": mean((s["true_rank"] == 0).to(torch.float64), nxt),
            "next_token_loss": np.where(nxt.any(), loss, np.nan).astype(np.float32),
            "resid_norm_mean": mean(s["resid_norm"]),
            "writer": np.array([w for w, _ in writers], dtype=object),
            "writer_layer": pa.array([-1 if wl is None else wl for _, wl in writers], type=pa.int16(),
                                     mask=np.array([wl is None for _, wl in writers])),
            "write_norm_mean": mean(s["write_norm"]),
            "write_share": share,
            "write_dla_mean": mean(s["write_dla"], nxt),
        }

    def _head_columns(self, s: dict[str, torch.Tensor], has_next: np.ndarray) -> dict[str, object]:
        L, H = self.n_layers, self.n_heads
        dla = s["head_dla"].to(torch.float64).numpy()[has_next]  # [n layer head]
        values = (dla.sum(0) / len(dla)).astype(np.float32) if len(dla) else np.full((L, H), np.nan, np.float32)
        return {"layer": np.repeat(np.arange(L, dtype=np.int16), H), "head": np.tile(np.arange(H, dtype=np.int16), L),
                "dla_mean": values.reshape(-1)}
