"""Composition scores between attention heads (Elhage et al. 2021): the `head_composition` table.

For a source head (layer a) and a destination head (layer b > a), with W_OV = W_V W_O of the
source and W_X of the destination's input of one kind:
    q: W_X = W_Q W_K^T  (the source writes into the destination's query side)
    k: W_X = W_K W_Q^T  (its key side; the transpose of the q matrix)
    v: W_X = W_V W_O    (its value side)
    score = ||W_OV W_X||_F / (||W_OV||_F ||W_X||_F)   in [0, 1]
on the folded weights of `pipeline/attn_weights.py` (ln1 in the readers, W_O centred for
LayerNorm). This is TransformerLens's definition (`transformer_lens.utilities.composition_scores`)
with its `mode` Q/K/V. Rotary position embeddings are left out of W_Q W_K^T, as TransformerLens
does: they rotate queries and keys by position, which the weights alone do not fix.

How, without d_model x d_model products for every pair (TransformerLens's `all_composition_scores`
materialises [L,H,L,H,d_head,d_model]: 9.4 GB on GPT-2 small). For X = A1 B1 A2 B2 with thin A's
`[d_model d_head]` and wide B's `[d_head d_model]`, ||X||_F^2 = tr(X X^T) is a trace of d_head x
d_head products. Taking the triangular factors of thin QR decompositions, A1 = Q1 R1 and
B2^T = Q2 R2 (Q's with orthonormal columns), ||A1 M B2||_F = ||R1 M R2^T||_F for any M, so
    ||W_OV W_X||_F = ||(R_V W_O) (A2 R2^T)||_F,   ||W_OV||_F = ||R_V W_O||_F,   ||W_X||_F = ||A2 R2^T||_F
with the source factor S = R_V W_O `[d_head d_model]` per head and the reading factor
T = A2 R2^T `[d_model d_head]` per head and kind:
    q: T = W_Q R_K^T   (R_K from W_K = Q R_K)
    k: T = W_K R_Q^T   (R_Q from W_Q)
    v: T = W_V R_O^T   (R_O from W_O^T)
Every pair's numerator is then the sum of squares of one d_head x d_head block of S_a T_b, and a
source layer's heads against every later head is one matmul [H*d_head, d_model] x
[d_model, later heads * d_head] (smollm2: ~40 MB). QR runs in float64, the products in float32.

The baseline (`composition_baseline`): the mean score of independent random Gaussian matrices
of the model's shapes (W_Q, W_K, W_V `[d_model d_head]`, W_O `[d_head d_model]`, entries N(0, 1)),
per kind, estimated from `n_samples` heads per side with a fixed seed (every source-destination
pair of them: n_samples^2 correlated but unbiased samples). Scores near it mean no composition.
For such matrices E||A B||_F^2 ~ ||A||_F^2 ||B||_F^2 / d_model, so the baseline comes out close to
1 / sqrt(d_model): 0.0417 for smollm2 (d_model 576), 0.125 for tiny-gpt2 (64), whatever the kind.

What is elsewhere: the folded weights in `pipeline/attn_weights.py`; head-to-neuron strengths,
which reuse these factors, in `circuits.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.attn_weights import FoldedAttention, folded_attention

KINDS = ("k", "q", "v")  # in the table's sort order
BASELINE_SAMPLES = 48
BASELINE_SEED = 0


@dataclass
class CompositionFactors:
    """Per-head factors whose products give composition numerators (module docstring)."""

    source: Tensor  # [layer head d_head d_model]: S = R_V W_O, ||S M||_F = ||W_V W_O M||_F for any M
    reading: dict[str, Tensor]  # kind -> [layer head d_model d_head]: T, ||M T||_F = ||M W_X||_F

    def source_norms(self) -> Tensor:
        """[layer head]: ||W_V W_O||_F."""
        return self.source.pow(2).sum((-2, -1)).sqrt()

    def reading_norms(self, kind: str) -> Tensor:
        """[layer head]: ||W_X||_F of that kind."""
        return self.reading[kind].pow(2).sum((-2, -1)).sqrt()


def r_factor(X: Tensor) -> Tensor:
    """[... k k] the R of a thin QR decomposition of X `[... n k]` (float64): X^T X = R^T R."""
    return torch.linalg.qr(X.to(torch.float64), mode="r").R


@torch.no_grad()
def composition_factors(attn: FoldedAttention) -> CompositionFactors:
    """Source and reading factors of every head, float32 (computed in float64 a layer at a time)."""
    source = torch.empty_like(attn.W_O)
    reading = {kind: torch.empty_like(attn.W_Q) for kind in KINDS}
    kv = attn.kv_of_head
    for layer in range(attn.n_layers):
        W_Q = attn.W_Q[layer].to(torch.float64)  # [head d_model d_head]
        W_K = attn.W_K[layer, kv].to(torch.float64)  # repeated for the query heads that share it
        W_V = attn.W_V[layer, kv].to(torch.float64)
        W_O = attn.W_O[layer].to(torch.float64)  # [head d_head d_model]
        R_Q, R_K, R_V, R_O = r_factor(W_Q), r_factor(W_K), r_factor(W_V), r_factor(W_O.transpose(-1, -2))
        source[layer] = R_V @ W_O
        reading["q"][layer] = W_Q @ R_K.transpose(-1, -2)
        reading["k"][layer] = W_K @ R_Q.transpose(-1, -2)
        reading["v"][layer] = W_V @ R_O.transpose(-1, -2)
    return CompositionFactors(source=source, reading=reading)


@torch.no_grad()
def composition_scores(factors: CompositionFactors) -> dict[str, Tensor]:
    """kind -> [src_layer src_head dst_layer dst_head] float32 scores; NaN unless src_layer < dst_layer
    (0 where a matrix is zero)."""
    L, H, d_head, d_model = factors.source.shape
    src_norm = factors.source_norms()
    out = {}
    for kind in KINDS:
        T = factors.reading[kind].permute(2, 0, 1, 3).reshape(d_model, L * H * d_head)  # every head's T
        den_dst = factors.reading_norms(kind)
        scores = torch.full((L, H, L, H), float("nan"), dtype=torch.float32, device=T.device)
        for a in range(L - 1):
            S = factors.source[a].reshape(H * d_head, d_model)
            prod = S @ T[:, (a + 1) * H * d_head :]  # [H*d_head, later heads*d_head]
            num = prod.view(H, d_head, L - a - 1, H, d_head).pow(2).sum((1, 4)).sqrt()  # [H, later L, H]
            den = src_norm[a][:, None, None] * den_dst[a + 1 :][None]
            scores[a, :, a + 1 :] = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
        out[kind] = scores
    return out


@torch.no_grad()
def random_baseline(d_model: int, d_head: int, n_samples: int = BASELINE_SAMPLES,
                    seed: int = BASELINE_SEED) -> dict[str, float]:
    """kind -> mean composition score of random Gaussian heads of these shapes (module docstring)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(2, n_samples, *shape, generator=gen)  # layer 0: sources, layer 1: destinations

    attn = FoldedAttention(W_Q=randn(d_model, d_head), W_K=randn(d_model, d_head), W_V=randn(d_model, d_head),
                           W_O=randn(d_head, d_model), b_Q=torch.zeros(2, n_samples, d_head),
                           b_K=torch.zeros(2, n_samples, d_head))
    scores = composition_scores(composition_factors(attn))
    return {kind: float(scores[kind][0, :, 1].mean()) for kind in KINDS}


def composition_baseline(model, n_samples: int = BASELINE_SAMPLES, seed: int = BASELINE_SEED) -> dict:
    """The baseline per kind for the model's shapes, as the manifest records it:
    {"q": .., "k": .., "v": .., "n_samples": .., "seed": ..}."""
    d_head = model.bridge.blocks[0].attn.W_Q.shape[-1]
    return {**random_baseline(model.d_model, d_head, n_samples, seed), "n_samples": n_samples, "seed": seed}


def composition_tables(model) -> dict:
    """{"head_composition": columns, "manifest": {"baseline": composition_baseline(model)}}: one row
    per (src_layer, src_head, dst_layer, dst_head, kind) with src_layer < dst_layer, in that order."""
    attn = folded_attention(model)
    scores = composition_scores(composition_factors(attn))
    baseline = composition_baseline(model)
    return {"head_composition": table_columns(scores, baseline), "manifest": {"baseline": baseline}}


def table_columns(scores: dict[str, Tensor], baseline: dict[str, float]) -> dict[str, np.ndarray]:
    """Rows of `head_composition` from `composition_scores`'s output, in sort-key order."""
    stacked = torch.stack([scores[k] for k in KINDS], dim=-1).cpu().numpy()  # [L H L H kind]
    L, H = stacked.shape[:2]
    sl, sh, dl, dh, kind = np.meshgrid(np.arange(L), np.arange(H), np.arange(L), np.arange(H),
                                       np.arange(len(KINDS)), indexing="ij")
    keep = (sl < dl).ravel()
    kinds = np.array(KINDS, dtype=object)
    return {
        "src_layer": sl.ravel()[keep].astype(np.int16),
        "src_head": sh.ravel()[keep].astype(np.int16),
        "dst_layer": dl.ravel()[keep].astype(np.int16),
        "dst_head": dh.ravel()[keep].astype(np.int16),
        "kind": kinds[kind.ravel()[keep]],
        "score": stacked.ravel()[keep].astype(np.float32),
        "baseline": np.array([baseline[k] for k in KINDS], dtype=np.float32)[kind.ravel()[keep]],
    }
