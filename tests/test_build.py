"""Whole builds on real (small) models against brute force taken with plain hooks.

The brute force re-reads the same windows, captures every `mlp.hook_post` with an ordinary
hook, and recomputes each statistic directly; the store must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_store import context_token_check

from pipeline import hooks
from pipeline.build import (
    BuildInterrupted,
    BuildParams,
    Harvest,
    build,
    corpus_fingerprint,
    harvest_windows,
    write_store,
)
from pipeline.corpus import iter_documents
from pipeline.example_windows import ExampleWindows
from pipeline.models import load_model as _load_model
from pipeline.shards import load_shard, merge_shards, run_shard, save_shard, shard_bounds
from pipeline.stats import StatsConfig, native
from pipeline.stats.bins import ZERO_BIN, bin_ranges
from pipeline.stats.sync import SYNC_FREE_ENV
from pipeline.windows import iter_windows
from store import StoreWriter, open_store

_MODELS: dict = {}


def load_model(name: str):
    """One loaded model per name for this module (no test here changes weights): the weight
    analyses, remembered per loaded model, then run once per model, not once per store."""
    if name not in _MODELS:
        _MODELS[name] = _load_model(name)
    return _MODELS[name]


STATS = StatsConfig(seq_len=32, top_k=5, records=12, context_before=6, context_after=2, hist_sample_shift=1,
                    lens_sample_shift=2)


def params(model: str, tokens: int) -> BuildParams:
    return BuildParams(model=model, corpus="wiki-vital", max_tokens=tokens, stats=STATS, batch_size=4)


@torch.no_grad()
def brute_force(model_name: str, p: BuildParams):
    """All activations [layer, token, neuron] of non-BOS positions, and their global positions."""
    model = load_model(model_name)
    acts, positions = [], []
    # Same batch size as the build: a model's float arithmetic may differ in the last bits
    # between batch shapes (BLAS blocking), and we compare activations exactly.
    for b in iter_windows(iter_documents(p.corpus), model.tokenizer, model.bos_token_id, p.stats.seq_len,
                          p.max_tokens, p.batch_size):
        captured = {}

        def grab(layer, into=captured):
            def fn(t, hook):  # keyed by layer: inside a hook, hook.name is the aliased name
                into[layer] = t.detach().float()
            return fn

        model.bridge.run_with_hooks(torch.from_numpy(b.token_ids).long(),
                                    fwd_hooks=[(hooks.mlp_post(i), grab(i)) for i in range(model.n_layers)])
        valid = (b.doc_ids >= 0).reshape(-1)
        pos = (b.seq_ids[:, None] * p.stats.seq_len + np.arange(p.stats.seq_len)).reshape(-1)
        positions.append(pos[valid])
        layer_acts = [captured[i].reshape(-1, model.d_mlp)[torch.from_numpy(valid)]
                      for i in range(model.n_layers)]
        acts.append(torch.stack(layer_acts))
    return torch.cat(acts, dim=1), np.concatenate(positions)


@pytest.fixture(scope="module", params=["tiny-gpt2", "gpt2-random"])
def built(request, tmp_path_factory):
    name = request.param
    p = params(name, 2048 if name == "tiny-gpt2" else 768)
    out = build(p, tmp_path_factory.mktemp(name) / "store", progress=False, model=load_model(name))
    return name, p, open_store(out)


def test_top_examples_and_records_equal_brute_force(built):
    name, p, store = built
    acts, positions = brute_force(name, p)
    n_layers, _, d_mlp = acts.shape
    for table, k in (("neuron_examples", p.stats.top_k), ("activations", p.stats.records)):
        where = "WHERE kind = 'top'" if table == "neuron_examples" else ""
        order = "rank" if table == "neuron_examples" else "activation DESC, seq_id, pos"
        rows = store.sql(f"SELECT layer, neuron, seq_id, pos, activation FROM {table} {where} "
                         f"ORDER BY layer, neuron, {order}").to_pydict()
        got = {}
        for layer, n, seq, pos, a in zip(*rows.values(), strict=True):
            got.setdefault((layer, n), []).append((seq * p.stats.seq_len + pos, a))
        assert len(got) == n_layers * d_mlp
        for layer in range(n_layers):
            # brute force: sort by (activation desc, position asc), per neuron
            vals = acts[layer].numpy()
            order = np.lexsort((np.broadcast_to(positions[:, None], vals.shape), -vals), axis=0)
            for n in range(0, d_mlp, max(1, d_mlp // 97)):
                want = [(int(positions[i]), float(vals[i, n])) for i in order[:, n]]
                if table == "neuron_examples":  # at most one per window: its strongest position
                    seen: set[int] = set()
                    want = [w for w in want if not (w[0] // p.stats.seq_len in seen or
                                                    seen.add(w[0] // p.stats.seq_len))]
                assert got[(layer, n)] == want[:k], (table, layer, n)


def test_moments_equal_direct_computation(built):
    name, p, store = built
    acts, _ = brute_force(name, p)
    cols = store.sql("SELECT count, mean, std, min, max, density_frac FROM neurons ORDER BY layer, neuron")
    v = acts.permute(0, 2, 1).reshape(-1, acts.shape[1]).double()
    assert (np.asarray(cols["count"]) == v.shape[1]).all()
    np.testing.assert_allclose(cols["mean"], v.mean(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cols["std"], v.std(1, unbiased=False), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(cols["max"], v.max(1).values.float())
    np.testing.assert_array_equal(cols["min"], v.min(1).values.float())
    np.testing.assert_allclose(cols["density_frac"], (v > 0).double().mean(1), rtol=1e-6)


def test_token_neighbours_equal_brute_force_over_the_corpus_tokens(built):
    """Every non-BOS token of the corpus, with its nearest other corpus tokens by cosine of W_E
    rows, computed here one pair at a time in float64."""
    name, p, store = built
    model = load_model(name)
    present = sorted(store.sql("SELECT DISTINCT token_id FROM tokens WHERE doc_id >= 0").column(0).to_pylist())
    rows = store.sql("SELECT token_id, rank, neighbour_id, cosine, token, neighbour FROM token_neighbours "
                     "ORDER BY token_id, rank").to_pydict()
    assert sorted(set(rows["token_id"])) == present
    W = model.bridge.W_E.detach().double()
    unit = W[present] / W[present].norm(dim=1, keepdim=True)
    sim = (unit @ unit.T).fill_diagonal_(float("-inf"))
    k = min(32, len(present) - 1)
    index = {t: i for i, t in enumerate(present)}
    for row in range(0, len(present), max(1, len(present) // 53)):
        start = row * k
        got_ids = rows["neighbour_id"][start : start + k]
        assert rows["token_id"][start : start + k] == [present[row]] * k
        assert rows["rank"][start : start + k] == list(range(k))
        want = sim[row].topk(k)
        np.testing.assert_allclose(rows["cosine"][start : start + k], want.values.numpy(), atol=1e-5)
        # equal cosines may come in either order: compare each listed neighbour's own cosine
        np.testing.assert_allclose([float(sim[row, index[t]]) for t in got_ids], want.values.numpy(), atol=1e-5)
    text = {t: model.tokenizer.decode([t]) for t in present[:50]}
    assert all(rows["token"][i] == text[t] for i, t in enumerate(rows["token_id"]) if t in text)


def test_band_samples_lie_in_their_bands_and_contexts_decode(built):
    _, p, store = built
    ranges = bin_ranges()
    rows = store.sql("SELECT rank, activation FROM neuron_examples WHERE kind = 'band'").to_pydict()
    assert rows["rank"], "no band samples"
    for b, a in zip(rows["rank"], rows["activation"], strict=True):
        lo, hi = ranges[b]
        assert b != ZERO_BIN and lo <= a <= hi
    # the activation at the example's own position equals its entry in context_acts
    ex = store.sql("SELECT pos, ctx_start, activation, context_acts FROM neuron_examples LIMIT 500").to_pydict()
    for pos, start, a, ctx in zip(*ex.values(), strict=True):
        assert abs(ctx[pos - start] - a) <= 2e-3 * max(1.0, abs(a))  # context is stored at fp16 precision


def test_context_tokens_equal_the_tokens_table(built):
    """Every example's context_tokens, top and band, is the `tokens` text of its window."""
    _, p, store = built
    width = p.stats.window.width(p.stats.seq_len)
    check = context_token_check(store)
    assert set(check) == {"top", "band"}, check
    for kind, c in check.items():
        assert c["rows"] > 0 and c["tokens"] == c["rows"] * width, (kind, c)
        assert c["wrong"] == 0 and c["bad_len"] == 0, (kind, c)


def test_example_windows_refuse_what_they_cannot_fill():
    with pytest.raises(ValueError, match="crosses a corpus window"):
        ExampleWindows(np.array([0, 30]), width=4, seq_len=32)
    windows = ExampleWindows(np.array([40, 2, 33]), width=4, seq_len=32)
    windows.add(32, np.arange(100, 132))  # window 1 only: the row starting at 2 stays unfilled
    assert windows.token_ids[[0, 2]].tolist() == [[108, 109, 110, 111], [101, 102, 103, 104]]
    with pytest.raises(RuntimeError, match="outside the corpus"):
        windows.token_texts(lambda ids: {i: str(i) for i in ids})
    windows.add(0, np.arange(32))
    texts = windows.token_texts(lambda ids: {i: f"<{i}>" for i in ids}).to_pylist()
    assert texts[1] == ["<2>", "<3>", "<4>", "<5>"] and texts[2] == ["<101>", "<102>", "<103>", "<104>"]


def test_two_halves_merged_equal_one_pass(built, tmp_path):
    name, p, store = built
    model = load_model(name)
    n_windows = p.max_tokens // p.stats.seq_len
    half = n_windows // 2 // p.batch_size * p.batch_size + p.batch_size  # split at a batch boundary (see brute_force)
    first, second = Harvest(model, p.stats), Harvest(model, p.stats)
    for _ in harvest_windows(first, p, 0, half):
        pass
    for _ in harvest_windows(second, p, half, None):
        pass
    first.merge(second)
    merged = open_store(write_store(StoreWriter(tmp_path / "merged"), p, model, first, n_windows, {}, "cpu"))
    assert_same_store(store, merged)


def test_three_shards_merged_equal_one_pass(built, tmp_path):
    """Shards through the file contract (saved, loaded, given in any order) merge into the store
    of one pass; each shard starts at its window through the corpus index."""
    name, p, store = built
    model = load_model(name)
    fingerprint = corpus_fingerprint(p.corpus)
    folders = [save_shard(run_shard(p, i, 3, model, fingerprint=fingerprint), tmp_path / f"shard{i}") for i in range(3)]
    shards = [load_shard(f) for f in reversed(folders)]
    bounds = shard_bounds(p.max_tokens // p.stats.seq_len, 3, p.batch_size)
    assert [(s.start, s.stop) for s in reversed(shards)] == list(zip(bounds[:-1], bounds[1:], strict=True))
    assert all(s.stop > s.start and s.start % p.batch_size == 0 for s in shards)
    merged = open_store(merge_shards(shards, tmp_path / "merged", model=model, progress=False))
    assert_same_store(store, merged)
    assert merged.manifest["build"]["shards"] == 3


@pytest.mark.parametrize("sync_free", [False, True], ids=["sparse", "sync-free"])
def test_torch_accumulators_equal_the_native_kernels(built, tmp_path, monkeypatch, sync_free):
    """A CPU build uses the native kernels where it can; the torch accumulators (every other
    device, or no C compiler) must write the same store: both their CPU paths (filter, then offer
    the survivors) and the fixed-size paths a GPU takes (no host sync, `pipeline/stats/sync.py`)."""
    name, p, store = built
    if native.library() is None and not sync_free:
        pytest.skip("no C compiler: the built store already came from the torch accumulators")
    if sync_free:
        monkeypatch.setenv(SYNC_FREE_ENV, "1")
    model = load_model(name)
    harvest = Harvest(model, p.stats, use_native=False)
    assert all(getattr(s, "dense", True) and not getattr(s, "prefilter", False) for s in harvest.stats) == sync_free
    for _ in harvest_windows(harvest, p):
        pass
    n_windows = p.max_tokens // p.stats.seq_len
    torch_only = open_store(write_store(StoreWriter(tmp_path / "torch"), p, model, harvest, n_windows, {}, "cpu"))
    assert_same_store(store, torch_only)


def test_interrupted_then_resumed_equals_uninterrupted(built, tmp_path):
    name, p, store = built
    out = tmp_path / "resumed"
    with pytest.raises(BuildInterrupted):
        build(p, out, progress=False, stop_after_windows=5, model=load_model(name))
    assert not out.exists() and (tmp_path / "resumed.partial").exists()
    resumed = open_store(build(p, out, resume=True, progress=False, model=load_model(name)))
    assert not (tmp_path / "resumed.partial").exists()
    assert_same_store(store, resumed)


# Means of float32 per-batch partial sums (neurons) or float64 running sums (heads), added in
# another order by a merge or a resume: equal to rounding. Everything else must be identical.
SUMMED = {"mean", "std", "prev_token_score", "self_score", "bos_score", "duplicate_score", "induction_score",
          "entropy_nats", "attn_distance_tokens", "attn_by_offset"}


def assert_same_store(a, b):
    assert a.tables() == b.tables()
    assert {"heads", "head_examples", "head_composition", "neuron_circuits", "logit_lens", "lens_positions",
            "layer_stats"} <= set(a.tables())
    for name in a.tables():
        ta, tb = a.sql(f"SELECT * FROM {name}"), b.sql(f"SELECT * FROM {name}")
        assert ta.column_names == tb.column_names, name
        for col in ta.column_names:
            if col in SUMMED:
                x, y = (np.asarray(t[col].to_pylist(), float) for t in (ta, tb))
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
            else:
                assert _same_column(ta[col], tb[col]), f"{name}.{col}"


def _same_column(x, y) -> bool:
    """Equal Arrow columns, NaN equal to NaN; in Arrow and numpy (lists in Python are slow)."""
    if x.equals(y):
        return True
    x, y = x.combine_chunks(), y.combine_chunks()
    while pa.types.is_list(x.type) and pa.types.is_list(y.type):
        if x.null_count or y.null_count or not x.offsets.equals(y.offsets):
            return x.to_pylist() == y.to_pylist() or _nan_equal(x.to_pylist(), y.to_pylist())
        x, y = x.values, y.values
    if pa.types.is_floating(x.type) and x.type == y.type and not x.null_count and not y.null_count:
        return np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True)
    return x.to_pylist() == y.to_pylist() or _nan_equal(x.to_pylist(), y.to_pylist())


def _nan_equal(x, y) -> bool:
    try:
        return np.array_equal(np.asarray(x, dtype=float), np.asarray(y, dtype=float), equal_nan=True)
    except (TypeError, ValueError):
        return False


def test_every_phase_after_the_harvest_says_so(tmp_path, capsys):
    """After the harvest's bar, a build prints one numbered line per phase, in order (analyses
    remembered from this loaded model say so)."""
    from pipeline.analysis.registry import ANALYSES

    build(params("tiny-gpt2", 256), tmp_path / "store", progress=True, model=load_model("tiny-gpt2"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mechscope: [")]
    names = ["statistics: finalize", *(f"analysis: {a.name}" for a in ANALYSES), "corpus tables and example tokens",
             "writing tables"]
    assert len(lines) == len(names), lines
    for i, (line, name) in enumerate(zip(lines, names, strict=True), 1):
        assert line.startswith(f"mechscope: [{i}/{len(names)}] {name}"), (line, name)


def test_manifest_and_verify(built):
    _, p, store = built
    from store import verify_store

    assert verify_store(store.path) == []
    m = json.loads((Path(store.path) / "manifest.json").read_text())
    assert m["build"]["n_tokens"] == p.max_tokens
    assert m["records_per_neuron"] == p.stats.records


def test_head_tables_hold_every_head_with_its_evidence(built):
    name, p, store = built
    m = store.manifest["model"]
    heads = store.sql("SELECT layer, head, count, rand_induction_score FROM heads ORDER BY layer, head").to_pydict()
    assert len(heads["layer"]) == m["n_layers"] * m["n_heads"]
    assert set(heads["count"]) == {store.sql("SELECT count(*) AS n FROM tokens WHERE doc_id >= 0").to_pylist()[0]["n"]}
    assert all(0 <= x <= 1 for x in heads["rand_induction_score"])
    per_head = store.sql("SELECT count(*) AS n FROM head_examples GROUP BY layer, head").column("n").to_pylist()
    assert set(per_head) == {p.stats.top_k} and len(per_head) == len(heads["layer"])
    # each example's window tokens are the window's tokens; its row holds the attention it reports
    wrong = store.sql("""
        SELECT count(*) AS n FROM (
            SELECT seq_id, unnest(context_tokens) AS token, unnest(range(0, len(context_tokens))) AS pos
            FROM head_examples) e
        JOIN tokens t USING (seq_id, pos) WHERE e.token <> t.token""").to_pylist()[0]["n"]
    assert wrong == 0
    rows = store.sql("SELECT pattern, src_pos, attention, pos FROM head_examples").to_pylist()
    assert all(r["pattern"][r["src_pos"]] == r["attention"] and r["src_pos"] <= r["pos"] for r in rows)
