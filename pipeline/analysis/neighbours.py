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
        layer_ids, layer_cos = nearest_rows(W_out, n, chunk)
        ids.append(layer_ids.cpu())
        cos.append(layer_cos.cpu())
    return torch.cat(ids).numpy().astype(np.int32), torch.cat(cos).numpy().astype(np.float32)


@torch.no_grad()
def nearest_rows(vectors: torch.Tensor, n: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's `n` nearest other rows of `vectors` by cosine (float32; `vectors` itself is not
    changed): ([rows, k] row indices, [rows, k] cosines), nearest first, k = min(n, rows - 1).
    The similarity matrix is computed `chunk` rows at a time (a fixed chunk: the same floats
    however many rows there are)."""
    unit = torch.nn.functional.normalize(vectors.to(torch.float32), dim=1)
    count = unit.shape[0]
    k = min(n, max(count - 1, 0))
    ids, cos = [], []
    for lo in range(0, count, chunk):
        sim = unit[lo : lo + chunk] @ unit.T  # [chunk, rows]
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + lo] = float("-inf")  # not its own neighbour
        top = sim.topk(k, dim=1)
        ids.append(top.indices)
        cos.append(top.values)
    if not ids:
        return unit.new_zeros((0, k), dtype=torch.int64), unit.new_zeros((0, k))
    return torch.cat(ids), torch.cat(cos)
