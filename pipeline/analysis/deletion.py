"""Deletion score: cosine between a neuron's input and output weight vectors.

Strongly negative means the neuron writes back (minus) the direction it reads: it erases that
direction from the residual stream. Both vectors live in the residual basis (d_model). For
gated MLPs (act(gate . x) * (up . x)) the input vector is the *up* projection: the output is
linear in up . x, so a neuron whose output is minus its up vector removes the component it
reads, whatever the sign; the gate only scales how much.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def deletion_cosines(weights) -> np.ndarray:
    """[layers * d_mlp] cosine(W_in[:, n], W_out[n, :]) in (layer, neuron) order."""
    out = []
    for W_in, W_out in zip(weights.W_in, weights.W_out, strict=True):
        cos = torch.nn.functional.cosine_similarity(W_in.T.to(torch.float32), W_out.to(torch.float32), dim=1)
        out.append(cos.cpu())
    return torch.cat(out).numpy().astype(np.float32)
