"""Turning the live page's "add an intervention" form into an `Intervention` (plain data)."""

from __future__ import annotations

import torch

from dashboard import data


def make(live, what: str, layer: int, index: int, scale: float, ids: list[int], plus: str, minus: str, path: str):
    """The intervention the form describes; ValueError (one line) for one it cannot make."""
    from pipeline import hooks
    from pipeline.live import Intervention
    from pipeline.weights import neuron_weights

    m = live.model
    if what.startswith("zero-ablate a head"):
        return Intervention("zero", "head", layer, index)
    if what.startswith("mean-ablate a head"):
        z = live.run(ids, capture=[hooks.attn_z(layer)]).cache[hooks.attn_z(layer)]  # [pos head d_head]
        if index >= m.n_heads:
            raise ValueError(f"head {index} is outside 0-{m.n_heads - 1}")
        return Intervention("mean", "head", layer, index, vector=tuple(z[1:, index].mean(0).tolist()))
    if what.startswith("zero-ablate a neuron"):
        return Intervention("zero", "neuron", layer, index)
    if what.startswith("mean-ablate a neuron"):
        row = data.neuron(path, layer, index)
        if row is None or row.get("mean") is None:
            raise ValueError(f"the store has no mean for neuron {index} of layer {layer}")
        return Intervention("mean", "neuron", layer, index, value=float(row["mean"]))
    if what.startswith("steer with a neuron"):
        if index >= m.d_mlp:
            raise ValueError(f"neuron {index} is outside 0-{m.d_mlp - 1}")
        with torch.no_grad():
            vector = neuron_weights(m).W_out[layer][index].detach().float()
        return Intervention("steer", "resid", layer, value=scale, vector=tuple((vector / vector.norm()).tolist()))
    # the mean difference of two prompts' residual streams entering block `layer` (BOS left out)
    name = hooks.resid_pre(layer)
    means = []
    for text in (plus, minus):
        toks, _ = live.encode(text)
        if len(toks) < 2:
            raise ValueError("both steering prompts need at least one token")
        means.append(live.run(toks, capture=[name]).cache[name][1:].mean(0))
    diff = means[0] - means[1]
    unit = diff / diff.norm().clamp(min=1e-12)
    return Intervention("steer", "resid", layer, value=scale, vector=tuple(unit.tolist()))
