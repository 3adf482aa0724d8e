"""Each neuron's nearest neighbours by output weights, within its layer.

Two neurons whose output weight vectors point the same way write the same thing to the
residual stream: a researcher looking at one wants to see the other. Cosine similarity of
`W_out` rows, top `n` per neuron excluding itself; within the layer (one [d_mlp, d_mlp] product
per layer, chunked) so the cost stays linear in the number of layers.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def output_neighbours(weights, n: int = 10, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """([layers * d_mlp, n] neighbour neuron indices, [layers * d_mlp, n] cosines), (layer, neuron) order."""
    ids, cos = [], []
    for W_out in weights.W_out:
        unit = torch.nn.functional.normalize(W_out.to(torch.float32), dim=1)
        d_mlp = unit.shape[0]
        k = min(n, d_mlp - 1)
        for lo in range(0, d_mlp, chunk):
            sim = unit[lo : lo + chunk] @ unit.T  # [chunk, d_mlp]
            rows = torch.arange(lo, min(lo + chunk, d_mlp))
            sim[rows - lo, rows] = float("-inf")  # not its own neighbour
            top = sim.topk(k, dim=1)
            ids.append(top.indices.cpu())
            cos.append(top.values.cpu())
    return torch.cat(ids).numpy().astype(np.int32), torch.cat(cos).numpy().astype(np.float32)
