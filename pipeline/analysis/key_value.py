"""Key-value view: what each neuron's output weights promote, read in token space.

A neuron adds activation x W_out[n] to the residual stream. Its direct effect on the logits is
that vector through the final norm — centred if the norm is a LayerNorm, times the norm's
scale; the division by the norm's running scale is common to all neurons and left out — and
the unembedding. The top tokens are what one unit of activation promotes, the bottom ones
what it suppresses. Done in chunks of neurons so memory stays ~chunk x d_vocab.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def value_logits(W_out: torch.Tensor, W_U: torch.Tensor, scale: torch.Tensor | None,
                 centre: bool) -> torch.Tensor:
    """W_out [neuron d_model] -> logits [neuron d_vocab] (float32)."""
    v = W_out.to(torch.float32)
    if centre:
        v = v - v.mean(-1, keepdim=True)
    if scale is not None:
        v = v * scale.to(torch.float32)
    return v @ W_U.to(torch.float32)


@torch.no_grad()
def value_tokens(weights, centre: bool, n_tokens: int = 10, chunk: int = 512
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top and bottom `n_tokens` value tokens of every neuron: (top_ids, top_logits,
    bottom_ids, bottom_logits), each [layers * d_mlp, n_tokens] in (layer, neuron) order."""
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for W_out in weights.W_out:
        for lo in range(0, W_out.shape[0], chunk):
            logits = value_logits(W_out[lo : lo + chunk], weights.W_U, weights.ln_final_scale, centre)
            top = logits.topk(n_tokens, dim=1)
            bottom = logits.topk(n_tokens, dim=1, largest=False)
            for acc, t in zip(outs, (top.indices, top.values, bottom.indices, bottom.values), strict=True):
                acc.append(t.cpu())
    top_ids, top_logits, bottom_ids, bottom_logits = (torch.cat(a).numpy() for a in outs)
    return top_ids, top_logits, bottom_ids, bottom_logits
