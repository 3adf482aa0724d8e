"""The attention-only 2-layer model trained in `trained_induction.py` really has an induction circuit.

Everything here is measured directly and by brute force, independently of the pipeline's head
statistics: attention patterns are captured through the bridge (`blocks.{l}.attn.hook_pattern`,
[batch head q k]) on held-out repeated random sequences and scored with plain loops; the
K-composition scores are computed from dense weight matrices.

The model is trained once per session (~30 s on one CPU thread) by the `induction_model` fixture;
other modules get the same model by defining the same fixture (or conftest.py can hold it).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from trained_induction import (
    EVAL_HALF,
    INDUCTION_HEAD,
    PREV_HEAD,
    repeated_texts,
    repeated_token_batch,
)

from pipeline.models import LoadedModel, load_model

N_LAYERS, N_HEADS = 2, 4


@pytest.fixture(scope="module")
def loaded(induction_model) -> LoadedModel:
    return load_model(str(induction_model.folder))


@pytest.fixture(scope="module")
def tokens(induction_model) -> torch.Tensor:
    """Held-out sequences (another seed than both training and the helper's own measurement)."""
    return repeated_token_batch(induction_model.token_ids, induction_model.bos_token_id, batch=48, seed=777)


def patterns(model: LoadedModel, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and each layer's attention pattern [batch head q k], through the bridge."""
    captured: dict[int, torch.Tensor] = {}

    def grab(layer):
        def fn(pattern, hook):
            captured[layer] = pattern.detach().clone()
        return fn

    hooks = [(f"blocks.{layer}.attn.hook_pattern", grab(layer)) for layer in range(model.n_layers)]
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits, [captured[layer] for layer in range(model.n_layers)]


def brute_force_scores(pats: list[torch.Tensor], tokens: torch.Tensor) -> tuple[list[list[float]], list[list[float]]]:
    """[layer][head] previous-token score (mean attention from q to q-1, q >= 1) and induction
    score (mean attention from each query whose token occurred before to the position right after
    that earlier occurrence), with plain loops over sequences and positions."""
    batch, seq = tokens.shape
    prev, induction = [], []
    for pattern in pats:
        n_heads = pattern.shape[1]
        p_sum, p_n, i_sum, i_n = [0.0] * n_heads, 0, [0.0] * n_heads, 0
        for b in range(batch):
            for q in range(1, seq):
                for h in range(n_heads):
                    p_sum[h] += float(pattern[b, h, q, q - 1])
                p_n += 1
                earlier = [j for j in range(1, q) if tokens[b, j] == tokens[b, q]]
                if earlier:
                    for h in range(n_heads):
                        i_sum[h] += float(pattern[b, h, q, earlier[-1] + 1])
                    i_n += 1
        prev.append([s / p_n for s in p_sum])
        induction.append([s / i_n for s in i_sum])
    return prev, induction


def ranked(scores: list[list[float]]) -> list[tuple[float, tuple[int, int]]]:
    return sorted(((s, (layer, head)) for layer, row in enumerate(scores) for head, s in enumerate(row)), reverse=True)


def half_losses(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
    """Mean next-token loss (full vocabulary) predicting the first copy, and the second copy
    after its first token (the tokens an induction circuit can predict)."""
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")
    return float(nll[:, :EVAL_HALF].mean()), float(nll[:, EVAL_HALF + 1:].mean())


# --- the model and its loading ---------------------------------------------------------------


def test_loads_through_load_model_as_attention_only_gpt2(induction_model, loaded, tokens):
    from transformers import AutoModelForCausalLM

    assert (loaded.n_layers, loaded.n_heads, loaded.d_model, loaded.d_vocab) == (N_LAYERS, N_HEADS, 64, 50257)
    assert loaded.bos_token_id == induction_model.bos_token_id == 50256
    assert loaded.facts["architecture"] == "GPT2LMHeadModel" and loaded.facts["n_ctx"] == induction_model.n_ctx
    hf = AutoModelForCausalLM.from_pretrained(induction_model.folder).eval()
    for block in hf.transformer.h:  # the zeros survived save_pretrained / from_pretrained
        for p in block.mlp.parameters():
            assert not p.any()
    # the bridge computes what the Hugging Face model computes, and its MLPs add exactly 0
    mlp_out = []
    hooks = [(f"blocks.{layer}.hook_mlp_out", lambda t, hook: mlp_out.append(t.detach().clone()))
             for layer in range(N_LAYERS)]
    with torch.no_grad():
        bridge_logits = loaded.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        hf_logits = hf(tokens).logits
    assert len(mlp_out) == N_LAYERS and all(not t.any() for t in mlp_out)
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-4, rtol=1e-4)


def test_texts_of_trained_words_tokenize_to_the_trained_ids(induction_model, loaded):
    rows = repeated_token_batch(induction_model.token_ids, induction_model.bos_token_id, batch=4)
    texts = repeated_texts(induction_model.token_ids, loaded.tokenizer, n=4)
    for row, text in zip(rows, texts, strict=True):
        assert loaded.tokenizer(text, add_special_tokens=False).input_ids == row[1:].tolist()


# --- the circuit, measured through the bridge ------------------------------------------------


def test_heads_by_brute_force_scores(induction_model, loaded, tokens):
    _, pats = patterns(loaded, tokens)
    assert [tuple(p.shape) for p in pats] == [(len(tokens), N_HEADS, tokens.shape[1], tokens.shape[1])] * N_LAYERS
    prev, induction = brute_force_scores(pats, tokens)
    by_prev, by_induction = ranked(prev), ranked(induction)
    summary = f"previous-token {prev}, induction {induction}"

    (top_i, head_i), (next_i, _) = by_induction[:2]
    assert head_i == INDUCTION_HEAD == induction_model.induction_head, summary
    assert head_i[0] == 1 and top_i > 0.5 and top_i > 2 * next_i, summary

    (top_p, head_p), (next_p, _) = by_prev[:2]
    assert head_p == PREV_HEAD == induction_model.prev_token_head, summary
    assert head_p[0] == 0 and top_p > 0.5 and top_p > 2 * next_p, summary

    # the helper's vectorized measurement (other sequences, the re-loaded HF model) agrees
    for mine, helpers in ((prev, induction_model.prev_token_scores), (induction, induction_model.induction_scores)):
        torch.testing.assert_close(torch.tensor(mine), torch.tensor(helpers), atol=0.05, rtol=0)


def test_the_circuit_predicts_the_repeat(induction_model, loaded, tokens):
    logits, _ = patterns(loaded, tokens)
    first, second = half_losses(logits, tokens)
    assert first > 4.0 and second < 1.0 and second < first / 5, (first, second)
    assert abs(first - induction_model.loss_first_half) < 0.3 and abs(second - induction_model.loss_second_half) < 0.3

    # knocking out the previous-token head (its pattern replaced by uniform causal attention)
    # breaks the induction head's keys: the repeat is no longer predicted
    layer, head = PREV_HEAD

    def uniform(pattern, hook):
        causal = torch.ones_like(pattern[0, 0]).tril()
        pattern[:, head] = causal / causal.sum(-1, keepdim=True)
        return pattern

    with torch.no_grad():
        ablated = loaded.bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", uniform)])
    _, second_ablated = half_losses(ablated, tokens)
    assert second_ablated > 3.0 and second_ablated > 5 * second, (second, second_ablated)


# --- K-composition from the weights ----------------------------------------------------------


def head_matrices(hf, fold_ln: bool) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per [layer][head], W_OV = W_V W_O and W_QK = W_Q W_K^T, both [d_model d_model], in the
    row-vector convention: a head writes x @ W_OV and scores x_q @ W_QK @ x_k^T. GPT-2's Conv1D
    stores c_attn as [d_model, 3 d_model] (q | k | v, head-major) and c_proj as [d_model, d_model].
    With `fold_ln`, each head's input layer norm (ln_1) is folded in: its scale multiplies the
    rows of W_V, W_Q and W_K, and W_OV's output is centred, since the reading layer norm
    subtracts the mean (biases, and the per-position 1/std, are left out)."""
    d = hf.config.n_embd
    dh = d // hf.config.n_head
    centre = torch.eye(d) - 1.0 / d
    ov, qk = [], []
    for block in hf.transformer.h:
        W = block.attn.c_attn.weight.detach()
        W_out = block.attn.c_proj.weight.detach()
        scale = torch.diag(block.ln_1.weight.detach()) if fold_ln else torch.eye(d)
        ov.append([]), qk.append([])
        for h in range(hf.config.n_head):
            cols = slice(h * dh, (h + 1) * dh)
            W_Q, W_K, W_V = (scale @ W[:, base:base + d][:, cols] for base in (0, d, 2 * d))
            W_O = W_out[cols, :]
            ov[-1].append(W_V @ W_O @ centre if fold_ln else W_V @ W_O)
            qk[-1].append(W_Q @ W_K.T)
    return ov, qk


def k_composition(ov: torch.Tensor, qk: torch.Tensor) -> float:
    """How much the source head's output feeds the destination head's keys: the destination
    scores x_q W_QK x_k^T with x_k = y W_OV, i.e. x_q (W_QK W_OV^T) y^T, so
    ||W_QK W_OV^T||_F / (||W_QK||_F ||W_OV||_F) (Elhage et al. 2021, "A Mathematical Framework")."""
    return float(torch.linalg.matrix_norm(qk @ ov.T) / (torch.linalg.matrix_norm(qk) * torch.linalg.matrix_norm(ov)))


@pytest.mark.parametrize("fold_ln", [False, True], ids=["raw", "ln-folded"])
def test_prev_token_and_induction_heads_are_the_top_k_composition_pair(induction_model, loaded, fold_ln):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(induction_model.folder).eval()
    # the weights read here are the ones the bridge runs
    torch.testing.assert_close(hf.transformer.h[1].attn.c_attn.weight[:, :16],
                               loaded.bridge.blocks[1].attn.W_Q[0].detach())
    ov, qk = head_matrices(hf, fold_ln)
    scores = torch.tensor([[k_composition(ov[0][src], qk[1][dst]) for dst in range(N_HEADS)] for src in range(N_HEADS)])
    src, dst = divmod(int(scores.argmax()), N_HEADS)
    others = scores.flatten().sort(descending=True).values
    summary = f"K-composition [layer-0 head, layer-1 head] ({'ln-folded' if fold_ln else 'raw'}):\n{scores}"
    assert ((0, src), (1, dst)) == (induction_model.prev_token_head, induction_model.induction_head), summary
    assert others[0] > 1.5 * others[1], summary
