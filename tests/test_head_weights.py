"""Weight-only head and neuron-circuit analyses against direct computations and planted ground truth.

Models are loaded once per module (tiny-gpt2, gpt2-random); tests that plant weights into a model
restore them (`planted`), the others plant into the folded copies only. The gpt2-random tests
run on a few layers or a slice of the vocabulary: the full analyses at GPT-2 small's size take
minutes on two cores.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from pipeline.analysis import circuits, composition, ov_qk
from pipeline.attn_weights import (
    FoldedAttention,
    FoldedMLP,
    embedding_chunks,
    fold_reading,
    folded_attention,
    folded_mlp,
    folded_unembed,
    normalise,
    norms,
)
from pipeline.models import load_model

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def tiny():
    model = load_model("tiny-gpt2")
    assert (model.n_layers, model.d_model, model.n_heads, model.d_mlp) == (2, 64, 4, 256)
    return model


@pytest.fixture(scope="module")
def gpt2r():
    model = load_model("gpt2-random")
    assert (model.n_layers, model.d_model, model.n_heads, model.d_mlp) == (12, 768, 12, 3072)
    return model


@contextlib.contextmanager
def planted(*views):
    """Restore the given live weight views on exit."""
    saved = [v.clone() for v in views]
    try:
        yield
    finally:
        for v, s in zip(views, saved, strict=True):
            v.copy_(s)


def _hf(component):
    return getattr(component, "original_component", component)


# --- an independent folding, from the modules the model runs --------------------------------


def direct_attention(model, layer: int, head: int) -> dict[str, torch.Tensor]:
    """W_Q, W_K, W_V [d_model d_head] and W_O [d_head d_model] of one head, folded by hand (float64)."""
    attn, ln = model.bridge.blocks[layer].attn, _hf(model.bridge.blocks[layer].ln1)
    P = torch.eye(model.d_model, dtype=torch.float64) - 1.0 / model.d_model  # LayerNorm's centring
    group = model.n_heads // attn.W_K.shape[0]
    w = ln.weight.double()[:, None]  # diag(w) W, row by row
    return {"W_Q": P @ (w * attn.W_Q[head].double()), "W_K": P @ (w * attn.W_K[head // group].double()),
            "W_V": P @ (w * attn.W_V[head // group].double()), "W_O": attn.W_O[head].double() @ P}


def direct_mlp(model, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_in' [d_model d_mlp], b_in' [d_mlp], W_out' [d_mlp d_model]) of one layer, folded by hand."""
    mlp, ln = _hf(model.bridge.blocks[layer].mlp), _hf(model.bridge.blocks[layer].ln2)
    P = torch.eye(model.d_model, dtype=torch.float64) - 1.0 / model.d_model
    W_in, W_out = _hf(mlp.c_fc).weight.double(), _hf(mlp.c_proj).weight.double()  # Conv1D: [in, out]
    b_in = _hf(mlp.c_fc).bias.double() + ln.bias.double() @ W_in
    return P @ (ln.weight.double()[:, None] * W_in), b_in, W_out @ P


def direct_unembed(model) -> torch.Tensor:
    """[d_model d_vocab]: diag(final norm weight) W_U, centred over the vocabulary (float64); the
    centring over d_model is left to W_O's."""
    U = _hf(model.bridge.ln_final).weight.double()[:, None] * model.bridge.W_U.double()
    return U - U.mean(1, keepdim=True)


def embedding_hat(model, ids) -> torch.Tensor:
    e = model.bridge.W_E[ids].double()
    e = e - e.mean(-1, keepdim=True)
    return e / (e.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


# --- folding --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "gpt2r"])
def test_folded_readers_reproduce_the_norm_and_projection(name, request):
    model = request.getfixturevalue(name)
    nm, attn, mlp = norms(model), folded_attention(model), folded_mlp(model)
    x = torch.randn(5, model.d_model, generator=torch.Generator().manual_seed(1)) * 3 + 0.5
    layer = model.n_layers - 1
    block = model.bridge.blocks[layer]
    xhat = normalise(x, nm.centre, nm.eps)
    q = _hf(block.ln1)(x) @ block.attn.W_Q + block.attn.b_Q[:, None]  # [head pos d_head]
    k = _hf(block.ln1)(x) @ block.attn.W_K + block.attn.b_K[:, None]
    torch.testing.assert_close(xhat @ attn.W_Q[layer] + attn.b_Q[layer][:, None], q, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(xhat @ attn.W_K[layer] + attn.b_K[layer][:, None], k, atol=2e-5, rtol=1e-4)
    pre = _hf(_hf(block.mlp).c_fc)(_hf(block.ln2)(x))  # the model's own MLP input projection
    torch.testing.assert_close(xhat @ mlp.W_in[layer] + mlp.b_in[layer], pre, atol=2e-5, rtol=1e-4)
    final = _hf(model.bridge.ln_final)
    logits = (final(x) - final.bias) @ model.bridge.W_U  # the final bias shifts every position alike
    # the folded unembedding gives the logits up to a shift of all of them (centred over the vocabulary)
    torch.testing.assert_close(xhat @ folded_unembed(model), logits - logits.mean(-1, keepdim=True),
                               atol=2e-5, rtol=1e-4)


def test_rms_folding_matches_an_rmsnorm_module():
    g = torch.Generator().manual_seed(2)
    norm = torch.nn.RMSNorm(32, eps=1e-6)
    norm.weight.copy_(torch.rand(32, generator=g) * 3)
    x, W = torch.randn(4, 32, generator=g) * 7, torch.randn(32, 8, generator=g)
    torch.testing.assert_close(normalise(x, False, 1e-6) @ fold_reading(W, norm.weight, False), norm(x) @ W)


def test_folding_does_not_touch_the_model(tiny):
    before = [p.clone() for p in tiny.bridge.parameters()]
    folded_attention(tiny).W_Q.add_(1.0)
    folded_mlp(tiny).W_in.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.bridge.parameters(), strict=True))


# --- OV circuits ----------------------------------------------------------------------------


def test_copying_score_of_hand_built_factors():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(200, 8, generator=g, dtype=torch.float64)
    B = torch.linalg.pinv(A)  # A B projects onto A's columns: eigenvalues 1 (x8) and 0
    assert float(ov_qk.copying_scores(ov_qk.low_rank_eigenvalues(A, B))) == pytest.approx(1.0, abs=1e-9)
    assert float(ov_qk.copying_scores(ov_qk.low_rank_eigenvalues(A, -B))) == pytest.approx(-1.0, abs=1e-9)
    rot = torch.zeros(8, 8, dtype=torch.float64)
    rot[0::2, 1::2], rot[1::2, 0::2] = torch.eye(4, dtype=torch.float64), -torch.eye(4, dtype=torch.float64)
    # eigenvalues +-i: a rotation neither copies nor suppresses
    assert float(ov_qk.copying_scores(ov_qk.low_rank_eigenvalues(A, rot @ B))) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", ["tiny", "gpt2r"])
def test_low_rank_eigenvalues_equal_the_dense_ones_on_a_small_vocabulary(name, request):
    model = request.getfixturevalue(name)
    attn, W_U = folded_attention(model), folded_unembed(model)
    n = 300  # the token-space circuit restricted to the first n tokens, dense: [n n]
    E = next(embedding_chunks(model, chunk=n))[1].double()
    layer, head = model.n_layers - 1, 1
    A = E @ attn.W_V_per_head()[layer, head].double()
    B = attn.W_O[layer, head].double() @ W_U[:, :n].double()
    low = ov_qk.low_rank_eigenvalues(A, B).numpy()
    dense = np.linalg.eigvals((A @ B).numpy())
    for lam in low:  # every small-matrix eigenvalue is one of the dense matrix's ...
        assert np.abs(dense - lam).min() < 1e-8 * max(1.0, abs(lam))
    big = dense[np.argsort(-np.abs(dense))[: len(low)]]  # ... and they are its largest ones
    assert np.sort(np.abs(big)) == pytest.approx(np.sort(np.abs(low)), rel=1e-6)
    dense_score = dense.real.sum() / np.abs(dense).sum()
    assert float(ov_qk.copying_scores(torch.from_numpy(low))) == pytest.approx(dense_score, abs=1e-6)


def test_vocab_pass_equals_a_direct_computation(tiny):
    attn, W_U = folded_attention(tiny), folded_unembed(tiny)
    G, diag = ov_qk.ov_vocab_pass(attn, embedding_chunks(tiny, chunk=5000), W_U)
    ids = torch.arange(tiny.d_vocab)
    E = embedding_hat(tiny, ids)
    torch.testing.assert_close(G, W_U.double() @ E, rtol=1e-4, atol=1e-3)
    for layer, head in ((0, 0), (1, 3)):
        d = direct_attention(tiny, layer, head)
        U = direct_unembed(tiny)
        direct = ((E @ d["W_V"]) * (U.T @ d["W_O"].T)).sum(-1)  # diag of E W_V W_O U, row by row
        torch.testing.assert_close(diag[:, layer, head].double(), direct, rtol=1e-4, atol=1e-5)


def test_planted_copying_head_scores_one_and_its_negative_minus_one(tiny):
    nm = norms(tiny)
    attn, W_U = folded_attention(tiny, nm), folded_unembed(tiny, nm)
    G, _ = ov_qk.ov_vocab_pass(attn, embedding_chunks(tiny, nm), W_U)  # G does not depend on the heads
    layer, head = 1, 2
    V = attn.W_V_per_head()[layer, head].double()
    # W_O = (G W_V)^+ makes W_O G W_V the identity: every eigenvalue of the token-space OV circuit
    # E W_V W_O W_U is 1 or 0 (it is a projection). Centring W_O (LayerNorm) leaves W_O G alone, as
    # G = W_U' E_hat is already centred on the left.
    copier = torch.linalg.pinv(G @ V).float()
    W_O = tiny.bridge.blocks[layer].attn.W_O
    row = layer * tiny.n_heads + head
    with planted(W_O):
        W_O[head] = copier
        scores = ov_qk.head_weight_columns(tiny, n_tokens=3)["ov_copying_score"]  # end to end
        W_O[head] = -copier
        negated = ov_qk.copying_scores(ov_qk.ov_eigenvalues(folded_attention(tiny, nm), G)).reshape(-1)
    assert scores[row] == pytest.approx(1.0, abs=1e-4)
    assert float(negated[row]) == pytest.approx(-1.0, abs=1e-4)
    assert np.all(np.abs(np.delete(scores, row)) < 0.9)
    assert np.delete(negated.numpy(), row) == pytest.approx(np.delete(scores, row), abs=1e-5)


def test_head_columns_match_the_direct_diagonal(tiny):
    cols = ov_qk.head_weight_columns(tiny, n_tokens=5)
    E = embedding_hat(tiny, torch.arange(tiny.d_vocab))
    U = direct_unembed(tiny)
    for layer, head in ((0, 1), (1, 0)):
        d = direct_attention(tiny, layer, head)
        direct = ((E @ d["W_V"]) * (U.T @ d["W_O"].T)).sum(-1)
        row = layer * tiny.n_heads + head
        assert cols["ov_copy_token_ids"][row].tolist() == direct.topk(5).indices.tolist()
        assert cols["ov_suppress_token_ids"][row].tolist() == (-direct).topk(5).indices.tolist()
        assert cols["ov_copy_tokens"][row][0] == tiny.tokenizer.decode([int(cols["ov_copy_token_ids"][row][0])])
    assert cols["layer"].tolist() == [0] * 4 + [1] * 4 and cols["head"].tolist() == [0, 1, 2, 3] * 2
    pos = cols["qk_pos_by_offset"]
    assert pos.shape == (8, 16) and np.all(pos >= 0) and np.all(pos.sum(1) <= 1 + 1e-5)


# --- QK by position -------------------------------------------------------------------------


def test_head_without_positional_preference_attends_uniformly(tiny):
    attn = folded_attention(tiny)
    attn.W_Q[0, 1] = 0.0  # a zero query scores every key alike: uniform attention over k <= q
    attn.b_Q[0, 1] = 0.0
    n_pos = 64
    pos_resid = ov_qk.positional_residuals(tiny.bridge.W_pos, tiny.bridge.W_E, norms(tiny), n_pos)
    out = ov_qk.qk_positional_attention(attn, pos_resid)
    q = np.arange(1, n_pos)  # query positions 1 .. n_pos-1; uniform over q + 1 keys
    expected = [np.where(q >= o, 1.0 / (q + 1), 0.0).mean() for o in range(16)]
    assert out[0, 1].numpy() == pytest.approx(np.array(expected), abs=1e-6)


def test_rotary_models_have_no_positional_qk_column(tiny, monkeypatch):
    monkeypatch.setattr(ov_qk, "position_embeddings", lambda model: None)
    cols = ov_qk.head_weight_columns(tiny, n_tokens=2)
    assert cols["qk_pos_by_offset"] == [None] * (tiny.n_layers * tiny.n_heads)


# --- composition ----------------------------------------------------------------------------


def test_composition_equals_transformer_lens_on_the_same_folded_weights(tiny):
    from transformer_lens.FactoredMatrix import FactoredMatrix
    from transformer_lens.utilities import composition_scores as tl_scores

    attn = folded_attention(tiny)
    ours = composition.composition_scores(composition.composition_factors(attn))
    ov = FactoredMatrix(attn.W_V_per_head(), attn.W_O)
    qk = FactoredMatrix(attn.W_Q, attn.W_K_per_head().transpose(-1, -2))
    later = torch.arange(2)[:, None, None, None] < torch.arange(2)[None, None, :, None]
    for kind, right in (("q", qk), ("k", qk.T), ("v", ov)):
        theirs = tl_scores(ov, right).expand(2, 4, 2, 4)
        torch.testing.assert_close(ours[kind][later.expand(2, 4, 2, 4)], theirs[later.expand(2, 4, 2, 4)],
                                   atol=1e-5, rtol=0)
        assert torch.isnan(ours[kind][~later.expand(2, 4, 2, 4)]).all()


def _dense_score(src: dict, dst: dict, kind: str) -> float:
    ov = src["W_V"] @ src["W_O"]
    x = {"q": dst["W_Q"] @ dst["W_K"].T, "k": dst["W_K"] @ dst["W_Q"].T, "v": dst["W_V"] @ dst["W_O"]}[kind]
    return float((ov @ x).norm() / (ov.norm() * x.norm()))


def test_composition_on_gpt2_scale_equals_dense_products(gpt2r):
    attn = folded_attention(gpt2r)
    three = FoldedAttention(*(getattr(attn, f)[:3] for f in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K")))
    scores = composition.composition_scores(composition.composition_factors(three))
    for (sl, sh, dl, dh) in ((0, 0, 1, 5), (0, 11, 2, 3), (1, 7, 2, 7)):
        src, dst = direct_attention(gpt2r, sl, sh), direct_attention(gpt2r, dl, dh)
        for kind in composition.KINDS:
            assert float(scores[kind][sl, sh, dl, dh]) == pytest.approx(_dense_score(src, dst, kind), abs=1e-5)


def test_grouped_query_heads_read_their_shared_key_value_head():
    g = torch.Generator().manual_seed(4)
    L, H, kv, d, dh = 2, 6, 2, 48, 8
    attn = FoldedAttention(W_Q=torch.randn(L, H, d, dh, generator=g), W_K=torch.randn(L, kv, d, dh, generator=g),
                           W_V=torch.randn(L, kv, d, dh, generator=g), W_O=torch.randn(L, H, dh, d, generator=g),
                           b_Q=torch.zeros(L, H, dh), b_K=torch.zeros(L, kv, dh))
    scores = composition.composition_scores(composition.composition_factors(attn))

    def head(layer, h):  # query head h reads kv head h // (H // kv)
        return {"W_Q": attn.W_Q[layer, h].double(), "W_K": attn.W_K[layer, h // 3].double(),
                "W_V": attn.W_V[layer, h // 3].double(), "W_O": attn.W_O[layer, h].double()}

    for sh, dh_ in ((0, 5), (4, 1), (2, 3)):
        for kind in composition.KINDS:
            expected = _dense_score(head(0, sh), head(1, dh_), kind)
            assert float(scores[kind][0, sh, 1, dh_]) == pytest.approx(expected, abs=1e-5)


def test_composition_table_rows_and_baseline(tiny):
    out = composition.composition_tables(tiny)
    cols, baseline = out["head_composition"], out["manifest"]["baseline"]
    assert len(cols["score"]) == 4 * 4 * 3  # layer 0 -> layer 1 only
    assert set(cols["kind"]) == {"q", "k", "v"} and np.all(cols["src_layer"] < cols["dst_layer"])
    keys = list(zip(cols["src_layer"], cols["src_head"], cols["dst_layer"], cols["dst_head"], cols["kind"],
                    strict=True))
    assert keys == sorted(keys)
    # random matrices: ||A B||_F^2 ~ ||A||_F^2 ||B||_F^2 / d_model, so the baseline is ~ 1/sqrt(d_model)
    for kind in composition.KINDS:
        assert baseline[kind] == pytest.approx(1 / np.sqrt(tiny.d_model), rel=0.05)
        assert np.all(cols["baseline"][cols["kind"] == kind] == np.float32(baseline[kind]))
    assert composition.composition_baseline(tiny) == baseline  # seeded


# --- neuron circuits ------------------------------------------------------------------------


def _rows(cols, layer, neuron, relation):
    sel = (cols["layer"] == layer) & (cols["neuron"] == neuron) & (cols["relation"] == relation)
    other_layer = np.asarray(cols["other_layer"].to_numpy(zero_copy_only=False))[sel]
    return cols["rank"][sel], other_layer, cols["other_index"][sel], cols["weight"][sel]


@pytest.fixture(scope="module")
def tiny_circuits(tiny):
    return circuits.neuron_circuit_tables(tiny, n=5)["neuron_circuits"]


def test_circuit_weights_equal_a_direct_computation(tiny, tiny_circuits):
    cols = tiny_circuits
    (_, _, W_out0), (W_in1, b_in1, _) = direct_mlp(tiny, 0), direct_mlp(tiny, 1)
    # upstream / downstream neurons: the rank-0 row is the brute-force largest |virtual weight|
    virtual = W_out0 @ W_in1  # [neuron in layer 0, neuron in layer 1]
    for n in (3, 200):
        rank, other_layer, other, w = _rows(cols, 1, n, "upstream_neuron")
        assert rank.tolist() == list(range(5)) and set(other_layer.tolist()) == {0}
        assert other.tolist() == virtual[:, n].abs().topk(5).indices.tolist()
        assert w == pytest.approx(virtual[other, n].numpy(), abs=1e-6)
        _, _, other, w = _rows(cols, 0, n, "downstream_neuron")
        assert other.tolist() == virtual[n].abs().topk(5).indices.tolist()
        assert w == pytest.approx(virtual[n, other].numpy(), abs=1e-6)
    # input tokens: the pre-activation of the normalised embedding
    _, other_layer, ids, w = _rows(cols, 1, 17, "input_token")
    pre = embedding_hat(tiny, torch.arange(tiny.d_vocab)) @ W_in1[:, 17] + b_in1[17]
    assert ids.tolist() == pre.topk(5).indices.tolist() and w == pytest.approx(pre[ids].numpy(), abs=1e-5)
    assert np.all(np.isnan(other_layer))  # nulls
    assert cols["other_index"].dtype == np.int32
    # heads: ||W_V W_O w_in|| upstream, ||w_out [W_QK | W_KQ | W_OV]|| downstream
    _, other_layer, heads, w = _rows(cols, 1, 9, "upstream_head")
    for hl, h, weight in zip(other_layer, heads, w, strict=True):
        d = direct_attention(tiny, int(hl), int(h))
        assert weight == pytest.approx(float((d["W_V"] @ d["W_O"] @ W_in1[:, 9]).norm()), rel=1e-4)
    _, other_layer, heads, w = _rows(cols, 0, 9, "downstream_head")
    u = W_out0[9]
    direct = []
    for h in range(4):
        d = direct_attention(tiny, 1, h)
        parts = (u @ d["W_Q"] @ d["W_K"].T, u @ d["W_K"] @ d["W_Q"].T, u @ d["W_V"] @ d["W_O"])
        direct.append(float(sum(p.pow(2).sum() for p in parts).sqrt()))
    assert heads.tolist() == np.argsort(direct)[::-1][:4].tolist() and set(other_layer.tolist()) == {1}
    assert w == pytest.approx(np.sort(direct)[::-1][:4], rel=1e-4)


def test_circuit_rows_are_in_table_order(tiny, tiny_circuits):
    from store.schema import NEURON_CIRCUITS

    cols = tiny_circuits
    assert set(cols) == set(NEURON_CIRCUITS.column_names)
    rel = np.unique(cols["relation"], return_inverse=True)[1]
    order = np.lexsort((cols["rank"], rel, cols["neuron"], cols["layer"]))
    assert np.array_equal(order, np.arange(len(order)))
    is_token = cols["relation"] == "input_token"
    assert cols["other_layer"].null_count == is_token.sum()
    assert all(t is None for t in cols["other_token"][~is_token])
    assert all(isinstance(t, str) for t in cols["other_token"][is_token])
    # layer 0 has no upstream neurons, layer 1 (the last) no downstream ones; 4 heads per layer
    per = {(int(la), r): int(((cols["layer"] == la) & (cols["relation"] == r)).sum() // tiny.d_mlp)
           for la in (0, 1) for r in circuits.RELATIONS}
    assert per == {(0, "downstream_head"): 4, (0, "downstream_neuron"): 5, (0, "input_token"): 5,
                   (0, "upstream_head"): 4, (0, "upstream_neuron"): 0, (1, "downstream_head"): 0,
                   (1, "downstream_neuron"): 0, (1, "input_token"): 5, (1, "upstream_head"): 5,
                   (1, "upstream_neuron"): 5}


def test_planted_upstream_neuron_ranks_first(tiny):
    src, dst = 40, 123
    W_in1, _, _ = direct_mlp(tiny, 1)
    W_out0 = _hf(_hf(tiny.bridge.blocks[0].mlp).c_proj).weight  # live [d_mlp, d_model]
    with planted(W_out0):
        W_out0[src] = W_in1[:, dst].float() / W_in1[:, dst].norm().float() * 3 * W_out0.norm(dim=1).max()
        cols = circuits.neuron_circuit_tables(tiny, n=3)["neuron_circuits"]
    _, other_layer, other, w = _rows(cols, 1, dst, "upstream_neuron")
    assert (int(other_layer[0]), int(other[0])) == (0, src) and w[0] > 0
    _, other_layer, other, _ = _rows(cols, 0, src, "downstream_neuron")
    assert (int(other_layer[0]), int(other[0])) == (1, dst)


def test_planted_neuron_pair_at_gpt2_scale(gpt2r):
    mlp = folded_mlp(gpt2r)
    # GPT-2 small's d_model, 3 layers of 1024 of its neurons each: the full pass would take a minute
    part = FoldedMLP(W_in=mlp.W_in[:3, :, :1024].clone(), b_in=mlp.b_in[:3, :1024],
                     W_out=mlp.W_out[:3, :1024].clone())
    src, dst = 1000, 500  # neuron 1000 of layer 0 writes what neuron 500 of layer 2 reads, negated
    w_dst = part.W_in[2][:, dst]
    part.W_out[0, src] = -w_dst / w_dst.norm() * 3 * part.W_out[0].norm(dim=1).max()
    (up_w, up_i), (down_w, down_i) = circuits.neuron_to_neuron(part, n=4)
    d_mlp = part.d_mlp
    assert int(up_i[2 * d_mlp + dst, 0]) == src and float(up_w[2 * d_mlp + dst, 0]) < 0  # signed
    assert int(down_i[src, 0]) == 2 * d_mlp + dst
    # neuron 7 of layer 2: its upstream top-4 is the brute-force top-4 over layers 0 and 1
    brute = torch.cat([part.W_out[0].double() @ part.W_in[2][:, 7].double(),
                       part.W_out[1].double() @ part.W_in[2][:, 7].double()])
    assert up_i[2 * d_mlp + 7].tolist() == brute.abs().topk(4).indices.tolist()
    assert up_w[2 * d_mlp + 7].double().numpy() == pytest.approx(brute[up_i[2 * d_mlp + 7]].numpy(), abs=1e-5)
    assert torch.all(up_i[:d_mlp] == -1) and torch.all(down_i[2 * d_mlp :] == -1)


@pytest.mark.parametrize("by_abs", [False, True])
def test_running_top_equals_a_brute_force_sort(by_abs):
    g = torch.Generator().manual_seed(5)
    values = torch.randn(6, 50, generator=g)
    top = circuits.Top(6, 4, by_abs=by_abs, device="cpu")
    for lo in range(0, 50, 7):  # candidates in blocks, rows 2 .. 5 see the first block only
        top.add(values[:, lo : lo + 7] if lo else values[2:, :7], offset=lo, rows=slice(None) if lo else slice(2, 6))
    top.add(values[:2, :7], offset=0, rows=slice(0, 2))
    w, i = top.result()
    key = values.abs() if by_abs else values
    assert i.tolist() == key.topk(4, dim=1).indices.tolist()
    assert torch.equal(w, values.gather(1, i))
    empty = circuits.Top(3, 5, by_abs=by_abs, device="cpu")
    empty.add(values[:3, :2], offset=10)  # fewer candidates than places: NaN / -1 after them
    w, i = empty.result()
    assert (i[:, 2:] == -1).all() and torch.isnan(w[:, 2:]).all() and (i[:, :2] >= 10).all()
