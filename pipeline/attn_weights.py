"""Folded copies of the weights that weight-only circuit analyses read: attention, MLP, embeddings.

`TransformerBridge` exposes `W_Q/W_K/W_V/W_O` (and `pipeline/weights.py` the MLP weights) as live
views of the parameters the model runs, with the norms NOT folded in. The analyses of
`pipeline/analysis/ov_qk.py`, `composition.py` and `circuits.py` want the weights as the residual
stream sees them, so this module makes float32 COPIES with the norms folded in. The model is
never modified.

What is folded, and why it is exact up to one positive scalar per position:
- A norm computes `N(x) = x_hat * w (+ b)` with `x_hat = P x / s(x)`: for LayerNorm P removes the
  mean (P = I - 11^T/d) and s is the standard deviation; for RMSNorm P = I and s is the root mean
  square (both with their eps). So `N(x) @ W = (x @ P diag(w) W) / s(x) + b @ W`.
- Reading weights (W_Q/W_K/W_V read through ln1, the MLP's W_in through ln2, W_U through the final
  norm) become `W' = P diag(w) W`: the norm's weight is folded in and, for LayerNorm, the rows are
  centred (each column of W' has mean 0 over d_model) so that `x @ W'` is right for ANY x, also
  one that was never centred. The norm's bias becomes a bias of the reader (`b @ W` added to
  b_Q, b_K and b_in); the value side's biases (b_V and ln1's bias through W_V), b_O and the final
  norm's bias are dropped: they add the same vector whatever the tokens.
- Writing weights (W_O, the MLP's W_out) are centred for LayerNorm models (`W P`): every reader is
  a LayerNorm, which removes the component along (1, ..., 1) anyway, so leaving it in would only
  inflate norms (TransformerLens's `center_writing_weights` does the same).
- `1 / s(x)` is a positive scalar per position that depends on the whole residual: it cannot be
  folded, and the analyses leave it out (it scales, and does not rotate, what a reader sees).
  Where an analysis feeds a real vector (a token embedding, a position embedding) it normalises
  it with `normalise` as the norm would, then uses the folded weights.
- W_U is also centred over the vocabulary (`folded_unembed`): a vector that raises every logit
  alike changes no probability, and on RMSNorm models the mean token direction would otherwise
  dominate token-space circuits.
- Gemma-style RMSNorm multiplies by (1 + w): the effective scale is used.

GQA: `W_K`/`W_V` keep one matrix per key-value head, `[layer kv_head d_model d_head]`; query head h
reads kv head `h // (n_heads // n_kv_heads)` (`FoldedAttention.kv_of_head`).

The gated MLP's W_in is the UP projection, as `pipeline/weights.py` explains. What is elsewhere:
the live views of the MLP weights in `pipeline/weights.py`; the analyses in `pipeline/analysis/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.weights import neuron_weights

F32 = torch.float32


@dataclass
class Norms:
    """The model's norm parameters (float32 copies)."""

    centre: bool  # LayerNorm subtracts the mean; RMSNorm does not
    eps: float
    ln1_w: Tensor  # [layer d_model], the pre-attention norm's effective scale
    ln1_b: Tensor | None  # [layer d_model]; None without biases (RMSNorm)
    ln2_w: Tensor  # [layer d_model], the pre-MLP norm
    ln2_b: Tensor | None
    final_w: Tensor | None  # [d_model]; None if the model has no final norm weight


@dataclass
class FoldedAttention:
    """Attention weights with ln1 folded into the readers and W_O centred (LN); float32 copies."""

    W_Q: Tensor  # [layer head d_model d_head]
    W_K: Tensor  # [layer kv_head d_model d_head]
    W_V: Tensor  # [layer kv_head d_model d_head]
    W_O: Tensor  # [layer head d_head d_model]
    b_Q: Tensor  # [layer head d_head]: b_Q + ln1 bias @ W_Q (zeros without biases)
    b_K: Tensor  # [layer kv_head d_head]: b_K + ln1 bias @ W_K

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[1]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[3]

    @property
    def kv_of_head(self) -> Tensor:
        """[head] int64: the key-value head each query head reads."""
        group = self.n_heads // self.n_kv_heads
        return torch.arange(self.n_heads, device=self.W_Q.device) // group

    def W_K_per_head(self) -> Tensor:
        """[layer head d_model d_head]: W_K repeated for the query heads that share it."""
        return self.W_K[:, self.kv_of_head]

    def W_V_per_head(self) -> Tensor:
        """[layer head d_model d_head]."""
        return self.W_V[:, self.kv_of_head]


@dataclass
class FoldedMLP:
    """MLP weights with ln2 folded into W_in and W_out centred (LN); float32 copies."""

    W_in: Tensor  # [layer d_model d_mlp]; the up projection for gated MLPs
    b_in: Tensor  # [layer d_mlp]: b_in + ln2 bias @ W_in (zeros without biases)
    W_out: Tensor  # [layer d_mlp d_model]

    @property
    def n_layers(self) -> int:
        return self.W_in.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[2]


# --- norms ---------------------------------------------------------------------------------


def _hf(component):
    """The Hugging Face module a bridge component wraps (its parameters are the model's)."""
    wrapped = getattr(component, "original_component", None)
    return component if wrapped is None else wrapped


def norms(model) -> Norms:
    """Copies of every norm's scale and bias; LayerNorm vs RMSNorm from `model.facts["normalization"]`."""
    bridge = model.bridge
    centre = not str(model.facts.get("normalization", "LN")).upper().startswith("RMS")
    ln1 = [_hf(block.ln1) for block in bridge.blocks]
    ln2 = [_hf(block.ln2) for block in bridge.blocks]
    final = _hf(bridge.ln_final) if hasattr(bridge, "ln_final") else None
    eps = getattr(ln1[0], "eps", None) or getattr(ln1[0], "variance_epsilon", None) or float(bridge.cfg.eps)
    offset = bool(getattr(bridge.cfg, "rmsnorm_uses_offset", False))
    return Norms(centre=centre, eps=float(eps), ln1_w=_stack_scale(ln1, offset), ln1_b=_stack_bias(ln1),
                 ln2_w=_stack_scale(ln2, offset), ln2_b=_stack_bias(ln2),
                 final_w=None if final is None or getattr(final, "weight", None) is None
                 else _scale(final, offset))


def _scale(norm, offset: bool) -> Tensor:
    w = norm.weight.detach().to(F32)
    return 1.0 + w if offset else w.clone()


def _stack_scale(mods, offset: bool) -> Tensor:
    return torch.stack([_scale(m, offset) for m in mods])


def _stack_bias(mods) -> Tensor | None:
    biases = [getattr(m, "bias", None) for m in mods]
    if any(b is None for b in biases):
        return None
    return torch.stack([b.detach().to(F32) for b in biases])


def normalise(x: Tensor, centre: bool, eps: float) -> Tensor:
    """`x [... d_model]` as a norm's input would be normalised, before its weight (float32)."""
    x = x.to(F32)
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def fold_reading(W: Tensor, w: Tensor, centre: bool) -> Tensor:
    """`P diag(w) W` for a reader `W [... d_model k]` behind a norm of scale `w [... d_model]`."""
    W = W.to(F32) * w.to(F32)[..., :, None]  # a new tensor: the in-place centring below is safe
    return W.sub_(W.mean(-2, keepdim=True)) if centre else W


def centre_writing(W: Tensor, centre: bool) -> Tensor:
    """`W P` for a writer `W [... d_model]` (a copy; float32)."""
    W = W.to(F32)
    return W - W.mean(-1, keepdim=True) if centre else W.clone()


# --- folded weights ------------------------------------------------------------------------


@torch.no_grad()
def folded_attention(model, nm: Norms | None = None) -> FoldedAttention:
    """ln1 folded into W_Q/W_K/W_V (and its bias into b_Q/b_K), W_O centred for LayerNorm."""
    nm = nm or norms(model)
    attns = [block.attn for block in model.bridge.blocks]
    raw = {name: torch.stack([getattr(a, name).detach().to(F32) for a in attns])
           for name in ("W_Q", "W_K", "W_V", "W_O")}
    L, H = model.n_layers, model.n_heads
    d_head = raw["W_Q"].shape[-1]
    n_kv = raw["W_K"].shape[1]
    expected = {"W_Q": (L, H, model.d_model, d_head), "W_K": (L, n_kv, model.d_model, d_head),
                "W_V": (L, n_kv, model.d_model, d_head), "W_O": (L, H, d_head, model.d_model)}
    for name, shape in expected.items():
        if tuple(raw[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(raw[name].shape)}, expected {shape}")
    if H % n_kv:
        raise ValueError(f"{H} query heads cannot share {n_kv} key-value heads")
    w1 = nm.ln1_w[:, None]  # [layer 1 d_model]: the same scale for every head of a layer
    return FoldedAttention(
        W_Q=fold_reading(raw["W_Q"], w1, nm.centre), W_K=fold_reading(raw["W_K"], w1, nm.centre),
        W_V=fold_reading(raw["W_V"], w1, nm.centre), W_O=centre_writing(raw["W_O"], nm.centre),
        b_Q=_reader_bias(attns, "b_Q", raw["W_Q"], nm.ln1_b), b_K=_reader_bias(attns, "b_K", raw["W_K"], nm.ln1_b))


def _reader_bias(attns, name: str, W: Tensor, ln_b: Tensor | None) -> Tensor:
    """[layer head d_head]: the module's own bias (zeros if none) plus the norm's bias read by W."""
    try:
        b = torch.stack([getattr(a, name).detach().to(F32) for a in attns])
    except (AttributeError, TypeError):  # bias-free projections (the bridge raises or gives None)
        b = torch.zeros(W.shape[:2] + W.shape[-1:], dtype=F32, device=W.device)
    if ln_b is not None:
        b = b + torch.einsum("ld,lhde->lhe", ln_b, W)
    return b


@torch.no_grad()
def folded_mlp(model, nm: Norms | None = None) -> FoldedMLP:
    """ln2 folded into W_in (its bias into b_in), W_out centred for LayerNorm."""
    nm = nm or norms(model)
    w = neuron_weights(model)
    W_in_raw = torch.stack([W.detach().to(F32) for W in w.W_in])  # [layer d_model d_mlp]
    b_in = (torch.stack([b.detach().to(F32) for b in w.b_in]) if w.b_in is not None
            else torch.zeros(W_in_raw.shape[0], W_in_raw.shape[2], dtype=F32, device=W_in_raw.device))
    if nm.ln2_b is not None:
        b_in = b_in + torch.einsum("ld,ldm->lm", nm.ln2_b, W_in_raw)
    W_in = fold_reading(W_in_raw, nm.ln2_w, nm.centre)
    del W_in_raw
    W_out = torch.stack([centre_writing(W, nm.centre) for W in w.W_out])
    return FoldedMLP(W_in=W_in, b_in=b_in, W_out=W_out)


@torch.no_grad()
def folded_unembed(model, nm: Norms | None = None) -> Tensor:
    """[d_model d_vocab]: W_U with the final norm's scale folded in (centred over d_model for
    LayerNorm), and centred over the vocabulary: what adds the same to every logit changes no
    probability (TransformerLens's `center_unembed`)."""
    nm = nm or norms(model)
    W_U = model.bridge.W_U
    scale = nm.final_w if nm.final_w is not None else torch.ones(W_U.shape[0], dtype=F32, device=W_U.device)
    W = fold_reading(W_U, scale, nm.centre)
    return W.sub_(W.mean(-1, keepdim=True))


def embedding_chunks(model, nm: Norms | None = None, chunk: int = 2048) -> Iterator[tuple[int, Tensor]]:
    """(first token id, [chunk d_model] float32): rows of W_E normalised as a residual holding only
    that token's embedding would be by any norm of the model (`normalise`; the norm's weight is not
    applied: it is folded into the readers)."""
    nm = nm or norms(model)
    W_E = model.bridge.W_E
    for lo in range(0, W_E.shape[0], chunk):
        yield lo, normalise(W_E[lo : lo + chunk].detach(), nm.centre, nm.eps)


def position_embeddings(model) -> Tensor | None:
    """[n_ctx d_model] learned position embeddings (a live view), or None (rotary models)."""
    if getattr(model.bridge.cfg, "positional_embedding_type", "standard") != "standard":
        return None
    try:
        return model.bridge.W_pos
    except AttributeError:
        return None
