"""Weight-based connections of each MLP neuron: the `neuron_circuits` table.

All on the folded copies of `pipeline/attn_weights.py` (norm weights folded into the readers,
writers centred for LayerNorm models; the norms' per-position 1/scale is left out, so weights
compare freely among the candidates of one neuron, less so across layers whose residuals
differ in scale). Per neuron (layer b, index n), with w_in = W_in'[:, n] (ln2 folded; for gated
MLPs the UP projection, the linear path that sets the activation's sign and scale, as
`pipeline/weights.py` explains) and w_out = W_out'[n]:

- input_token: the n tokens t with the largest e_hat_t . w_in + b_in' — the pre-activation (the
  up projection's value for gated MLPs) if the residual held only token t's embedding, normalised
  as ln2 would normalise it (b_in' = b_in + ln2 bias . W_in; zero without biases). Stored signed.
- upstream_neuron / downstream_neuron: the virtual weight w_out(m) . w_in(n) from neuron m of an
  earlier layer (upstream) or to neuron m of a later layer (downstream): how much one unit of m's
  activation moves n's pre-activation through the residual stream directly. Ranked by |weight|,
  stored signed.
- upstream_head: heads of layers <= b (a layer's attention runs before its MLP), strength
  ||W_V W_O w_in||_2: the gain from the head's (normalised) input residual to the neuron's
  pre-activation, through the head's whole OV circuit — which, unlike ||W_O w_in||, does not
  depend on the arbitrary basis of the head's d_head space. Non-negative.
- downstream_head: heads of layers > b, strength ||w_out [W_Q W_K^T | W_K W_Q^T | W_V W_O]||_2:
  the neuron's output read by the head's three inputs, through the same matrices W_X as the
  query, key and value composition scores of `composition.py` (root of the sum of the three
  squared norms). Non-negative.
The two head relations are the unnormalised numerators of composition scores with the neuron as
a rank-one source or destination, and are computed with the same factors (`CompositionFactors`:
||M W_X||_F = ||M T||_F, ||W_V W_O M||_F = ||S M||_F), so in d_head-sized products.

Cost (exact, no sampling): input_token is vocab x d_model x all neurons multiply-adds (smollm2:
2.6 TFLOP), the neuron pairs (all neurons)^2 / 2 x d_model; everything is chunked (vocabulary
chunks, dst-layer groups) and reduced with `torch.topk` per chunk, merged into running tops, so
memory stays ~ a few hundred MB whatever the model.

What is elsewhere: folding in `pipeline/attn_weights.py`; the head factors in `composition.py`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from pipeline.analysis.composition import KINDS, CompositionFactors, composition_factors
from pipeline.attn_weights import FoldedMLP, embedding_chunks, folded_attention, folded_mlp, norms

RELATIONS = ("downstream_head", "downstream_neuron", "input_token", "upstream_head", "upstream_neuron")  # sorted
BLOCK_BYTES = 64 << 20  # cap on one intermediate product


class Top:
    """Running top-n of rows of candidates by a key (|value| or value), keeping the signed values
    and global candidate indices; NaN / -1 fill the places of rows with fewer than n candidates."""

    def __init__(self, rows: int, n: int, by_abs: bool, device):
        self.n, self.by_abs = n, by_abs
        self.values = torch.full((rows, n), float("nan"), dtype=torch.float32, device=device)
        self.index = torch.full((rows, n), -1, dtype=torch.int64, device=device)

    def _pick(self, values: Tensor, k: int) -> Tensor:
        """Indices of the k best of small `values [rows, m]` (NaN, an empty place, ranks last)."""
        key = values.abs() if self.by_abs else values
        return key.nan_to_num(nan=float("-inf")).topk(k, dim=1).indices

    def _pick_fresh(self, values: Tensor, k: int) -> Tensor:
        """Indices of the k best of a large block of candidates, without a copy of it."""
        top = values.topk(k, dim=1).indices
        if not self.by_abs:
            return top
        # the k largest |values| are among the k largest and the k smallest values
        both = torch.cat([top, values.topk(k, dim=1, largest=False).indices], dim=1)
        return both.gather(1, values.gather(1, both).abs().topk(k, dim=1).indices)

    def add(self, values: Tensor, offset: int, rows: slice = slice(None)) -> None:
        """Candidates `values [rows, m]` numbered offset .. offset + m - 1 for the rows `rows`."""
        k = min(self.n, values.shape[1])
        if k == 0:
            return
        pick = self._pick_fresh(values, k)
        vals = torch.cat([self.values[rows], values.gather(1, pick).to(torch.float32)], dim=1)
        idx = torch.cat([self.index[rows], pick + offset], dim=1)
        keep = self._pick(vals, self.n)
        self.values[rows] = vals.gather(1, keep)
        self.index[rows] = idx.gather(1, keep)

    def result(self) -> tuple[Tensor, Tensor]:
        """([rows, n] values, [rows, n] indices), NaN / -1 past the candidates a row had."""
        return self.values, self.index


# --- the relations -------------------------------------------------------------------------


@torch.no_grad()
def input_tokens(mlp: FoldedMLP, embeddings, n: int) -> tuple[Tensor, Tensor]:
    """([layer*d_mlp, n] pre-activations, token ids) of each neuron's top input tokens, from
    `embeddings`, an iterable of (first token id, E_hat rows [chunk d_model])."""
    L, d_model, d_mlp = mlp.W_in.shape
    readers = mlp.W_in.transpose(1, 2).reshape(L * d_mlp, d_model)  # [neurons d_model], a copy
    b_all = mlp.b_in.reshape(L * d_mlp, 1)
    top = Top(L * d_mlp, n, by_abs=False, device=readers.device)
    rows = max(1, BLOCK_BYTES // (4 * L * d_mlp))
    for lo, E in embeddings:
        for s in range(0, E.shape[0], rows):
            # [neurons, tokens]: the tokens, the candidates, run along the contiguous axis
            pre = torch.addmm(b_all, readers, E[s : s + rows].to(readers.device).T)
            top.add(pre, offset=lo + s)
            del pre  # before the next block's product is allocated
    return top.result()


@torch.no_grad()
def neuron_to_neuron(mlp: FoldedMLP, n: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(upstream, downstream): each ([layer*d_mlp, n] signed virtual weights, global neuron indices
    layer*d_mlp + neuron), ranked by |weight|."""
    L, d_model, d_mlp = mlp.W_in.shape
    W_in_all = mlp.W_in.permute(1, 0, 2).reshape(d_model, L * d_mlp)
    up = Top(L * d_mlp, n, by_abs=True, device=W_in_all.device)
    down = Top(L * d_mlp, n, by_abs=True, device=W_in_all.device)
    group = max(1, BLOCK_BYTES // (4 * d_mlp * d_mlp))  # dst layers per product
    for a in range(L - 1):
        src = slice(a * d_mlp, (a + 1) * d_mlp)
        for b0 in range(a + 1, L, group):
            b1 = min(L, b0 + group)
            V = mlp.W_out[a] @ W_in_all[:, b0 * d_mlp : b1 * d_mlp]  # [d_mlp (src), (b1-b0)*d_mlp (dst)]
            down.add(V, offset=b0 * d_mlp, rows=src)
            for b in range(b0, b1):
                cols = V[:, (b - b0) * d_mlp : (b - b0 + 1) * d_mlp]
                up.add(cols.T, offset=a * d_mlp, rows=slice(b * d_mlp, (b + 1) * d_mlp))
            del V, cols  # before the next block's product is allocated
    return up.result(), down.result()


@torch.no_grad()
def head_to_neuron(factors: CompositionFactors, mlp: FoldedMLP, n: int) -> tuple[Tensor, Tensor]:
    """upstream_head: ([layer*d_mlp, n] strengths ||W_V W_O w_in||, global head indices layer*H + head)
    over the heads of layers <= the neuron's."""
    L, H, d_head, d_model = factors.source.shape
    d_mlp = mlp.d_mlp
    top = Top(mlp.n_layers * d_mlp, n, by_abs=False, device=mlp.W_in.device)
    S_all = factors.source.reshape(L * H * d_head, d_model)
    heads_per_block = max(1, BLOCK_BYTES // (4 * d_head * d_mlp))
    for b in range(mlp.n_layers):
        rows = slice(b * d_mlp, (b + 1) * d_mlp)
        for h0 in range(0, (b + 1) * H, heads_per_block):
            h1 = min((b + 1) * H, h0 + heads_per_block)
            gain = (S_all[h0 * d_head : h1 * d_head] @ mlp.W_in[b]).view(h1 - h0, d_head, d_mlp)
            top.add(gain.norm(dim=1).T, offset=h0, rows=rows)  # [d_mlp, heads]
            del gain
    return top.result()


@torch.no_grad()
def neuron_to_head(factors: CompositionFactors, mlp: FoldedMLP, n: int) -> tuple[Tensor, Tensor]:
    """downstream_head: ([layer*d_mlp, n] strengths ||w_out [W_QK | W_KQ | W_OV]||, global head
    indices) over the heads of later layers."""
    L, H, _, d_head = factors.reading["q"].shape
    d_model, d_mlp = mlp.W_in.shape[1], mlp.d_mlp
    # every head's three reading factors side by side: [d_model, layer*head*3*d_head]
    T_all = torch.cat([factors.reading[k] for k in KINDS], dim=-1).permute(2, 0, 1, 3).reshape(d_model, -1)
    width = 3 * d_head
    top = Top(mlp.n_layers * d_mlp, n, by_abs=False, device=mlp.W_in.device)
    heads_per_block = max(1, BLOCK_BYTES // (4 * width * d_mlp))
    for a in range(mlp.n_layers - 1):
        rows = slice(a * d_mlp, (a + 1) * d_mlp)
        for h0 in range((a + 1) * H, L * H, heads_per_block):
            h1 = min(L * H, h0 + heads_per_block)
            read = (mlp.W_out[a] @ T_all[:, h0 * width : h1 * width]).view(d_mlp, h1 - h0, width)
            top.add(read.norm(dim=2), offset=h0, rows=rows)
            del read
    return top.result()


# --- the table -----------------------------------------------------------------------------


@torch.no_grad()
def neuron_circuit_tables(model, n: int = 10) -> dict:
    """{"neuron_circuits": columns}: per neuron up to n rows per relation (fewer where fewer
    candidates exist: no upstream neurons in layer 0, no downstream ones in the last layer), in
    the table's sort order (layer, neuron, relation, rank)."""
    from pipeline.windows import decode_tokens

    nm = norms(model)
    mlp = folded_mlp(model, nm)
    factors = composition_factors(folded_attention(model, nm))
    tokens = input_tokens(mlp, embedding_chunks(model, nm), n)
    up_n, down_n = neuron_to_neuron(mlp, n)
    parts = {"input_token": tokens, "upstream_neuron": up_n, "downstream_neuron": down_n,
             "upstream_head": head_to_neuron(factors, mlp, n), "downstream_head": neuron_to_head(factors, mlp, n)}
    group = {"upstream_neuron": mlp.d_mlp, "downstream_neuron": mlp.d_mlp,
             "upstream_head": factors.source.shape[1], "downstream_head": factors.source.shape[1]}
    columns = rows_of(parts, group, mlp.d_mlp, n)
    is_token = columns["relation"] == "input_token"
    ids = columns["other_index"][is_token]
    text = decode_tokens(model.tokenizer, np.unique(ids).tolist())
    other_token = np.full(len(is_token), None, dtype=object)
    other_token[is_token] = [text[int(i)] for i in ids]
    columns["other_token"] = other_token
    return {"neuron_circuits": columns}


def rows_of(parts: dict[str, tuple[Tensor, Tensor]], group: dict[str, int], d_mlp: int, n: int) -> dict[str, object]:
    """Table rows from each relation's ([neurons, n] weights, [neurons, n] global indices): a global
    index i is (layer, index) = divmod(i, group[relation]); relations without a group are tokens."""
    weights = np.stack([parts[r][0].cpu().numpy() for r in RELATIONS], axis=1)  # [neurons rel n]
    index = np.stack([parts[r][1].cpu().numpy() for r in RELATIONS], axis=1)
    sizes = np.array([group.get(r, 0) for r in RELATIONS])[None, :, None]
    other_layer = np.where(sizes > 0, index // np.maximum(sizes, 1), -1)
    other_index = np.where(sizes > 0, index % np.maximum(sizes, 1), index)
    neurons = weights.shape[0]
    keep = (index >= 0).ravel()
    shape = (neurons, len(RELATIONS), n)
    layer, neuron = np.divmod(np.broadcast_to(np.arange(neurons)[:, None, None], shape).ravel()[keep], d_mlp)
    relation = np.broadcast_to(np.arange(len(RELATIONS))[None, :, None], shape).ravel()[keep]
    other_layer = other_layer.ravel()[keep]
    return {
        "layer": layer.astype(np.int16),
        "neuron": neuron.astype(np.int32),
        "relation": np.array(RELATIONS, dtype=object)[relation],
        "rank": np.broadcast_to(np.arange(n)[None, None, :], shape).ravel()[keep].astype(np.int16),
        "other_layer": pa.array(other_layer.astype(np.int16), mask=other_layer < 0, type=pa.int16()),
        "other_index": other_index.ravel()[keep].astype(np.int32),
        "weight": weights.ravel()[keep].astype(np.float32),
    }
