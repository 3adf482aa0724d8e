"""Weight-only analyses of each attention head's OV and QK circuits: the `heads` table's ov_* and
qk_pos_by_offset columns (`head_weight_columns`).

The token-space OV circuit of a head is `M = E_hat W_V W_O W_U'` `[d_vocab d_vocab]`: row t is what
the head adds to the logits (through the final norm's scale and the unembedding) per unit of
attention on a position holding token t. `E_hat` are the token embeddings normalised as the
head's ln1 would normalise a residual holding only that embedding (ln1's weight is folded into
W_V; see `pipeline/attn_weights.py`), W_U' has the final norm's scale folded in (LayerNorm:
centred) and is centred over the vocabulary, so that M's rows are logit changes relative to the
mean logit (a uniform shift changes no probability). Biases are left out: they add the same
vector whatever the attended token. M is never built (49152^2 floats on smollm2): with
A = E_hat W_V `[vocab d_head]` and B = W_O W_U' `[d_head vocab]`, M = A B, and
- its nonzero eigenvalues are those of B A = W_O (W_U' E_hat) W_V `[d_head d_head]`: if
  A B x = lam x with lam != 0 then B A (B x) = lam (B x) and B x != 0 (else lam x = A B x = 0);
  the converse likewise, and Sylvester's identity det(t I - A B) = t^(vocab - d_head) det(t I - B A)
  gives equal multiplicities. G = W_U' E_hat `[d_model d_model]` is one pass over the vocabulary,
  shared by every head.
- its diagonal M[t, t] = A[t] . B[:, t] is a row-wise dot product, taken a chunk of the vocabulary
  at a time (chunk x d_head per head).
The copying score is sum(eig) / sum(|eig|) over B A's eigenvalues (Elhage et al. 2021): the real
part of the sum (the sum of a real matrix's eigenvalues is real, its trace) over the sum of the
complex moduli; +1 when every eigenvalue is positive real (the head copies what it attends to),
-1 when every one is negative real (it suppresses it).

QK by position (`qk_positional_attention`), for models with learned position embeddings only.
Approximations, explicitly: the residual is taken to be a token embedding plus the position
embedding, as at layer 0 (every layer's ln1 is applied to it, later layers' residuals are not
modelled); its normalisation scale is the average over the vocabulary of
mean((P(e_t + p_i))^2) (P: centring for LayerNorm), so the positional part keeps the share of a
real residual it has at layer 0; the query and the key then keep only the positional part
P p_i / scale_i and the biases (ln1's bias and b_Q / b_K), leaving the token part out: scores
q_i . k_j / sqrt(d_head), softmax over the keys j <= i. The attention at offset o is averaged
over query positions 1 .. n_positions - 1 (position 0 is left out as the corpus statistics leave
out BOS query rows; a row with no key at offset o counts 0, as in `attn_by_offset`).
Rotary models get None: their weights fix no positional preference without the tokens.

What is elsewhere: the folded weights in `pipeline/attn_weights.py`; composition between heads
in `composition.py`; the corpus-side head statistics in `pipeline/stats/`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from pipeline.attn_weights import (
    FoldedAttention,
    Norms,
    embedding_chunks,
    folded_attention,
    folded_unembed,
    norms,
    position_embeddings,
)

N_OFFSETS = 16  # heads.qk_pos_by_offset covers offsets 0 .. 15 (store/schema.py)
N_POSITIONS = 128  # query positions the positional QK scores are averaged over (the default seq_len)


# --- eigenvalues ---------------------------------------------------------------------------


def low_rank_eigenvalues(A: Tensor, B: Tensor) -> Tensor:
    """The eigenvalues of B @ A `[... k k]` (complex128): for A `[... n k]`, B `[... k n]` with k <= n
    they are the nonzero eigenvalues of A @ B `[... n n]` plus n - k zeros (module docstring)."""
    return torch.linalg.eigvals(B.to(torch.float64) @ A.to(torch.float64))


def copying_scores(eigenvalues: Tensor) -> Tensor:
    """sum(eig) / sum(|eig|) over the last axis: real part of the sum over the sum of moduli
    (0 where every eigenvalue is 0)."""
    num = eigenvalues.real.sum(-1)
    den = eigenvalues.abs().sum(-1)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def ov_eigenvalues(attn: FoldedAttention, G: Tensor) -> Tensor:
    """[layer head d_head] complex128: eigenvalues of W_O G W_V for every head, G = W_U' E_hat
    (float64, a layer at a time)."""
    G = G.to(torch.float64)
    kv = attn.kv_of_head
    return torch.stack([torch.linalg.eigvals(attn.W_O[layer].to(torch.float64) @ G
                                             @ attn.W_V[layer, kv].to(torch.float64))
                        for layer in range(attn.n_layers)])


# --- one pass over the vocabulary ----------------------------------------------------------


@torch.no_grad()
def ov_vocab_pass(attn: FoldedAttention, embeddings, W_U: Tensor) -> tuple[Tensor, Tensor]:
    """(G = W_U' E_hat `[d_model d_model]` float64, diag `[vocab layer head]` float32) from
    `embeddings`, an iterable of (first token id, E_hat rows `[chunk d_model]`), and the folded
    unembedding W_U `[d_model vocab]`. diag[t, l, h] = M_lh[t, t], the head's token-space OV
    circuit's diagonal: what attending to token t adds to token t's own logit."""
    L, H, d_head = attn.n_layers, attn.n_heads, attn.d_head
    d_model, d_vocab = W_U.shape
    # readers and writers of every head side by side: one matmul per chunk for all heads
    V_all = attn.W_V.permute(2, 0, 1, 3).reshape(d_model, -1)  # [d_model, layer*kv_head*d_head]
    O_all = attn.W_O.permute(3, 0, 1, 2).reshape(d_model, -1)  # [d_model, layer*head*d_head]
    kv = attn.kv_of_head
    G = torch.zeros(d_model, d_model, dtype=torch.float64, device=W_U.device)
    diag = torch.empty(d_vocab, L, H, dtype=torch.float32, device=W_U.device)
    for lo, E in embeddings:
        E = E.to(W_U.device)
        hi = lo + E.shape[0]
        U = W_U[:, lo:hi].to(torch.float32)  # [d_model chunk]
        G += (U @ E).to(torch.float64)  # float32 product per chunk, float64 sum over chunks
        A = (E @ V_all).view(-1, L, attn.n_kv_heads, d_head)[:, :, kv]  # [chunk layer head d_head]
        B = (U.T @ O_all).view(-1, L, H, d_head)  # [chunk layer head d_head]
        diag[lo:hi] = (A * B).sum(-1)
    return G, diag


# --- QK by position ------------------------------------------------------------------------


@torch.no_grad()
def positional_residuals(W_pos: Tensor, W_E: Tensor, nm: Norms, n_positions: int, chunk: int = 4096) -> Tensor:
    """[n_positions d_model]: P p_i / scale_i, the positional part of a layer-0 residual after the
    norm (before its weight), scale_i^2 = mean over tokens t of mean((P(e_t + p_i))^2) + eps."""
    p = W_pos[:n_positions].to(torch.float32)
    if nm.centre:
        p = p - p.mean(-1, keepdim=True)
    d_model = p.shape[-1]
    # mean_t mean((P e_t + P p)^2) = mean_t msq(P e_t) + 2 <mean_t P e_t, P p> / d + msq(P p)
    msq_e = torch.zeros((), dtype=torch.float64, device=p.device)
    sum_e = torch.zeros(d_model, dtype=torch.float64, device=p.device)
    for lo in range(0, W_E.shape[0], chunk):
        e = W_E[lo : lo + chunk].to(torch.float32)
        if nm.centre:
            e = e - e.mean(-1, keepdim=True)
        msq_e += e.pow(2).mean(-1).sum().to(torch.float64)
        sum_e += e.sum(0).to(torch.float64)
    n = W_E.shape[0]
    mean_e = (sum_e / n).to(torch.float32)
    var = (msq_e / n).to(torch.float32) + 2 * (p @ mean_e) / d_model + p.pow(2).mean(-1)
    return p * torch.rsqrt(var + nm.eps)[:, None]


@torch.no_grad()
def qk_positional_attention(attn: FoldedAttention, pos_resid: Tensor, n_offsets: int = N_OFFSETS) -> Tensor:
    """[layer head n_offsets] float32: the attention at offsets 0 .. n_offsets - 1 that the positional
    QK scores alone give (module docstring), from `pos_resid` `[n_positions d_model]`."""
    n_pos = pos_resid.shape[0]
    q = pos_resid @ attn.W_Q + attn.b_Q[:, :, None]  # [layer head pos d_head]
    k = (pos_resid @ attn.W_K + attn.b_K[:, :, None])[:, attn.kv_of_head]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(attn.d_head)  # [layer head q k]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    out = torch.zeros(*pattern.shape[:2], n_offsets, dtype=torch.float32, device=pattern.device)
    for o in range(min(n_offsets, n_pos)):
        at = torch.diagonal(pattern, offset=-o, dim1=-2, dim2=-1)  # [layer head pos - o]: queries o ..
        out[..., o] = at[..., 1 if o == 0 else 0 :].sum(-1) / max(n_pos - 1, 1)  # query 0 left out
    return out


# --- the heads table -----------------------------------------------------------------------


@torch.no_grad()
def head_weight_columns(model, n_tokens: int = 10, n_positions: int = N_POSITIONS) -> dict[str, object]:
    """The weight-only columns of the `heads` table (and its keys `layer`, `head`), in (layer,
    head) order: ov_copying_score, ov_copy_token_ids / ov_copy_tokens, ov_suppress_token_ids /
    ov_suppress_tokens ([rows, n_tokens] arrays and lists of lists), qk_pos_by_offset
    ([rows, 16] float32, or a list of None for models without learned positions)."""
    from pipeline.windows import decode_tokens

    nm = norms(model)
    attn = folded_attention(model, nm)
    L, H = attn.n_layers, attn.n_heads
    W_U = folded_unembed(model, nm)
    G, diag = ov_vocab_pass(attn, embedding_chunks(model, nm, chunk=512), W_U)
    del W_U
    scores = copying_scores(ov_eigenvalues(attn, G)).reshape(-1)
    diag = diag.reshape(diag.shape[0], L * H)
    k = min(n_tokens, diag.shape[0])
    top = diag.topk(k, dim=0).indices.T.cpu().numpy()  # [rows, k] highest diagonal first
    bottom = diag.topk(k, dim=0, largest=False).indices.T.cpu().numpy()  # lowest first
    del diag
    text = decode_tokens(model.tokenizer, np.unique(np.concatenate([top, bottom]).ravel()).tolist())
    W_pos = position_embeddings(model)
    if W_pos is None:
        qk_pos: object = [None] * (L * H)
    else:
        n_pos = min(n_positions, W_pos.shape[0])
        pos_resid = positional_residuals(W_pos, model.bridge.W_E, nm, n_pos)
        qk_pos = qk_positional_attention(attn, pos_resid).reshape(L * H, -1).cpu().numpy()
    layers, heads = np.divmod(np.arange(L * H), H)
    return {
        "layer": layers.astype(np.int16),
        "head": heads.astype(np.int16),
        "ov_copying_score": scores.cpu().numpy().astype(np.float32),
        "ov_copy_token_ids": top.astype(np.int32),
        "ov_copy_tokens": [[text[int(i)] for i in row] for row in top],
        "ov_suppress_token_ids": bottom.astype(np.int32),
        "ov_suppress_tokens": [[text[int(i)] for i in row] for row in bottom],
        "qk_pos_by_offset": qk_pos,
    }
