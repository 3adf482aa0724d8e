"""Hook-point names of TransformerLens's `TransformerBridge`, spelled once.

Every other module asks for a hook through these functions instead of writing the string, so
a renamed hook is one edit here. All names below are keys of `bridge.hook_dict` for both
GPT-2 (`GPT2LMHeadModel`) and Llama-family (`LlamaForCausalLM`, e.g. smollm2-135m) bridges,
except where a docstring says otherwise; `tests/test_models.py` checks that each one fires.

Shapes: `batch pos d_model` for the residual stream, `batch pos d_mlp` for neurons,
`batch head query_pos key_pos` for attention patterns, `batch pos head d_head` for q/k/v/z
(grouped-query models have fewer k/v heads than query heads: smollm2 has 9 and 3).

Facts worth knowing (checked on TransformerLens 4.3):
- Several names are aliases: `hook_resid_pre` is `blocks.{l}.hook_in`, `hook_resid_mid` is
  `blocks.{l}.ln2.hook_in`, `hook_resid_post` is `blocks.{l}.hook_out`, `mlp.hook_post` is
  `mlp.out.hook_in`. A hook function receives `hook.name` = the canonical name, not the alias
  it was registered under: key captured tensors by the name you asked for.
- The MLP's input (after the second norm, including its weight) is `mlp_in(l)`, equal to
  `blocks.{l}.ln2.hook_out`. `ln2.hook_normalized` is the norm before its weight: it only
  coincides with the MLP input when the norm's weight is 1 (fresh GPT-2 init), so do not use it.
- Residual decomposition holds exactly: resid_post = resid_pre + attn_out + mlp_out.
- `blocks.{l}.hook_mlp_in` and `attn.hook_result` exist but refuse hooks unless the bridge's
  `set_use_hook_mlp_in(True)` / `set_use_attn_result(True)` is called; they are not offered here.

`HookPoint`s (at the end) place a name in the forward pass, so that a harvest can stop the pass
after the last point any statistic asks for.

What is elsewhere: which hooks a statistic needs is declared by the statistic (`pipeline/stats`);
the weights behind the MLP hooks are in `pipeline/weights.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


def embed() -> str:
    """Token embeddings (`batch pos d_model`)."""
    return "hook_embed"


def pos_embed() -> str:
    """Learned position embeddings (GPT-2). Present but never fired on rotary (Llama) models."""
    return "hook_pos_embed"


def resid_pre(layer: int) -> str:
    """Residual stream entering block `layer` (= resid_post(layer - 1))."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """Residual stream after the attention sublayer of block `layer`, before the MLP's norm."""
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    """Residual stream leaving block `layer`."""
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    """What the attention sublayer writes to the residual stream (`batch pos d_model`)."""
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    """What the MLP writes to the residual stream (`batch pos d_model`)."""
    return f"blocks.{layer}.hook_mlp_out"


def mlp_in(layer: int) -> str:
    """The MLP's input, `batch pos d_model`: the second norm's output, weight applied."""
    return f"blocks.{layer}.mlp.hook_in"


def mlp_pre(layer: int) -> str:
    """Pre-activation, `batch pos d_mlp`: GPT-2's `x @ W_in + b_in`; for gated MLPs the GATE
    projection `x @ W_gate` (TransformerLens's convention), not the up projection."""
    return f"blocks.{layer}.mlp.hook_pre"


def mlp_pre_linear(layer: int) -> str:
    """Gated MLPs only: the up projection `x @ W_in`, `batch pos d_mlp`."""
    return f"blocks.{layer}.mlp.hook_pre_linear"


def mlp_post(layer: int) -> str:
    """The neuron activations, `batch pos d_mlp`: act(pre) for GPT-2, act(gate) * up for gated
    MLPs. This is what the down/output projection reads."""
    return f"blocks.{layer}.mlp.hook_post"


def attn_q(layer: int) -> str:
    """Queries, `batch pos head d_head` (before rotary embedding on Llama models)."""
    return f"blocks.{layer}.attn.hook_q"


def attn_k(layer: int) -> str:
    """Keys, `batch pos kv_head d_head`."""
    return f"blocks.{layer}.attn.hook_k"


def attn_v(layer: int) -> str:
    """Values, `batch pos kv_head d_head`."""
    return f"blocks.{layer}.attn.hook_v"


def attn_z(layer: int) -> str:
    """Attention-weighted values per head, `batch pos head d_head` (input to W_O)."""
    return f"blocks.{layer}.attn.hook_z"


def attn_scores(layer: int) -> str:
    """Scaled, masked attention logits, `batch head query_pos key_pos`."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def attn_pattern(layer: int) -> str:
    """Attention probabilities, `batch head query_pos key_pos` (rows sum to 1)."""
    return f"blocks.{layer}.attn.hook_pattern"


def ln_final_in() -> str:
    """Residual stream entering the final norm (= resid_post(n_layers - 1))."""
    return "ln_final.hook_in"


def ln_final_scale() -> str:
    """The final norm's per-position divisor, `batch pos 1` (std for LayerNorm, RMS for RMSNorm)."""
    return "ln_final.hook_scale"


def ln_final_out() -> str:
    """The final norm's output, weight (and bias) applied: what the unembedding reads."""
    return "ln_final.hook_out"


def unembed() -> str:
    """Logits, `batch pos d_vocab`: equal to the bridge's output."""
    return "hook_unembed"


# --- hook points: a name plus where it fires in the forward pass ---------------------------

# Order of the points within one block, as the forward pass reaches them.
STAGES = ("resid_pre", "attn_pattern", "attn_z", "attn_out", "resid_mid", "mlp_post", "mlp_out", "resid_post")
# After the last block (layer = n_layers): the final norm, then the logits.
FINAL_STAGES = ("ln_final_scale", "unembed")

_NAMES = {"resid_pre": resid_pre, "attn_pattern": attn_pattern, "attn_z": attn_z, "attn_out": attn_out,
          "resid_mid": resid_mid, "mlp_post": mlp_post, "mlp_out": mlp_out, "resid_post": resid_post}


@dataclass(frozen=True, order=True)
class HookPoint:
    """A hook a statistic asks for. Ordered as the forward pass fires them: (layer, stage index);
    the final norm and the logits have layer = n_layers. `name` is the bridge's hook name."""

    layer: int
    stage: int
    kind: str
    name: str


def point(kind: str, layer: int) -> HookPoint:
    """The hook point of `kind` (one of STAGES) in block `layer`."""
    return HookPoint(layer, STAGES.index(kind), kind, _NAMES[kind](layer))


def final_point(kind: str, n_layers: int) -> HookPoint:
    """A point after the last block: 'ln_final_scale' or 'unembed'."""
    names = {"ln_final_scale": ln_final_scale, "unembed": unembed}
    return HookPoint(n_layers, FINAL_STAGES.index(kind), kind, names[kind]())
