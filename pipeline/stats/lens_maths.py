"""The logit lens at one position: every residual state decoded, the writes attributed, the PCA.

A position's residual states, in the order the forward pass makes them, are indexed by `depth`:
depth 2l is block l's input (`resid_pre`), 2l + 1 the state after its attention (`resid_mid`),
and 2L (L = n_layers) the last block's output (`resid_post`, what the final norm reads). Each
state was made by one writer: depth 0 by the embedding, 2l + 1 by block l's attention, 2l + 2 by
block l's MLP (state minus the state before it: the decomposition is exact).

Decoding (`Unembed.logits`): each state goes through the final norm with its OWN scale (a norm
computes P x / s(x) * w + b, with P the centring for LayerNorm and s the standard deviation or
RMS of that same x) and the unembedding. Reusing the final state's scale for every layer is a
known bug of other tools: early states are much smaller, so their decoded distributions would be
nearly uniform. The last depth decodes to the model's own logits.

Per depth: top-k tokens with probabilities, KL(final || this depth) in nats, entropy, whether the
top-1 equals the final top-1, and, where the position has a next token, its probability and rank
(0 = top-1; ties count in its favour).

Direct logit attribution (DLA) to the true next token t, with the final scale s frozen at the
final state's: logit_t = sum over writers c of (P c) . v_t / s + b . W_U[:, t] + b_U[t], where
v_t = w * W_U[:, t] (w, b: the final norm's weight and bias). The writers' terms (embedding,
each attention, each MLP) sum exactly to the logit minus those constant bias terms. A head's
term is z_h W_O[h] P v_t / s from its `hook_z` (attention's term minus the heads' is b_O's).

PCA (a published GPT-2 experiment, re-measured per position): the states at block boundaries
(depths 0, 2, ..., 2L: the embedding and every block's output), centred over the layers; the
share of their variance on the first principal component, and whether that component, signed so
that the final state scores positive on it and decoded like a state, has the final top-1. The
control first scales each state to unit norm: the residual's norm grows with depth, and growth
alone along any fixed direction gives a large first component.

Every computation is row-wise: a position's numbers depend on no other position. The statistic
feeds positions in chunks of a fixed size (padded), so that even the floating-point kernels see
the same shapes whatever the batch held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

F32, F64 = torch.float32, torch.float64
SITES = ("resid_pre", "resid_mid", "resid_post")


def site_of(depth: int, n_layers: int) -> tuple[int, str]:
    """(layer, site) of a depth: (l, 'resid_pre') for 2l, (l, 'resid_mid') for 2l + 1,
    (L - 1, 'resid_post') for 2L."""
    if depth == 2 * n_layers:
        return n_layers - 1, "resid_post"
    return depth // 2, SITES[depth % 2]


def writer_of(depth: int) -> tuple[str, int | None]:
    """What wrote the state at `depth`: ('embedding', None), ('attention', l) or ('mlp', l)."""
    if depth == 0:
        return "embedding", None
    return ("attention", (depth - 1) // 2) if depth % 2 else ("mlp", depth // 2 - 1)


@dataclass
class Unembed:
    """Float32 copies of what decoding needs: the final norm, the unembedding and every W_O."""

    centre: bool  # LayerNorm (True) or RMSNorm
    eps: float
    w: Tensor  # [d_model] the final norm's effective weight
    b: Tensor | None  # [d_model]
    W_U: Tensor  # [d_model d_vocab]
    b_U: Tensor | None  # [d_vocab]
    W_O: Tensor  # [layer head d_head d_model]

    @staticmethod
    @torch.no_grad()
    def of(model) -> Unembed:
        from pipeline.attn_weights import _hf, norms

        nm = norms(model)
        bridge = model.bridge
        final = _hf(bridge.ln_final)
        bias = getattr(final, "bias", None)
        W_U = bridge.W_U.detach().to(F32).clone()
        b_U = getattr(bridge, "b_U", None)
        w = nm.final_w if nm.final_w is not None else torch.ones(W_U.shape[0], dtype=F32, device=W_U.device)
        return Unembed(centre=nm.centre, eps=nm.eps, w=w, b=None if bias is None else bias.detach().to(F32).clone(),
                       W_U=W_U, b_U=None if b_U is None else b_U.detach().to(F32).clone(),
                       W_O=torch.stack([blk.attn.W_O.detach().to(F32).clone() for blk in bridge.blocks]))

    def project(self, x: Tensor) -> Tensor:
        """P x: centred over d_model for LayerNorm, x itself for RMSNorm."""
        return x - x.mean(-1, keepdim=True) if self.centre else x

    def scale(self, x: Tensor) -> Tensor:
        """s(x) `[... 1]`: the norm's divisor for the state x itself."""
        return torch.sqrt(self.project(x).pow(2).mean(-1, keepdim=True) + self.eps)

    def logits(self, x: Tensor) -> Tensor:
        """`x [... d_model]` through the final norm (its own scale) and the unembedding."""
        y = self.project(x) / self.scale(x) * self.w
        if self.b is not None:
            y = y + self.b
        out = y @ self.W_U
        return out if self.b_U is None else out + self.b_U


@dataclass
class PositionLens:
    """One position's lens (D = 2L + 1 depths, k top tokens)."""

    top_ids: Tensor  # [D k] int64
    top_probs: Tensor  # [D k] float32
    kl: Tensor  # [D] KL(final || depth), nats
    entropy: Tensor  # [D] nats
    agrees: Tensor  # [D] bool: top-1 equals the final top-1
    true_prob: Tensor  # [D] probability of the next token (NaN without one)
    true_rank: Tensor  # [D] int64 rank of the next token (-1 without one)
    resid_norm: Tensor  # [D] the state's L2 norm
    write_norm: Tensor  # [D] the L2 norm of what the state's writer added
    write_dla: Tensor  # [D] the writer's DLA to the next token (NaN without one)
    head_dla: Tensor  # [layer head] (NaN without a next token)
    pca: Tensor  # [4] float64: share, match, share (normalised), match (normalised)
    pca_top: Tensor  # [2] int64: the decoded top-1 of the component, raw and normalised


@torch.no_grad()
def decode_states(U: Unembed, states: Tensor, next_ids: Tensor, k: int, extra: Tensor | None = None
                  ) -> dict[str, Tensor]:
    """The decoded distributions of `states [n D d_model]` (the last of the D is the output):
    top_ids / top_probs `[n D k]`, kl (to the last) / entropy / agrees (top-1 = the last's top-1)
    / true_prob / true_rank `[n D]` for the tokens `next_ids [n]` (-1: none; NaN and -1 there).

    Written for few passes over the [n D vocab] log-probabilities (after the unembedding product,
    they are the cost): entropy_d = -p_d . log p_d (one fused dot product per row) and
    KL(last || d) = p_last . log p_last - p_last . log p_d (one matrix-vector product per position;
    float32, KL clamped at 0).
    `extra [n m d_model]`: more vectors to decode in the same product (reading the unembedding once
    costs as much as a product with a few rows); only their top-1 ids come back, "extra_top" [n m]."""
    states = states.to(F32)
    n, D, _ = states.shape
    logits = U.logits(states if extra is None else torch.cat([states, extra.to(F32)], dim=1))
    extra_top = None if extra is None else logits[:, D:].argmax(-1)
    logp = torch.log_softmax(logits[:, :D], dim=-1)  # [n D vocab]
    top = logp.topk(k, dim=-1)
    has = next_ids >= 0
    t = next_ids.clamp(min=0)[:, None, None].expand(n, D, 1)
    true_logp = logp.gather(2, t)
    true_rank = torch.where(has[:, None], (logp > true_logp).sum(-1, dtype=torch.int32).long(), -1)
    p = logp.exp()
    plogp = torch.linalg.vecdot(p, logp)  # [n D]: p_d . log p_d = -entropy
    cross = torch.bmm(logp, p[:, -1, :, None])[..., 0]  # [n D]: p_last . log p_d
    kl = (plogp[:, -1:] - cross).clamp(min=0)
    kl[:, -1] = 0.0
    out = {
        "top_ids": top.indices, "top_probs": top.values.exp(), "kl": kl, "entropy": -plogp,
        "agrees": top.indices[..., 0] == top.indices[:, -1:, 0],
        "true_prob": torch.where(has[:, None], true_logp[..., 0].exp(), float("nan")),
        "true_rank": true_rank,
    }
    if extra_top is not None:
        out["extra_top"] = extra_top
    return out


@torch.no_grad()
def lens_positions(U: Unembed, states: Tensor, z: Tensor, next_ids: Tensor, k: int) -> PositionLens:
    """The lens of n positions at once, each row computed independently of the others: `states
    [n D d_model]` (depth order), `z [n layer head d_head]` (each head's hook_z), `next_ids [n]`
    (-1: no next token), k top tokens. Every field gets a leading n."""
    states = states.to(F32)
    boundary = states[:, 0::2]
    shares, directions = zip(*(first_component(X) for X in (boundary, unit_rows(boundary))), strict=True)
    d = decode_states(U, states, next_ids, k, extra=torch.stack(directions, dim=1))
    pca_top = d.pop("extra_top")  # [n 2]: the components' decoded top-1, raw and normalised
    final_top = d["top_ids"][:, -1, :1]
    pca = torch.stack([shares[0], (pca_top[:, 0:1] == final_top)[:, 0].to(F64),
                       shares[1], (pca_top[:, 1:2] == final_top)[:, 0].to(F64)], dim=-1)
    writes = torch.cat([states[:, :1], states[:, 1:] - states[:, :-1]], dim=1)
    has = next_ids >= 0
    t = next_ids.clamp(min=0)
    v = U.project(U.w * U.W_U[:, t].T)  # [n d_model]: P v_t per position
    s_final = U.scale(states[:, -1])  # [n 1]
    write_dla = torch.where(has[:, None], (writes * v[:, None]).sum(-1) / s_final, float("nan"))
    read = torch.einsum("lhdm,nm->nlhd", U.W_O, v)  # what each head's z is dotted with
    head_dla = (z.to(F32) * read).sum(-1) / s_final[:, :, None]
    head_dla = torch.where(has[:, None, None], head_dla, float("nan"))
    return PositionLens(**d, resid_norm=states.norm(dim=-1),
                        write_norm=writes.norm(dim=-1), write_dla=write_dla, head_dla=head_dla,
                        pca=pca, pca_top=pca_top)


def lens_position(U: Unembed, states: Tensor, z: Tensor, next_id: int, k: int) -> PositionLens:
    """One position's lens (`lens_positions` for n = 1, without the leading dimension)."""
    out = lens_positions(U, states[None], z[None], torch.tensor([next_id], device=states.device), k)
    return PositionLens(**{f: getattr(out, f)[0] for f in PositionLens.__dataclass_fields__})


def first_component(X: Tensor) -> tuple[Tensor, Tensor]:
    """(share of variance, unit direction) of the first principal component of the rows of
    `X [... n d]` (centred over the rows), float64, signed so that the last row scores >= 0.
    From the n x n Gram matrix (n = layers + 1 is much smaller than d_model): its largest
    eigenvalue over its trace is the share, and X^T u / sqrt(lambda) the direction."""
    X = X.to(F64)
    Xc = X - X.mean(-2, keepdim=True)
    lam, U_ = torch.linalg.eigh(Xc @ Xc.mT)  # ascending
    top, u = lam[..., -1].clamp(min=0), U_[..., :, -1]
    total = lam.clamp(min=0).sum(-1)
    share = torch.where(total > 0, top / total.clamp(min=1e-300), 0.0)
    v = (Xc.mT @ u[..., None])[..., 0] / top.sqrt().clamp(min=1e-300)[..., None]
    sign = torch.where((Xc[..., -1, :] * v).sum(-1) < 0, -1.0, 1.0).to(F64)
    return share, v * sign[..., None]


def unit_rows(X: Tensor) -> Tensor:
    """Each state scaled to unit norm: the PCA experiment's control."""
    return X / X.norm(dim=-1, keepdim=True).clamp(min=1e-30)


def pca_positions(U: Unembed, boundary: Tensor, final_top: Tensor) -> tuple[Tensor, Tensor]:
    """([n 4] share, match, share normalised, match normalised; [n 2] decoded top-1 raw, normalised)
    for the block-boundary states `boundary [n L+1 d_model]` of n positions (module docstring)."""
    out, tops = [], []
    for X in (boundary, unit_rows(boundary)):
        share, v = first_component(X)
        top1 = U.logits(v.to(F32)).argmax(-1)
        out += [share, (top1 == final_top).to(F64)]
        tops.append(top1)
    return torch.stack(out, dim=-1), torch.stack(tops, dim=-1)


def pca_position(U: Unembed, boundary: Tensor, final_top: Tensor) -> tuple[Tensor, Tensor]:
    """`pca_positions` of one position (`boundary [L+1 d_model]`)."""
    pca, top = pca_positions(U, boundary[None], final_top.reshape(1))
    return pca[0], top[0]
