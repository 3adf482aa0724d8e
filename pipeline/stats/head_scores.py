"""Per-head attention-pattern scores of one batch: pure maths on `pattern [batch head q k]`.

What is here: the token masks of a batch (`batch_masks`, built once per batch from the BOS mask
and the token ids, shared by every layer), the per-head sums of every score over the batch's
query rows (`pattern_sums`), the strongest non-BOS key of query rows (`strongest_values`,
`strongest_key`) and the means that turn accumulated sums into table columns (`mean_scores`).
The streaming accumulator that calls them is `heads.py`; the definitions, in words, are its
docstring.

The pattern is causal: entries with k > q are exactly 0 (a softmax over -inf), so only its
lower triangle is read. How the sums are taken. Every score but the entropy is linear in the
pattern: the sum over (b, q, k <= q) of pattern[b, h, q, k] * w[b, q, k], for a weight w that
depends only on the tokens and positions (w = 0 on BOS query rows). So the lower triangle is
packed once per layer ([batch, head, T], T = pos (pos + 1) / 2, one `index_select`) and the
scores that need a [q, k] mask (attention distance, BOS, duplicate, induction) are one batched
matrix product of it with the batch's weights [batch, T, 4]; the entropy is a second product of
p log p of the packed triangle with the valid-row weights; the attention at offsets 0..15 (self
and previous token included) is one `gather` of 16 diagonals. No mask is applied per layer.
Sums are float32 within a batch (matmul accumulation: relative error ~1e-6; a GPU running
float32 matmuls as TF32 would give ~1e-3) and are returned as float64, so that totals over
millions of rows do not drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

N_OFFSETS = 16  # heads.attn_by_offset covers offsets 0 .. 15 (store/schema.py)
_TINY = float(torch.finfo(torch.float32).tiny)

# Columns of the sums that `pattern_sums` returns, [head, N_SUMS]:
DISTANCE, BOS, DUPLICATE, INDUCTION, ENTROPY = range(5)
OFFSET0 = 5  # offsets 0 .. N_OFFSETS - 1 follow: self is offset 0, previous token offset 1
N_SUMS = OFFSET0 + N_OFFSETS
_N_WEIGHTED = 4  # DISTANCE .. INDUCTION come from the weight matrix, in this order


@dataclass(frozen=True)
class BatchMasks:
    """What the scores need of one batch's tokens, for every layer (built by `batch_masks`)."""

    valid: torch.Tensor  # [batch pos] bool: query rows that are scored (non-BOS)
    n_valid: torch.Tensor  # [] int64
    repeat: torch.Tensor  # [batch pos] bool: valid rows whose token occurs earlier (non-BOS) in the window
    n_repeat: torch.Tensor  # [] int64
    tril: torch.Tensor  # [T] int64: flat indices q * pos + k of the lower triangle k <= q, row by row
    weights: torch.Tensor  # [batch T 4] float32: w of DISTANCE, BOS, DUPLICATE, INDUCTION on the triangle
    row_weights: torch.Tensor  # [batch T 1] float32: 1 on the triangle's entries of valid rows
    offset_keys: torch.Tensor  # [pos N_OFFSETS] int64: key q - o, clamped to 0
    offset_weights: torch.Tensor  # [batch pos N_OFFSETS] float32: 1 where q is valid and o <= q
    key_weights: torch.Tensor  # [batch 1 pos pos] float32: 1 at keys a top example may point at (non-BOS, k <= q)


def batch_masks(is_bos: torch.Tensor, token_ids: torch.Tensor) -> BatchMasks:
    """The masks and weights of one batch. is_bos, token_ids: [batch pos]."""
    n_seqs, seq_len = is_bos.shape
    device = is_bos.device
    tokens = token_ids.to(device=device, dtype=torch.int64)
    real = ~is_bos  # non-BOS positions, as queries and as keys
    pos = torch.arange(seq_len, device=device)
    q, k = pos[:, None], pos[None, :]

    # Duplicate: keys k < q, non-BOS, holding the query's token (query non-BOS).
    duplicate = (tokens[:, :, None] == tokens[:, None, :]) & (k < q) & real[:, None, :] & real[:, :, None]
    # Induction: keys k whose previous position k - 1 < q holds the query's token, k and k - 1
    # both non-BOS; k = q is allowed (see heads.py). Shifting the duplicate mask one key to the
    # right gives exactly that: duplicate[q, k - 1] already says k - 1 < q, non-BOS, same token.
    induction = torch.zeros_like(duplicate)
    induction[:, :, 1:] = duplicate[:, :, :-1] & real[:, None, 1:]

    tq, tk = torch.tril_indices(seq_len, seq_len, device=device)
    valid_t = real[:, tq]  # [batch T]
    weights = torch.stack([
        (tq - tk).to(torch.float32) * valid_t,
        (valid_t & is_bos[:, tk]).to(torch.float32),
        duplicate[:, tq, tk].to(torch.float32),
        induction[:, tq, tk].to(torch.float32),
    ], dim=-1)

    offsets = torch.arange(N_OFFSETS, device=device)
    causal = k <= q
    repeat = duplicate.any(-1)
    return BatchMasks(
        valid=real, n_valid=real.sum(), repeat=repeat, n_repeat=repeat.sum(),
        tril=tq * seq_len + tk, weights=weights, row_weights=valid_t.to(torch.float32).unsqueeze(-1),
        offset_keys=(q - offsets[None, :]).clamp(min=0),
        offset_weights=(real[:, :, None] & (offsets <= q)[None]).to(torch.float32),
        key_weights=(real[:, None, :] & causal).to(torch.float32).unsqueeze(1),
    )


def pattern_sums(pattern: torch.Tensor, masks: BatchMasks) -> torch.Tensor:
    """[head, N_SUMS] float64: per head, the sums over the batch's valid query rows of each
    score's per-row value (columns DISTANCE .. OFFSET0 + 15). pattern: [batch head q k] float32."""
    n_seqs, n_heads, seq_len, _ = pattern.shape
    out = torch.empty((n_heads, N_SUMS), dtype=torch.float64, device=pattern.device)
    lower = pattern.reshape(n_seqs, n_heads, seq_len * seq_len).index_select(2, masks.tril)  # [batch head T]
    out[:, :_N_WEIGHTED] = torch.bmm(lower, masks.weights).sum(0)
    # -p log p, 0 where p = 0: log of p clamped to the smallest float32 (0 x log = 0 there); 10x
    # faster than torch.special.entr, which is not vectorised on the CPU
    plogp = lower.clamp(min=_TINY).log_().mul_(lower)  # in place: one temporary, not three
    out[:, ENTROPY] = -torch.bmm(plogp, masks.row_weights).sum((0, 2))
    at_offset = pattern.gather(3, masks.offset_keys.expand(n_seqs, n_heads, -1, -1))  # [batch head q offset]
    out[:, OFFSET0:] = torch.einsum("bhqo,bqo->ho", at_offset, masks.offset_weights)
    return out


def strongest_values(pattern: torch.Tensor, masks: BatchMasks) -> torch.Tensor:
    """[batch head q]: each query row's largest attention to a non-BOS key k <= q (any value on
    BOS rows). The pattern is >= 0, so zeroing the other keys leaves the maximum unchanged: a
    non-BOS row always has the allowed key q."""
    # window by window: each product stays in cache for its max, instead of a [batch head q k] temporary
    return torch.stack([(pattern[i] * masks.key_weights[i]).amax(-1) for i in range(pattern.shape[0])])


def strongest_key(rows: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The key of `strongest_values` for chosen rows: rows [..., k] (pattern rows), allowed
    [..., k] bool. The earliest allowed key among equal values (argmax returns the first)."""
    return rows.masked_fill(~allowed, -1.0).argmax(-1)


def mean_scores(sums: torch.Tensor, count: torch.Tensor, repeat_count: torch.Tensor) -> dict[str, torch.Tensor]:
    """Table columns from accumulated sums: sums [..., N_SUMS] float64, count and repeat_count
    broadcastable to sums[..., 0]. NaN where a denominator is 0 (a nullable column's null)."""
    count = count.to(torch.float64).unsqueeze(-1)
    repeat_count = repeat_count.to(torch.float64).unsqueeze(-1)
    nan = float("nan")
    per_row = (sums / count).masked_fill(count == 0, nan)
    per_repeat = (sums / repeat_count).masked_fill(repeat_count == 0, nan)
    return {
        "prev_token_score": per_row[..., OFFSET0 + 1],
        "self_score": per_row[..., OFFSET0],
        "bos_score": per_row[..., BOS],
        "duplicate_score": per_repeat[..., DUPLICATE],
        "induction_score": per_repeat[..., INDUCTION],
        "entropy_nats": per_row[..., ENTROPY],
        "attn_distance_tokens": per_row[..., DISTANCE],
        "attn_by_offset": per_row[..., OFFSET0:],
    }


def batch_scores(pattern: torch.Tensor, is_bos: torch.Tensor, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every score of one batch on its own, [head] (attn_by_offset [head, N_OFFSETS]), float64."""
    masks = batch_masks(is_bos, token_ids)
    return mean_scores(pattern_sums(pattern, masks), masks.n_valid, masks.n_repeat)
