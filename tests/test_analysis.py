"""Weight-only analyses against planted ground truth, on real (seeded) models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.analysis import neuron_weight_columns
from pipeline.analysis.deletion import deletion_cosines
from pipeline.analysis.key_value import value_logits, value_tokens
from pipeline.models import load_model
from pipeline.weights import neuron_weights


@pytest.fixture(params=["tiny-gpt2", "gpt2-random"])
def model(request):
    return load_model(request.param)  # a fresh copy: tests write into its weights


def test_planted_deletion_neuron_ranks_first(model):
    w = neuron_weights(model)
    layer, neuron = model.n_layers - 1, 17
    with torch.no_grad():
        w.W_out[layer][neuron] = -w.W_in[layer][:, neuron]
    cos = deletion_cosines(neuron_weights(model))
    assert int(np.argmin(cos)) == layer * model.d_mlp + neuron
    assert cos.min() == pytest.approx(-1.0, abs=1e-5)
    assert np.all(cos[np.arange(cos.size) != layer * model.d_mlp + neuron] > -0.9)


def test_deletion_cosine_equals_direct_computation(model):
    w = neuron_weights(model)
    cos = deletion_cosines(w)
    for layer in range(model.n_layers):
        for n in (0, 5, model.d_mlp - 1):
            a, b = w.W_in[layer][:, n].double(), w.W_out[layer][n].double()
            assert cos[layer * model.d_mlp + n] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5)


def test_neuron_writing_a_tokens_unembedding_has_it_first(model):
    w = neuron_weights(model)
    token = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    neuron = 3
    with torch.no_grad():
        w.W_out[0][neuron] = w.W_U[:, token] * 5
    # layer 0 only: the full key-value pass over GPT-2 small takes ~30 s
    top_ids, top_logits, _, bottom_logits = value_tokens(
        replace(w, W_in=w.W_in[:1], W_out=w.W_out[:1]), centre=True)
    assert int(top_ids[neuron][0]) == token
    assert np.all(np.diff(top_logits[neuron]) <= 0) and np.all(np.diff(bottom_logits[neuron]) >= 0)


def test_weight_columns_name_the_value_tokens():
    model = load_model("tiny-gpt2")
    w = neuron_weights(model)
    token = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        w.W_out[1][7] = w.W_U[:, token] * 5
    cols = neuron_weight_columns(model)
    row = model.d_mlp + 7
    assert int(cols["kv_top_token_ids"][row][0]) == token and cols["kv_top_tokens"][row][0] == " Paris"
    assert len(cols["deletion_cos"]) == len(cols["kv_bottom_tokens"]) == model.n_layers * model.d_mlp


def test_value_logits_follow_the_final_layernorm():
    v = torch.tensor([[1.0, 2.0, 3.0]])
    W_U = torch.eye(3)
    scale = torch.tensor([1.0, 10.0, 1.0])
    # centred (LayerNorm subtracts the mean) then scaled
    assert value_logits(v, W_U, scale, centre=True).tolist() == [[-1.0, 0.0, 1.0]]
    assert value_logits(v, W_U, scale, centre=False).tolist() == [[1.0, 20.0, 3.0]]


def test_planted_twin_is_the_nearest_neighbour(model):
    from pipeline.analysis.neighbours import output_neighbours

    w = neuron_weights(model)
    a, b = 11, 40
    with torch.no_grad():
        w.W_out[0][b] = 3 * w.W_out[0][a]
    ids, cos = output_neighbours(replace(w, W_out=w.W_out[:1]))
    assert ids.shape == (model.d_mlp, 10)
    assert ids[a][0] == b and ids[b][0] == a and cos[a][0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(cos, axis=1) <= 0) and not np.any(ids == np.arange(model.d_mlp)[:, None])
    # independent check on one neuron
    unit = torch.nn.functional.normalize(w.W_out[0].double(), dim=1)
    sims = (unit @ unit[5]).numpy()
    sims[5] = -np.inf
    assert list(ids[5]) == list(np.argsort(-sims, kind="stable")[:10])
