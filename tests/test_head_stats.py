"""Head attention-pattern statistics (`pipeline/stats/heads.py`) and the repeated-random-tokens
probe (`pipeline/analysis/induction_probe.py`), against planted patterns and brute force.

Planted: hand-set patterns on hand-made token ids whose scores are known exactly. Brute force:
every score and every top example recomputed with plain loops over query rows from
`attn.hook_pattern` captured with `run_with_hooks` on real wiki-vital windows (tiny-gpt2), while
the statistic itself runs inside the real harvest.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from pipeline import hooks
from pipeline.analysis.induction_probe import SCORES, random_repeat_scores, repeat_scores, repeated_random_tokens
from pipeline.corpus import iter_documents
from pipeline.harvest import Harvest
from pipeline.models import load_model
from pipeline.stats import StatsConfig
from pipeline.stats.batch import LayerActs, TokenBatch
from pipeline.stats.contract import StatContext, Statistic
from pipeline.stats.deferred import TokenWindows
from pipeline.stats.head_scores import N_OFFSETS, batch_scores
from pipeline.stats.heads import HeadPatterns
from pipeline.windows import iter_windows
from store import schema

SCORE_COLUMNS = ("prev_token_score", "self_score", "bos_score", "duplicate_score", "induction_score",
                 "entropy_nats", "attn_distance_tokens", "attn_by_offset")


def feed(stat: HeadPatterns, batches, layers=None) -> HeadPatterns:
    """Hand captured batches (first_seq, token_ids [b pos], is_bos [b pos], patterns [layer b head q k])
    to a statistic, as the harvest does: one TokenBatch per batch, one update per layer."""
    for first_seq, tokens, is_bos, patterns in batches:
        batch = TokenBatch.build(first_seq, is_bos, token_ids=tokens)
        for layer in layers or range(patterns.shape[0]):
            stat.update(LayerActs(layer, patterns[layer].contiguous(), batch, hooks.point("attn_pattern", layer)))
    return stat


def one_layer(tokens: list[list[int]], bos: list[list[int]], pattern: torch.Tensor, top_k: int = 3):
    """Finalized tables of a 1-layer statistic fed one planted batch."""
    tokens_t = torch.tensor(tokens)
    is_bos = torch.zeros(tokens_t.shape, dtype=torch.bool)
    for b, where in enumerate(bos):
        is_bos[b, where] = True
    stat = HeadPatterns(1, pattern.shape[1], tokens_t.shape[1], top_k)
    return feed(stat, [(0, tokens_t, is_bos, pattern[None])]).finalize()


def attend(shape, targets) -> torch.Tensor:
    """A pattern [batch head q k] that puts all of each row's attention on targets(b, h, q)."""
    pattern = torch.zeros(shape)
    n_seqs, n_heads, seq_len, _ = shape
    for b in range(n_seqs):
        for h in range(n_heads):
            for q in range(seq_len):
                pattern[b, h, q, targets(b, h, q)] = 1.0
    return pattern


# --- planted patterns -----------------------------------------------------------------------------


def test_planted_previous_token_and_self_heads_score_exactly():
    # two windows of distinct tokens (no repeats), a document separator at position 5 of the first
    tokens = [[0, 11, 12, 13, 14, 0, 15, 16, 17, 18], [0, 21, 22, 23, 24, 25, 26, 27, 28, 29]]
    bos = [[0, 5], [0]]
    # head 0 attends to the previous position, head 1 to itself
    pattern = attend((2, 2, 10, 10), lambda b, h, q: max(q - 1, 0) if h == 0 else q)
    heads = one_layer(tokens, bos, pattern)["heads"]
    assert list(heads["count"]) == [17, 17] and list(heads["repeat_count"]) == [0, 0]
    prev, self_ = 0, 1
    assert heads["prev_token_score"][prev] == 1.0 and heads["self_score"][prev] == 0.0
    assert heads["attn_distance_tokens"][prev] == 1.0 and heads["entropy_nats"][prev] == 0.0
    # rows right after a BOS (positions 1 and 6 of window 0, 1 of window 1) attend to a BOS
    assert heads["bos_score"][prev] == np.float32(3 / 17)
    assert list(heads["attn_by_offset"][prev]) == [0.0, 1.0] + [0.0] * (N_OFFSETS - 2)
    assert heads["self_score"][self_] == 1.0 and heads["prev_token_score"][self_] == 0.0
    assert heads["attn_distance_tokens"][self_] == 0.0 and heads["bos_score"][self_] == 0.0
    # no query repeats a token: duplicate and induction are null
    assert np.isnan(heads["duplicate_score"]).all() and np.isnan(heads["induction_score"]).all()


def test_top_examples_break_ties_by_earlier_position_and_key():
    tokens = [[0, 11, 12, 13, 14, 0, 15, 16, 17, 18], [0, 21, 22, 23, 24, 25, 26, 27, 28, 29]]
    pattern = attend((2, 2, 10, 10), lambda b, h, q: max(q - 1, 0) if h == 0 else q)
    pattern[1, 1, 9] = 0.0
    pattern[1, 1, 9, [0, 3, 7]] = torch.tensor([0.2, 0.4, 0.4])  # a row split evenly between keys 3 and 7
    ex = one_layer(tokens, [[0, 5], [0]], pattern, top_k=3)["head_examples"]
    rows = list(zip(ex["head"].tolist(), ex["rank"].tolist(), ex["seq_id"].tolist(), ex["pos"].tolist(),
                    ex["src_pos"].tolist(), ex["attention"].tolist(), strict=True))
    # every row of both heads attends 1.0 to a non-BOS key, except after a BOS: the earliest win
    assert rows == [(0, 0, 0, 2, 1, 1.0), (0, 1, 0, 3, 2, 1.0), (0, 2, 0, 4, 3, 1.0),
                    (1, 0, 0, 1, 1, 1.0), (1, 1, 0, 2, 2, 1.0), (1, 2, 0, 3, 3, 1.0)]
    ex = one_layer(tokens[1:], [[0]], pattern[1:, 1:], top_k=20)["head_examples"]
    (i,) = np.flatnonzero(ex["pos"] == 9)
    assert (ex["src_pos"][i], ex["attention"][i]) == (3, np.float32(0.4))
    assert ex["rank"][i] == len(ex["rank"]) - 1  # the weakest of the window's rows


def test_planted_induction_and_duplicate_heads_score_exactly():
    # BOS, five distinct tokens, the same five again, one more distinct token
    tokens = [[0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 9]]
    first = {t: i for i, t in reversed(list(enumerate(tokens[0])))}

    def targets(b, h, q):
        earlier = first[tokens[0][q]]
        if q == 0 or earlier == q:
            return 0  # not a repeat: attend to BOS
        return earlier + 1 if h == 0 else earlier  # head 0 induction, head 1 duplicate

    heads = one_layer(tokens, [[0]], attend((1, 2, 12, 12), targets))["heads"]
    assert list(heads["repeat_count"]) == [5, 5]
    induction, duplicate = 0, 1
    assert heads["induction_score"][induction] == 1.0 and heads["duplicate_score"][induction] == 0.0
    assert heads["duplicate_score"][duplicate] == 1.0 and heads["induction_score"][duplicate] == 0.0
    assert heads["bos_score"][induction] == np.float32(6 / 11)


def test_induction_target_may_be_the_query_and_never_a_bos():
    # "7 7": the position after the earlier 7 is the query itself; "5 <sep> 5": it is a BOS
    tokens = [[0, 7, 7, 8], [0, 5, 0, 5]]
    pattern = attend((2, 1, 4, 4), lambda b, h, q: q if b == 0 else (2 if q == 3 else 0))
    heads = one_layer(tokens, [[0], [0, 2]], pattern)["heads"]
    assert heads["repeat_count"][0] == 2  # window 0 position 2, window 1 position 3
    # window 0's repeat row attends to itself (its induction target), window 1's to the separator
    assert heads["induction_score"][0] == 0.5
    assert heads["duplicate_score"][0] == 0.0


def test_batch_scores_equal_the_statistic_on_one_batch():
    g = torch.Generator().manual_seed(1)
    pattern = torch.rand(3, 2, 9, 9, generator=g).tril()
    pattern /= pattern.sum(-1, keepdim=True)
    tokens = torch.randint(0, 4, (3, 9), generator=g)
    is_bos = torch.zeros(3, 9, dtype=torch.bool)
    is_bos[:, 0] = is_bos[1, 4] = True
    direct = batch_scores(pattern, is_bos, tokens)
    heads = feed(HeadPatterns(1, 2, 9, 2), [(0, tokens, is_bos, pattern[None])]).finalize()["heads"]
    for name in SCORE_COLUMNS:
        np.testing.assert_allclose(heads[name], direct[name].float().numpy(), rtol=1e-6)


def test_updates_need_token_ids():
    batch = TokenBatch.build(0, torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="token ids"):
        HeadPatterns(1, 1, 4, 2).update(LayerActs(0, torch.eye(4)[None, None], batch))


# --- real windows on tiny-gpt2: brute force ------------------------------------------------------

SEQ_LEN, BATCH, TOP_K = 64, 4, 6
CONFIG = StatsConfig(seq_len=SEQ_LEN, top_k=TOP_K)


@pytest.fixture(scope="module")
def tiny():
    model = load_model("tiny-gpt2")
    assert (model.n_layers, model.n_heads) == (2, 4)  # tiny, as its name says
    return model


@pytest.fixture(scope="module")
def captured(tiny):
    """Three batches of wiki-vital windows with every layer's pattern, captured by run_with_hooks
    (same batch shape as the harvest: a model's floats can differ between batch shapes)."""
    out = []
    for wb in iter_windows(iter_documents("wiki-vital"), tiny.tokenizer, tiny.bos_token_id, SEQ_LEN,
                           SEQ_LEN * BATCH * 3, BATCH):
        grabbed = {}

        def grab(layer, into=grabbed):
            def fn(t, hook):
                into[layer] = t.detach().float().clone()
            return fn

        tokens = torch.from_numpy(wb.token_ids).long()
        tiny.bridge.run_with_hooks(tokens, fwd_hooks=[(hooks.attn_pattern(i), grab(i)) for i in range(tiny.n_layers)],
                                   return_type=None)
        patterns = torch.stack([grabbed[i] for i in range(tiny.n_layers)])
        out.append((int(wb.seq_ids[0]), tokens, torch.from_numpy(wb.doc_ids < 0), patterns))
    assert len(out) == 3
    return out


@pytest.fixture(scope="module")
def harvested(tiny, captured):
    """The statistic run by the real harvest over the same windows."""
    harvest = Harvest(tiny, CONFIG, statistics=[HeadPatterns.create])
    for first_seq, tokens, is_bos, _ in captured:
        harvest.process(first_seq, tokens.numpy(), is_bos.numpy())
    (tables,) = harvest.finalize()
    return tables


def brute_force(captured, n_layers, n_heads):
    """Per (layer, head): score sums, counts and top-example candidates, from plain loops over rows."""
    acc = {}
    for layer in range(n_layers):
        for h in range(n_heads):
            acc[layer, h] = {"count": 0, "repeat": 0, "prev": 0.0, "self": 0.0, "bos": 0.0, "dup": 0.0, "ind": 0.0,
                             "ent": 0.0, "dist": 0.0, "off": np.zeros(N_OFFSETS), "cand": []}
    for first_seq, tokens, is_bos, patterns in captured:
        for b in range(tokens.shape[0]):
            t, bos = tokens[b].tolist(), is_bos[b].tolist()
            for q in range(SEQ_LEN):
                if bos[q]:
                    continue
                earlier = [k for k in range(q) if not bos[k] and t[k] == t[q]]
                after = [k + 1 for k in earlier if not bos[k + 1]]
                for layer in range(n_layers):
                    for h in range(n_heads):
                        add_row(acc[layer, h], patterns[layer, b, h, q].double().numpy(), q, bos, earlier, after,
                                (first_seq + b) * SEQ_LEN + q)
    return acc


def add_row(a, p, q, bos, earlier, after, position):
    a["count"] += 1
    a["prev"] += p[q - 1]
    a["self"] += p[q]
    a["bos"] += sum(p[k] for k in range(q + 1) if bos[k])
    a["ent"] -= sum(x * math.log(x) for x in p[: q + 1] if x > 0)
    a["dist"] += sum(p[k] * (q - k) for k in range(q + 1))
    for o in range(min(q, N_OFFSETS - 1) + 1):
        a["off"][o] += p[q - o]
    if earlier:
        a["repeat"] += 1
        a["dup"] += p[earlier].sum()
        a["ind"] += p[after].sum() if after else 0.0
    allowed = [k for k in range(q + 1) if not bos[k]]
    best = max(p[allowed])
    src = next(k for k in allowed if p[k] == best)
    a["cand"].append((-np.float32(best), position, src))


@pytest.fixture(scope="module")
def brute(tiny, captured):
    return brute_force(captured, tiny.n_layers, tiny.n_heads)


def test_scores_equal_brute_force(tiny, brute, harvested):
    acc = brute
    heads = harvested["heads"]
    assert list(heads["layer"]) == [i for i in range(tiny.n_layers) for _ in range(tiny.n_heads)]
    assert list(heads["head"]) == list(range(tiny.n_heads)) * tiny.n_layers
    keys = [(int(layer), int(h)) for layer, h in zip(heads["layer"], heads["head"], strict=True)]
    assert heads["count"].tolist() == [acc[k]["count"] for k in keys]
    assert heads["repeat_count"].tolist() == [acc[k]["repeat"] for k in keys]
    assert 0 < heads["repeat_count"][0] < heads["count"][0]
    want = {
        "prev_token_score": [acc[k]["prev"] / acc[k]["count"] for k in keys],
        "self_score": [acc[k]["self"] / acc[k]["count"] for k in keys],
        "bos_score": [acc[k]["bos"] / acc[k]["count"] for k in keys],
        "duplicate_score": [acc[k]["dup"] / acc[k]["repeat"] for k in keys],
        "induction_score": [acc[k]["ind"] / acc[k]["repeat"] for k in keys],
        "entropy_nats": [acc[k]["ent"] / acc[k]["count"] for k in keys],
        "attn_distance_tokens": [acc[k]["dist"] / acc[k]["count"] for k in keys],
        "attn_by_offset": [acc[k]["off"] / acc[k]["count"] for k in keys],
    }
    for name, values in want.items():
        np.testing.assert_allclose(heads[name], np.array(values), rtol=2e-5, atol=1e-7, err_msg=name)
        assert heads[name].dtype == np.float32


def test_top_examples_equal_brute_force_sort(brute, captured, harvested):
    acc = brute
    ex = harvested["head_examples"]
    w = min(20, SEQ_LEN)
    assert ex["pattern"].shape == (len(ex["rank"]), SEQ_LEN) and ex["block"].shape == (len(ex["rank"]), w * w)
    by_head = {}
    for i in range(len(ex["rank"])):
        by_head.setdefault((int(ex["layer"][i]), int(ex["head"][i])), []).append(i)
    assert sorted(by_head) == sorted(acc)
    for key, rows in by_head.items():
        want = sorted(acc[key]["cand"])[:TOP_K]
        assert [int(ex["rank"][i]) for i in rows] == list(range(TOP_K))
        got = [(-ex["attention"][i], int(ex["seq_id"][i]) * SEQ_LEN + int(ex["pos"][i]), int(ex["src_pos"][i]))
               for i in rows]
        assert got == want, key
        for i in rows:  # payload: the query's row, and the block of the pattern around it
            layer, h = key
            seq, pos, start = int(ex["seq_id"][i]), int(ex["pos"][i]), int(ex["block_start"][i])
            first_seq, _, _, patterns = next(c for c in captured if c[0] <= seq < c[0] + BATCH)
            p = patterns[layer, seq - first_seq, h]
            assert start == min(max(pos - w + 1, 0), SEQ_LEN - w)
            np.testing.assert_array_equal(ex["pattern"][i], p[pos].numpy())
            np.testing.assert_array_equal(ex["block"][i], p[start:start + w, start:start + w].reshape(-1).numpy())
            assert ex["pattern"][i][ex["src_pos"][i]] == ex["attention"][i]
    windows = ex["context_tokens"]
    assert isinstance(windows, TokenWindows) and windows.width == SEQ_LEN
    np.testing.assert_array_equal(windows.starts, ex["seq_id"].astype(np.int64) * SEQ_LEN)


def test_columns_are_the_schemas(tiny, harvested):
    stat = HeadPatterns.create(StatContext.of(tiny, CONFIG))
    assert isinstance(stat, Statistic) and stat.name == "heads"
    assert stat.tables == (schema.HEADS, schema.HEAD_EXAMPLES)
    assert stat.hook_points() == tuple(hooks.point("attn_pattern", i) for i in range(tiny.n_layers))
    heads_cols = {c.name for c in schema.HEADS.columns}
    assert set(harvested["heads"]) == {"layer", "head", "count", "repeat_count", *SCORE_COLUMNS}
    assert set(harvested["heads"]) <= heads_cols
    assert {c for c in heads_cols if c.startswith("rand_")} == set(SCORES)
    assert set(harvested["head_examples"]) == {c.name for c in schema.HEAD_EXAMPLES.columns}
    assert harvested["heads"]["attn_by_offset"].shape == (tiny.n_layers * tiny.n_heads, N_OFFSETS)


# --- streaming: merge, re-batching, checkpoints ---------------------------------------------------


def fresh(tiny) -> HeadPatterns:
    return HeadPatterns.create(StatContext.of(tiny, CONFIG))


def assert_same(a, b, rtol=0.0):
    for table in ("heads", "head_examples"):
        for name, values in a[table].items():
            other = b[table][name]
            if isinstance(values, TokenWindows):
                np.testing.assert_array_equal(values.starts, other.starts)
            elif rtol and values.dtype.kind == "f" and table == "heads":
                np.testing.assert_allclose(values, other, rtol=rtol, err_msg=name)
            else:
                np.testing.assert_array_equal(values, other, err_msg=f"{table}.{name}")


def test_two_halves_merged_equal_one_pass(tiny, captured):
    one = feed(fresh(tiny), captured).finalize()
    first, second = feed(fresh(tiny), captured[:1]), feed(fresh(tiny), captured[1:])
    first.merge(second)
    assert_same(one, first.finalize(), rtol=1e-12)
    reversed_ = feed(fresh(tiny), captured[1:])
    reversed_.merge(feed(fresh(tiny), captured[:1]))
    assert_same(one, reversed_.finalize(), rtol=1e-12)


def test_offering_every_candidate_gives_the_same_tables(tiny, captured):
    """The CPU's filter (only candidates that beat the kept lists) against what other devices do
    (every batch's top rows per head offered, no host sync): the same tables, bit for bit."""
    filtered = fresh(tiny)
    assert filtered.prefilter
    unfiltered = fresh(tiny)
    unfiltered.prefilter = False
    assert_same(feed(filtered, captured).finalize(), feed(unfiltered, captured).finalize())


def test_smaller_batches_give_the_same_tables(tiny, captured):
    """Batching changes float32 sums in the last bits only; top examples are exactly the same."""
    one = feed(fresh(tiny), captured).finalize()
    halves = []
    for first_seq, tokens, is_bos, patterns in captured:
        for lo in (0, 2, 3):
            hi = {0: 2, 2: 3, 3: 4}[lo]
            halves.append((first_seq + lo, tokens[lo:hi], is_bos[lo:hi], patterns[:, lo:hi]))
    assert_same(one, feed(fresh(tiny), halves).finalize(), rtol=1e-6)


def test_checkpoint_round_trip_continues_to_the_same_result(tiny, captured):
    one = feed(fresh(tiny), captured).finalize()
    first = feed(fresh(tiny), captured[:2])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    restored = fresh(tiny)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert_same(one, feed(restored, captured[2:]).finalize())


# --- the repeated-random-tokens probe --------------------------------------------------------------


def test_probe_scores_planted_heads_exactly():
    length = 5
    n = 2 * length + 1

    def targets(b, h, q):
        if q <= length:
            return 0
        return q - (1, length, length - 1)[h]  # previous token, duplicate, induction

    scores = repeat_scores(attend((2, 3, n, n), targets), length)
    np.testing.assert_array_equal(scores.numpy(), np.eye(3, dtype=np.float32))


def test_probe_tokens_are_bos_then_a_distinct_ordinary_copy_twice(tiny):
    tokens = repeated_random_tokens(tiny, n_seqs=3, length=40, seed=5)
    assert tokens.shape == (3, 81)
    assert (tokens[:, 0] == tiny.bos_token_id).all()
    assert torch.equal(tokens[:, 1:41], tokens[:, 41:])
    special = set(tiny.tokenizer.all_special_ids) | {tiny.bos_token_id}
    for row in tokens[:, 1:41].tolist():
        assert len(set(row)) == 40 and not special & set(row)
    assert torch.equal(tokens, repeated_random_tokens(tiny, n_seqs=3, length=40, seed=5))
    assert not torch.equal(tokens, repeated_random_tokens(tiny, n_seqs=3, length=40, seed=6))


def test_probe_equals_brute_force_on_tiny_gpt2(tiny):
    n_seqs, length = 3, 12
    got = random_repeat_scores(tiny, n_seqs=n_seqs, length=length, seed=0)
    tokens = repeated_random_tokens(tiny, n_seqs, length, seed=0)
    grabbed = {}
    fwd = [(hooks.attn_pattern(i), lambda t, hook, i=i: grabbed.__setitem__(i, t.detach().double()))
           for i in range(tiny.n_layers)]
    tiny.bridge.run_with_hooks(tokens, fwd_hooks=fwd, return_type=None)
    for name, back in zip(SCORES, (1, length, length - 1), strict=True):
        want = []
        for layer in range(tiny.n_layers):
            for h in range(tiny.n_heads):
                total = 0.0
                for b in range(n_seqs):
                    for q in range(length + 1, 2 * length + 1):
                        assert tokens[b, q] == tokens[b, q - length]  # the same token in the first copy
                        total += float(grabbed[layer][b, h, q, q - back])
                want.append(total / (n_seqs * length))
        assert got[name].shape == (tiny.n_layers * tiny.n_heads,) and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want, rtol=1e-5, err_msg=name)
