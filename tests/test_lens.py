"""The logit lens (`pipeline/stats/lens.py`, `lens_maths.py`) against direct computations.

Brute force: the residual states, every `hook_z` and the logits are captured with plain hooks on
real wiki-vital windows (tiny-gpt2, LayerNorm; one smollm2 window for RMSNorm), and each decoded
distribution is recomputed through the model's OWN final-norm module and unembedding; the
statistic itself runs inside the real harvest. Planted: residual states along one direction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import hooks
from pipeline.attn_weights import _hf
from pipeline.corpus import iter_documents
from pipeline.harvest import Harvest
from pipeline.models import load_model
from pipeline.stats import StatsConfig
from pipeline.stats.keys import position_hash
from pipeline.stats.lens import SPAN, LogitLens
from pipeline.stats.lens_maths import Unembed, first_component, lens_position, pca_position, site_of, writer_of
from pipeline.windows import iter_windows

SEQ_LEN, BATCH, N_BATCHES = 32, 4, 3


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2")


def windows(model, batch: int, n_tokens: int = SEQ_LEN * BATCH * N_BATCHES):
    return list(iter_windows(iter_documents("wiki-vital"), model.tokenizer, model.bos_token_id, SEQ_LEN,
                             n_tokens, batch))


@torch.no_grad()
def capture(model, token_ids: np.ndarray) -> dict:
    """Every residual state in depth order `[b pos D d_model]`, every hook_z `[b pos layer head d_head]`
    and the logits `[b pos vocab]`, from one plain forward with hooks."""
    got: dict = {}

    def grab(key):
        def fn(t, hook):
            got[key] = t.detach().float().clone()
        return fn

    L = model.n_layers
    names = [(("pre", layer), hooks.resid_pre(layer)) for layer in range(L)]
    names += [(("mid", layer), hooks.resid_mid(layer)) for layer in range(L)]
    names += [(("z", layer), hooks.attn_z(layer)) for layer in range(L)] + [(("post",), hooks.resid_post(L - 1))]
    logits = model.bridge.run_with_hooks(torch.from_numpy(token_ids).long(),
                                         fwd_hooks=[(name, grab(key)) for key, name in names])
    order = [got[("pre", layer)] if d % 2 == 0 else got[("mid", layer)] for layer in range(L) for d in (0, 1)]
    states = torch.stack([*order, got[("post",)]], dim=2)
    z = torch.stack([got[("z", layer)] for layer in range(L)], dim=2)
    return {"states": states, "z": z, "logits": logits.float()}


def run_lens(model, batches, shift: int, k: int = 5) -> dict:
    harvest = Harvest(model, StatsConfig(seq_len=SEQ_LEN, lens_sample_shift=shift, lens_top_k=k),
                      statistics=[LogitLens.create])
    for b in batches:
        harvest.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0)
    (tables,) = harvest.finalize()
    return tables


@pytest.fixture(scope="module")
def every_position(tiny):
    """The lens at every position of three batches, and the same batches captured by plain hooks."""
    batches = windows(tiny, BATCH)
    assert len(batches) == N_BATCHES
    return batches, run_lens(tiny, batches, shift=0), [capture(tiny, b.token_ids) for b in batches]


def direct_decode(model, states: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of `states [... d_model]` through the model's own final norm module (which
    computes each state's own scale) and the unembedding, as plain torch."""
    final_norm = _hf(model.bridge.ln_final)
    with torch.no_grad():
        logits = final_norm(states) @ model.bridge.W_U.float()
        b_U = getattr(model.bridge, "b_U", None)
        if b_U is not None:
            logits = logits + b_U.float()
    return torch.log_softmax(logits, dim=-1)


def flat_rows(batches, captured):
    """(global position, states [D d], z, logits, next id or -1) of every non-BOS position."""
    for b, cap in zip(batches, captured, strict=True):
        for i in range(b.token_ids.shape[0]):
            for p in range(SEQ_LEN):
                if b.doc_ids[i, p] < 0:
                    continue
                nxt = int(b.token_ids[i, p + 1]) if p + 1 < SEQ_LEN else -1
                yield (int(b.seq_ids[i]) * SEQ_LEN + p, cap["states"][i, p], cap["z"][i, p], cap["logits"][i, p], nxt)


# --- sampling -------------------------------------------------------------------------------------


def test_sampled_positions_are_whole_spans_chosen_by_their_hash(tiny):
    batches = windows(tiny, BATCH, SEQ_LEN * BATCH * 8)
    tables = run_lens(tiny, batches, shift=2, k=2)
    got = set((tables["lens_positions"]["seq_id"].astype(int) * SEQ_LEN + tables["lens_positions"]["pos"]).tolist())
    want = set()
    for b in batches:
        for i in range(b.token_ids.shape[0]):
            for p in range(SEQ_LEN):
                g = int(b.seq_ids[i]) * SEQ_LEN + p
                if b.doc_ids[i, p] >= 0 and int(position_hash(torch.tensor([g // SPAN]))[0]) % 4 == 0:
                    want.add(g)
    assert got == want and 0 < len(got) < sum(b.token_ids.size for b in batches) / 2


def test_sample_and_values_do_not_depend_on_batching_and_halves_merge_to_one_pass(tiny):
    n = SEQ_LEN * 16
    one = run_lens(tiny, windows(tiny, 4, n), shift=1, k=3)
    two = run_lens(tiny, windows(tiny, 2, n), shift=1, k=3)
    for col in ("seq_id", "pos", "token_id"):
        assert np.array_equal(one["lens_positions"][col], two["lens_positions"][col])
    np.testing.assert_allclose(one["logit_lens"]["kl_to_final"], two["logit_lens"]["kl_to_final"],
                               rtol=1e-3, atol=1e-5)
    # two halves (split at a batch boundary: a model's floats may differ between batch shapes) merged
    batches = windows(tiny, 4, n)
    halves = []
    for part in (batches[:2], batches[2:]):
        h = Harvest(tiny, StatsConfig(seq_len=SEQ_LEN, lens_sample_shift=1, lens_top_k=3),
                    statistics=[LogitLens.create])
        for b in part:
            h.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0)
        halves.append(h)
    halves[1].merge(halves[0])  # in the "wrong" order: finalize sorts by position
    (merged,) = halves[1].finalize()
    for table, cols in one.items():
        for col, values in cols.items():
            a, b = np.asarray(values, dtype=object), np.asarray(merged[table][col], dtype=object)
            assert a.shape == b.shape and all(
                x == y or (isinstance(x, float) and np.isnan(x) and np.isnan(y)) or np.array_equal(x, y)
                for x, y in zip(a.ravel() if a.ndim else [a], b.ravel() if b.ndim else [b], strict=True)), (table, col)


# --- against brute force --------------------------------------------------------------------------


def test_every_depth_equals_a_direct_decode_through_the_models_final_norm(tiny, every_position):
    batches, tables, captured = every_position
    lens = tables["logit_lens"]
    D = 2 * tiny.n_layers + 1
    rows = list(flat_rows(batches, captured))
    assert len(rows) * D == len(lens["depth"])
    top_ids = lens["top_token_ids"].reshape(len(rows), D, -1)
    top_probs = lens["top_probs"].reshape(len(rows), D, -1)
    kl, ent = lens["kl_to_final"].reshape(-1, D), lens["entropy_nats"].reshape(-1, D)
    true_prob = lens["true_prob"].reshape(-1, D)
    true_rank = np.asarray(lens["true_rank"].to_numpy(zero_copy_only=False), dtype=float).reshape(-1, D)
    for i, (_, states, _, logits, nxt) in enumerate(rows):
        logp = direct_decode(tiny, states).double()  # [D vocab]
        p = logp.exp()
        want_top = logp.topk(5, dim=-1)
        np.testing.assert_allclose(top_probs[i], want_top.values.exp().numpy(), rtol=1e-4, atol=1e-7)
        assert np.array_equal(top_ids[i][:, 0], want_top.indices[:, 0].numpy())
        np.testing.assert_allclose(kl[i], (p[-1] * (logp[-1] - logp)).sum(-1).numpy(), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ent[i], -(p * logp).sum(-1).numpy(), rtol=1e-4, atol=1e-6)
        # the last depth is the model's own output
        np.testing.assert_allclose(logp[-1].exp().numpy(), torch.softmax(logits.double(), -1).numpy(), atol=1e-6)
        if nxt >= 0:
            np.testing.assert_allclose(true_prob[i], p[:, nxt].numpy(), rtol=1e-4, atol=1e-8)
            # the rank counts the tokens above it: those within float32 rounding may go either way
            gap = logp - logp[:, nxt : nxt + 1]
            assert ((gap > 1e-5).sum(-1).numpy() <= true_rank[i]).all()
            assert (true_rank[i] <= (gap > -1e-5).sum(-1).numpy() - 1).all()
        else:
            assert np.isnan(true_prob[i]).all() and np.isnan(true_rank[i]).all()
    assert kl[:, -1].max() <= 1e-6 and lens["top1_agrees"].reshape(-1, D)[:, -1].all()


def test_each_depth_uses_its_own_norm_scale(tiny, every_position):
    """Decoding an early state with the final state's scale (the bug of other tools) gives another
    distribution: the lens must not."""
    batches, tables, captured = every_position
    _, states, _, _, _ = next(flat_rows(batches, captured))
    U = Unembed.of(tiny)
    own = torch.log_softmax(U.logits(states[0]), -1)
    frozen = torch.log_softmax((U.project(states[0]) / U.scale(states[-1]) * U.w + U.b) @ U.W_U + U.b_U, -1)
    assert (own - frozen).abs().max() > 1e-2
    np.testing.assert_allclose(own.numpy(), direct_decode(tiny, states[0]).numpy(), atol=1e-5)


def test_direct_logit_attributions_sum_to_the_final_logit(tiny, every_position):
    batches, tables, captured = every_position
    U = Unembed.of(tiny)
    b_O = torch.stack([blk.attn.b_O.detach().float() for blk in tiny.bridge.blocks])  # [layer d_model]
    sums, n = np.zeros(2 * tiny.n_layers + 1), 0
    checked = 0
    for _, states, z, logits, nxt in flat_rows(batches, captured):
        if nxt < 0:
            continue
        lp = lens_position(U, states, z, nxt, k=3)
        const = float(U.b @ U.W_U[:, nxt] + U.b_U[nxt])
        logit = float(logits[nxt])
        assert abs(float(lp.write_dla.double().sum()) + const - logit) < 1e-3 * (1 + abs(logit))
        # heads plus b_O's term = the attention layer's term (depth 2l + 1)
        v = U.project(U.w * U.W_U[:, nxt])
        bias_term = (b_O @ v) / U.scale(states[-1])
        np.testing.assert_allclose((lp.head_dla.sum(1) + bias_term).numpy(), lp.write_dla[1::2].numpy(),
                                   rtol=1e-4, atol=1e-5)
        sums += lp.write_dla.double().numpy()
        n += 1
        checked += 1
    assert checked > 50
    np.testing.assert_allclose(tables["layer_stats"]["write_dla_mean"], (sums / n).astype(np.float32), rtol=1e-4,
                               atol=1e-6)
    heads = tables["heads"]
    assert len(heads["dla_mean"]) == tiny.n_layers * tiny.n_heads and np.isfinite(heads["dla_mean"]).all()


def test_pca_share_equals_numpys_svd(tiny, every_position):
    batches, tables, captured = every_position
    pos = tables["lens_positions"]
    for i, (_, states, _, _, _) in enumerate(flat_rows(batches, captured)):
        X = states[0::2].double().numpy()  # block boundaries: the embedding and every block's output
        for Y, col in ((X, "pca_share"), (X / np.linalg.norm(X, axis=1, keepdims=True), "pca_share_normalized")):
            s = np.linalg.svd(Y - Y.mean(0), compute_uv=False)
            np.testing.assert_allclose(pos[col][i], s[0] ** 2 / (s**2).sum(), rtol=1e-5)


def test_planted_states_along_one_direction_give_share_one(tiny):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(tiny.d_model, generator=g, dtype=torch.float64)
    u /= u.norm()
    X = torch.tensor([0.5, 1.0, 3.0, 7.0, 20.0], dtype=torch.float64)[:, None] * u
    share, v = first_component(X)
    assert abs(float(share) - 1.0) < 1e-12 and abs(float(v @ u) - 1.0) < 1e-12  # signed toward the last state
    # planted: the direction is the final state's top-1 token's unembedding (norm folded): it matches
    U = Unembed.of(tiny)
    t = 123
    direction = U.project(U.W_U[:, t] * U.w)  # raises token t most of all
    states = torch.tensor([1.0, 2.0, 4.0])[:, None] * direction
    pca, top = pca_position(U, states, torch.tensor(t))
    assert abs(float(pca[0]) - 1.0) < 1e-6 and bool(pca[1]) and int(top[0]) == t


def test_layer_stats_are_the_means_of_the_rows(tiny, every_position):
    _, tables, _ = every_position
    lens, stats = tables["logit_lens"], tables["layer_stats"]
    D = 2 * tiny.n_layers + 1
    np.testing.assert_allclose(stats["kl_to_final_mean"], lens["kl_to_final"].reshape(-1, D).astype(float).mean(0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["top1_agreement"], lens["top1_agrees"].reshape(-1, D).mean(0), rtol=1e-6)
    has_next = ~np.isnan(lens["true_prob"].reshape(-1, D)[:, 0])
    rank0 = np.asarray(lens["true_rank"].to_numpy(zero_copy_only=False), dtype=float).reshape(-1, D)[has_next] == 0
    np.testing.assert_allclose(stats["next_token_accuracy"], rank0.mean(0), rtol=1e-6)
    loss = -np.log(lens["true_prob"].reshape(-1, D)[has_next].astype(float)).mean(0)
    np.testing.assert_allclose(stats["next_token_loss"], loss, rtol=1e-4)
    assert list(stats["writer"]) == [writer_of(d)[0] for d in range(D)]
    assert [site_of(d, tiny.n_layers) for d in (0, 1, 2, D - 1)] == [
        (0, "resid_pre"), (0, "resid_mid"), (1, "resid_pre"), (tiny.n_layers - 1, "resid_post")]
    share = stats["write_share"]
    assert np.isnan(share[0]) and np.allclose(share[1::2] + share[2::2], 1.0)


@pytest.mark.slow
def test_rmsnorm_model_decodes_and_attributes_exactly():
    """smollm2 (RMSNorm, no biases, grouped-query attention): a few positions of one window."""
    model = load_model("smollm2-135m")
    (b,) = list(iter_windows(iter_documents("wiki-vital"), model.tokenizer, model.bos_token_id, 24, 24, 1))
    cap = capture(model, b.token_ids)
    U = Unembed.of(model)
    assert not U.centre and U.b is None
    for p in (3, 11, 20):
        states, z, logits = cap["states"][0, p], cap["z"][0, p], cap["logits"][0, p]
        nxt = int(b.token_ids[0, p + 1])
        lp = lens_position(U, states, z, nxt, k=5)
        logp = direct_decode(model, states)
        np.testing.assert_allclose(lp.top_probs.numpy(), logp.topk(5, -1).values.exp().numpy(), rtol=1e-3, atol=1e-6)
        assert int(lp.top_ids[-1, 0]) == int(logits.argmax())
        assert abs(float(lp.write_dla.double().sum()) - float(logits[nxt])) < 2e-3 * (1 + abs(float(logits[nxt])))
        np.testing.assert_allclose(lp.head_dla.sum(1).numpy(), lp.write_dla[1::2].numpy(), rtol=1e-3, atol=1e-3)
