"""The weights behind the MLP neurons, as views of the parameters the bridge runs.

`TransformerBridge` (TransformerLens 4) does not copy weights: it wraps the Hugging Face modules
in place, and each bridge component keeps the wrapped module as `original_component`. The
tensors here are read from those modules and are views (transposes at most), so writing into
them under `torch.no_grad()` changes what the model computes; tests plant weights that way.

Orientation: everything is `[d_in, d_out]` as the residual stream is multiplied from the left.
GPT-2's `Conv1D` already stores `[d_in, d_out]` (`c_fc.weight` is `[d_model, d_mlp]`);
`nn.Linear` stores `[d_out, d_in]` (Llama's `up_proj` is `[d_mlp, d_model]`) and is transposed.

Gated MLPs compute `act(x @ W_gate) * (x @ W_in)`. `W_in` is the UP projection, as in
TransformerLens (`mlp.W_in`, `hook_pre_linear`): it is the linear path, so it sets the sign
and scale of the activation (SiLU of the gate is >= -0.28 and mostly a positive soft switch),
which makes it the vector to compare with what a neuron writes (deletion cosines) and the one
that plays the role of GPT-2's single input matrix. `W_gate` is kept next to it.

What is elsewhere: analyses of these weights in `pipeline/analysis/`, hook names in
`pipeline/hooks.py`, loading in `pipeline/models.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class NeuronWeights:
    W_in: list[Tensor]  # per layer [d_model, d_mlp]; the up projection for gated MLPs
    W_gate: list[Tensor] | None  # per layer [d_model, d_mlp], gated MLPs only
    W_out: list[Tensor]  # per layer [d_mlp, d_model]
    ln_final_scale: Tensor | None  # [d_model], the final norm's weight; None without one
    W_U: Tensor  # [d_model, d_vocab]
    b_in: list[Tensor] | None = None  # per layer [d_mlp], GPT-2's c_fc bias; None without biases


def neuron_weights(model) -> NeuronWeights:
    """Views of `model.bridge`'s live MLP, final-norm and unembedding weights."""
    bridge = model.bridge
    mlps = [block.mlp for block in bridge.blocks]
    W_in = [in_out(_wrapped(getattr(mlp, "in"))) for mlp in mlps]
    W_gate = [in_out(_wrapped(mlp.gate)) for mlp in mlps] if model.gated else None
    W_out = [in_out(_wrapped(mlp.out)) for mlp in mlps]
    biases = [_wrapped(getattr(mlp, "in")).bias for mlp in mlps]
    b_in = None if any(b is None for b in biases) else biases
    W_U = in_out(_wrapped(bridge.unembed))
    for name, W, shape in (("W_in", W_in[0], (model.d_model, model.d_mlp)),
                           ("W_out", W_out[0], (model.d_mlp, model.d_model)),
                           ("W_U", W_U, (model.d_model, model.d_vocab))):
        if tuple(W.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(W.shape)}, expected {shape}: unexpected module layout")
    return NeuronWeights(W_in=W_in, W_gate=W_gate, W_out=W_out, ln_final_scale=_final_norm_scale(bridge),
                         W_U=W_U, b_in=b_in)


def in_out(module: nn.Module) -> Tensor:
    """A linear layer's weight as a `[d_in, d_out]` view."""
    if isinstance(module, nn.Linear):
        return module.weight.T
    if type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D (GPT-2)
        return module.weight
    raise TypeError(f"do not know the weight layout of {type(module).__name__}")


def _wrapped(component: nn.Module) -> nn.Module:
    """The Hugging Face module a bridge component wraps (the component itself if it wraps none)."""
    wrapped = getattr(component, "original_component", None)
    return component if wrapped is None else wrapped


def _final_norm_scale(bridge) -> Tensor | None:
    norm = _wrapped(bridge.ln_final) if hasattr(bridge, "ln_final") else None
    weight = getattr(norm, "weight", None)
    if weight is None:
        return None
    if getattr(bridge.cfg, "rmsnorm_uses_offset", False):
        # Gemma-style RMSNorm multiplies by (1 + weight): the effective scale is a new tensor,
        # not a view, so planting weights through it would not reach the model.
        with torch.no_grad():
            return 1.0 + weight
    return weight


def weights_state(model) -> tuple:
    """What identifies the weights a loaded model holds right now, cheaply: its name and source,
    and each parameter's storage address and torch's in-place version counter (which every
    in-place write bumps, also under no_grad: a planted change shows). Equal only for the same
    loaded model with untouched weights."""
    params = model.bridge.original_model.state_dict(keep_vars=True).values()
    return model.name, model.source, tuple((t.data_ptr(), t._version) for t in params)
