"""The neuron catalogue as a researcher reads it (issue 11): position artefacts named, top examples
distinct (at most one per window), selectivity, strong density, explanations, legible tokens.

Statistics are checked against brute force on hand-built activation streams (both the torch
accumulators and the native kernels) and on a real tiny-gpt2 build; the dashboard through
AppTest on the synthetic store, whose planted neurons are listed in `dashboard/synthetic.py`.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_dashboard import APP, html_of, links, open_page, pairs
from test_stats import CONFIG, IMPLS, L, S, finalize, run

from dashboard import nav, render
from dashboard.synthetic import ARTEFACT_NEURON, CITY_NEURON, UNSELECTIVE_NEURON, write_synthetic_store
from pipeline.stats import evidence, native
from pipeline.stats.keys import decode_top
from store import histogram_bins, open_store, queries

N = 5


def clustered_stream(n_seqs: int = 20, seed: int = 0):
    """Random activations with planted structure: neuron 0's 12 strongest positions all lie in
    window 6 (so distinct examples differ from the top positions); neuron 1 peaks on the first
    token after a BOS in every window (position 1, and position 10 after a separator in every
    third window); neuron 2 ties exactly across two identical windows."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(L, n_seqs, S, N, generator=g)
    acts[:, 6, 1:13, 0] = 10 + torch.arange(12, dtype=torch.float32)
    acts[:, :, 1, 1] = 50 + torch.arange(n_seqs, dtype=torch.float32)
    acts[:, ::3, 10, 1] = 80.0
    acts[:, 4, :, 2] = acts[:, 2, :, 2]
    is_bos = torch.zeros(n_seqs, S, dtype=torch.bool)
    is_bos[:, 0] = True
    is_bos[::3, 9] = True  # a document separator: position 10 is the first token after a BOS
    return acts, is_bos


def brute_distinct(acts, is_bos, layer: int, n: int, k: int) -> list[tuple[int, float]]:
    """(global position, value) of the k strongest windows' strongest positions, by brute force."""
    best = []
    for seq in range(acts.shape[1]):
        cands = [(float(acts[layer, seq, p, n]), seq * S + p) for p in range(S) if not is_bos[seq, p]]
        v, pos = max(cands, key=lambda t: (t[0], -t[1]))
        best.append((v, pos))
    best.sort(key=lambda t: (-t[0], t[1]))
    return [(pos, v) for v, pos in best[:k]]


def example_lists(stats) -> list[list[list[tuple[int, float]]]]:
    top = next(s for s in stats if s.name == "top")
    out = []
    for pool in top.examples:
        values, positions = decode_top(pool.state_dict()["keys"])
        out.append([[(int(p), float(v)) for p, v in zip(positions[n].tolist(), values[n].tolist(), strict=True)
                     if p >= 0] for n in range(N)])
    return out


@pytest.mark.parametrize("use_native", IMPLS)
@pytest.mark.parametrize("batch_size", [1, 3, 20])
def test_top_examples_are_distinct_windows_equal_to_brute_force(use_native, batch_size):
    acts, is_bos = clustered_stream()
    got = example_lists(run(acts, is_bos, range(20), batch_size, use_native, stats=_stats(use_native)))
    for layer in range(L):
        for n in range(N):
            want = brute_distinct(acts, is_bos, layer, n, CONFIG.top_k)
            assert got[layer][n] == want, (layer, n)
            assert len({p // S for p, _ in got[layer][n]}) == len(got[layer][n]) == CONFIG.top_k
    # the planted cluster: one example from window 6 (its strongest position), not k of them
    assert [p // S for p, _ in got[0][0]].count(6) == 1 and got[0][0][0] == (6 * S + 12, 21.0)


def _stats(use_native: bool):
    from test_stats import make_neuron_stats

    return make_neuron_stats(N, use_native)


@pytest.mark.parametrize("use_native", IMPLS)
def test_distinct_examples_merge_and_match_across_implementations(use_native):
    """Two halves merged (split mid-stream, different batch sizes) equal one pass, and the native
    kernels equal the torch accumulators."""
    acts, is_bos = clustered_stream()
    whole = run(acts, is_bos, range(20), 4, use_native, stats=_stats(use_native))
    first = run(acts, is_bos, range(0, 7), 2, use_native, stats=_stats(use_native))
    second = run(acts, is_bos, range(7, 20), 5, use_native, stats=_stats(use_native))
    for mine, theirs in zip(second, first, strict=True):
        mine.merge(theirs)
    assert example_lists(whole) == example_lists(second)
    other = run(acts, is_bos, range(20), 4, not use_native, stats=_stats(not use_native)) \
        if native.library() is not None else whole
    assert example_lists(whole) == example_lists(other)
    a, b = finalize(whole)["neuron_examples"], finalize(other)["neuron_examples"]
    for col in ("seq_id", "pos", "activation", "ctx_start"):
        np.testing.assert_array_equal(np.concatenate(a[col]), np.concatenate(b[col]), err_msg=col)
    np.testing.assert_array_equal(np.concatenate([np.asarray(x, float) for x in a["context_acts"]]),
                                  np.concatenate([np.asarray(x, float) for x in b["context_acts"]]))


@pytest.mark.parametrize("use_native", IMPLS)
def test_after_bos_share_names_the_planted_artefact(use_native):
    acts, is_bos = clustered_stream()
    stats = run(acts, is_bos, range(20), 3, use_native, stats=_stats(use_native))
    top = next(s for s in stats if s.name == "top")
    part = top.finalize()["neurons"]
    prev = np.asarray(part["_top_prev_token_ids"].positions)  # the build resolves these to token ids
    flat_bos = is_bos.reshape(-1).numpy()
    ids = np.where(prev >= 0, np.where(flat_bos[np.maximum(prev, 0)], -1, 7), -1)  # -1 at a BOS, as resolved
    share = evidence.bos_share(ids, part["_top_n_examples"]).reshape(L, N)
    for layer in range(L):
        for n in range(N):
            want = brute_distinct(acts, is_bos, layer, n, CONFIG.top_k)
            after = sum(bool(is_bos.reshape(-1)[p - 1]) for p, _ in want) / len(want)
            assert share[layer, n] == pytest.approx(after)
    assert (share[:, 1] == 1.0).all() and (share[:, 0] == 0.0).all()
    assert evidence.bos_share(np.array([[-1, -1, 5]]), np.array([0])).tolist()[0] != evidence.bos_share(
        np.array([[-1, -1, 5]]), np.array([3])).tolist()[0]  # empty slots (no example) do not count


def test_most_frequent_tokens_equal_a_counter():
    rng = np.random.default_rng(3)
    vocab = [" a", " b", "<x>", "\n", " ", "é"]
    rows = []
    for layer in range(2):
        for n in range(4):
            for kind, k in (("top", 6), ("band", 3)):
                for rank in range(k):
                    toks = [vocab[i] for i in rng.integers(0, len(vocab), 5)]
                    pos = int(rng.integers(0, 5))
                    rows.append((layer, n, kind, rank, pos + 10, 10, toks))
    cols = list(zip(*rows, strict=True))
    ctx = pa.array(list(cols[6]), pa.list_(pa.string()))
    tokens, counts = evidence.most_frequent_tokens([0] * 4 + [1] * 4, list(range(4)) * 2, *[np.asarray(c) for c in
                                                   cols[:6]], pa.chunked_array([ctx]), n=3)
    for i, (layer, n) in enumerate([(a, b) for a in range(2) for b in range(4)]):
        mine = [(r[3], r[6][r[4] - r[5]]) for r in rows if r[:3] == (layer, n, "top")]
        c = collections.Counter(t for _, t in mine)
        first = {}
        for rank, t in sorted(mine):
            first.setdefault(t, rank)
        want = sorted(c, key=lambda t: (-c[t], first[t]))[:3]
        assert tokens[i] == want and counts[i] == [c[t] for t in want]


def test_strong_fraction_counts_positions_within_a_tenth_of_the_max():
    rng = np.random.default_rng(0)
    for vmax_scale in (0.05, 1.0, 7.0, 3000.0):
        values = np.concatenate([rng.normal(0, 0.2 * vmax_scale, 5000), [vmax_scale]])
        counts = np.bincount([histogram_bins.bin_of(float(v)) for v in values], minlength=histogram_bins.N_BINS)
        vmax = float(values.max())
        t = evidence.strong_threshold(vmax)
        assert vmax / 16 < t <= vmax / 8 or t in (2.0**-6, 2.0**6)
        got = evidence.strong_fraction([counts], [vmax])[0]
        assert got == pytest.approx((values >= t).mean(), abs=1e-7)
    assert math.isnan(evidence.strong_fraction([counts], [-1.0])[0])


def test_explanation_template():
    art = evidence.explain(11, 30, [" ", ","], [15, 5], 20, 1.0, [" the"], 0.0, 0.1)
    assert art.startswith("Position artefact: 100% of its top examples") and "middle layer (11 of 30)" in art
    text = evidence.explain(29, 30, [" Paris", " London"], [6, 2], 20, 0.0, [" France", " French", "ais"], 0.35, -0.7)
    assert text == ("Fires on “ Paris” (6/20), “ London” (2/20); promotes “ France”, “ French”, “ais” (the next "
                    "token is one of them at 35% of its top examples); erases what it reads (deletion cos -0.70); "
                    "late layer (29 of 30).")
    assert evidence.explain(0, 30, ["a", "b"], [1, 1], 20, 0.0, [], None, None).startswith("Fires on varied tokens")


# --- a real build ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from pipeline.build import BuildParams, build
    from pipeline.stats import StatsConfig

    stats = StatsConfig(seq_len=32, top_k=5, records=12, context_before=6, context_after=2, hist_sample_shift=0)
    p = BuildParams(model="tiny-gpt2", corpus="wiki-vital", max_tokens=2048, stats=stats, batch_size=4)
    return open_store(build(p, tmp_path_factory.mktemp("tiny") / "store", progress=False))


def test_build_writes_evidence_columns_equal_to_brute_force(tiny_store):
    """after_bos_frac and fires_on_tokens against SQL over `tokens` (an independent path: the
    build resolves them from token ids and example windows), strong_frac from the histogram."""
    s = tiny_store
    brute = s.sql("""
        SELECT e.layer, e.neuron, avg(CASE WHEN p.doc_id < 0 THEN 1.0 ELSE 0.0 END) AS share,
               count(DISTINCT e.seq_id) AS windows, count(*) AS n
        FROM neuron_examples e JOIN tokens p ON p.seq_id = e.seq_id AND p.pos = e.pos - 1
        WHERE e.kind = 'top' GROUP BY e.layer, e.neuron ORDER BY e.layer, e.neuron""").to_pydict()
    got = s.sql("SELECT after_bos_frac, fires_on_tokens, fires_on_counts, strong_frac, max, hist_counts, explanation "
                "FROM neurons ORDER BY layer, neuron").to_pydict()
    assert len(got["after_bos_frac"]) == len(brute["share"]) > 0
    np.testing.assert_allclose(got["after_bos_frac"], brute["share"], rtol=1e-6)
    assert brute["windows"] == brute["n"]  # top examples: one per window
    own = s.sql("""
        SELECT e.layer, e.neuron, e.rank,
               coalesce(nullif(e.context_display[e.pos - e.ctx_start + 1], ''), t.token) AS token
        FROM neuron_examples e JOIN tokens t USING (seq_id, pos)
        WHERE e.kind = 'top' ORDER BY e.layer, e.neuron, e.rank""").to_pydict()
    per: dict = {}
    for layer, n, rank, tok in zip(*own.values(), strict=True):
        per.setdefault((layer, n), []).append((rank, tok))
    for i, key in enumerate(sorted(per)):
        c = collections.Counter(t for _, t in per[key])
        first = {t: min(r for r, u in per[key] if u == t) for t in c}
        want = sorted(c, key=lambda t: (-c[t], first[t]))[:evidence.N_FIRES_ON]
        assert got["fires_on_tokens"][i] == want and got["fires_on_counts"][i] == [c[t] for t in want]
    ranges = histogram_bins.bin_ranges()
    for counts, vmax, strong in zip(got["hist_counts"], got["max"], got["strong_frac"], strict=True):
        t = evidence.strong_threshold(vmax)
        assert strong == pytest.approx(sum(c for c, (lo, _) in zip(counts, ranges, strict=True) if lo >= t)
                                       / sum(counts), rel=1e-6)
    assert all(e and e.endswith(".") for e in got["explanation"])
    word = got["fires_on_tokens"][0][0].strip().lower() or "fires"
    found = queries.neuron_catalogue(s, 0, 1, search=word, artefacts=None).to_pydict()
    assert (0, 0) in list(zip(found["layer"], found["neuron"], strict=True))


# --- the dashboard on the synthetic store ----------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("syn") / "a")


@pytest.fixture
def app(synthetic, monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(synthetic))
    return AppTest.from_file(APP, default_timeout=60)


def test_overview_leads_with_text_neurons_and_keeps_artefacts_one_click_away(app):
    at = app.run()
    assert not at.exception
    labels = [p.proto.label for p in at.get("page_link")]
    largest = [x for x in labels if ": max = " in x and "after a BOS" not in x]
    assert largest[0].startswith("layer 1, neuron 1: max = 4.998")
    assert not any("layer 1, neuron 6" in x for x in largest)
    assert any(x.startswith("layer 1, neuron 6: max = 4.999 · 100% of top examples after a BOS") for x in labels)
    found = links(at)
    assert found["all of them in the catalogue →"] == ("neurons", "show=position")
    assert any("Position artefacts: 1 neuron" in e.label for e in at.expander)
    assert any("Sun et al. 2024" in m.value for m in at.markdown)


def test_catalogue_hides_artefacts_by_default_and_labels_them(app):
    at = open_page(app, nav.CATALOGUE)
    assert ARTEFACT_NEURON not in pairs(at.dataframe[0].value)
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.CATALOGUE, show="position")
    frame = at.dataframe[0].value
    assert pairs(frame) == [ARTEFACT_NEURON] and frame["artefact"].iloc[0] == "after BOS 100%"
    assert frame["explanation"].iloc[0].startswith("Position artefact")
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.CATALOGUE, show="all")
    assert len(at.dataframe[0].value) == 16
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.CATALOGUE, show="bogus")
    assert ["show='bogus' is not one of text, all, position" in w.value for w in at.warning] == [True]
    assert len(at.dataframe[0].value) == 15


def test_neuron_page_names_the_artefact(app):
    at = open_page(app, nav.NEURON, layer=str(ARTEFACT_NEURON[0]), neuron=str(ARTEFACT_NEURON[1]))
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "100% of this neuron's top examples sit on the first token after a BOS" in warnings[0]
    assert "Massive Activations" in warnings[0]
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.NEURON, layer="0", neuron="2")
    assert not at.warning and "<b>fires on</b>: ·Paris ×5" in html_of(at)
    assert any("In short" in m.value and "Paris" in m.value for m in at.markdown)
    assert {m.label for m in at.metric} >= {"strong density", "density"}


def test_token_search_ranks_the_selective_neuron_first(app, synthetic):
    store = open_store(synthetic)
    by_max = queries.neuron_catalogue(store, 0, 1, fires_on="paris").to_pandas().sort_values("fires_on_max")
    assert pairs(by_max.iloc[::-1])[0] == UNSELECTIVE_NEURON  # the strongest single activation on " Paris" ...
    ranked = queries.token_selectivity(store, " Paris ", 3).to_pylist()
    assert (ranked[0]["layer"], ranked[0]["neuron"]) == (0, 2)  # ... is not the Paris neuron
    at = open_page(app, nav.CATALOGUE, fires_on="Paris")
    frame = at.dataframe[0].value
    assert pairs(frame)[0] == (0, 2) and frame["selectivity"].is_monotonic_decreasing
    assert "most selective first" in at.caption[0].value


def test_token_search_counts_tokens_near_it_in_the_embedding_as_related(app, synthetic, tmp_path):
    """A neuron that fires on " London" and once on " Paris" has all of its top-example activation on
    tokens related to " Paris" (by the store's token_neighbours); without that table only " Paris"
    itself counts, and it drops below unrelated neurons."""
    store = open_store(synthetic)
    assert queries.related_tokens(store, "PARIS") == [" city", " France", " London"]
    by_neuron = {(r["layer"], r["neuron"]): r for r in queries.token_selectivity(store, " Paris", 20).to_pylist()}
    city = by_neuron[CITY_NEURON]
    assert city["related_share"] == pytest.approx(1.0) and city["token_recall"] < 0.5
    assert city["selectivity"] == pytest.approx(city["token_recall"])
    assert all(r["selectivity"] < city["selectivity"] for k, r in by_neuron.items()
               if k not in {(0, 2), UNSELECTIVE_NEURON, CITY_NEURON})
    london = queries.token_selectivity(store, "london", 1).to_pylist()[0]
    assert (london["layer"], london["neuron"]) == CITY_NEURON and london["selectivity"] == pytest.approx(1.0)

    bare = open_store(write_synthetic_store(tmp_path / "bare", omit=("token_neighbours",)))
    assert queries.related_tokens(bare, "Paris") == []
    ranked = queries.token_selectivity(bare, " Paris", 20).to_pylist()
    city_bare = next(r for r in ranked if (r["layer"], r["neuron"]) == CITY_NEURON)
    assert city_bare["related_share"] < 0.3 and (ranked[0]["layer"], ranked[0]["neuron"]) == (0, 2)

    at = open_page(app, nav.CATALOGUE, fires_on="Paris")
    assert "related (nearest in the model's embedding): ·city, ·France, ·London" in at.caption[0].value
    assert {"token_recall", "related_share"} <= set(at.dataframe[0].value.columns)


def test_catalogue_search_and_layer_range_in_the_url(app):
    at = open_page(app, nav.CATALOGUE, search="paris")
    frame = at.dataframe[0].value
    assert (0, 2) in pairs(frame) and all("paris" in e.lower() for e in frame["explanation"])
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.CATALOGUE, layers=["1", "1"])
    assert set(at.dataframe[0].value["layer"]) == {1}
    at.slider(key="layers").set_range(0, 0).run()
    assert set(at.dataframe[0].value["layer"]) == {0}


def test_whitespace_tokens_are_visible_in_heatmaps():
    out = render.heatmap_html([" ", "\n", "  ", "\u00a0", "", "\t", " x"], [1.0] * 7, vmax=1.0, focus=0)
    for glyph in (">·<", ">↵<", ">··<", ">␣<", ">◌<", ">⇥<", "> x<"):
        assert glyph in out, glyph
    assert not re.search(r'">\s*</span>', out)  # no empty (or blank) token box


def test_split_characters_are_merged_where_the_window_holds_them(gpt2_tokenizer):
    from pipeline.example_windows import FRAGMENT, merge_fragments
    from pipeline.windows import decode_joint, decode_tokens

    text = "Built c.\u20141495 in 京都, Kinkaku-ji."
    ids = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
    solo = decode_tokens(gpt2_tokenizer, ids)
    texts = [solo[i] for i in ids]
    assert sum(FRAGMENT in t for t in texts) >= 3  # the dash and the two CJK characters are split
    shown = merge_fragments(ids, texts, lambda run: decode_joint(gpt2_tokenizer, run))
    assert "".join(shown) == text and FRAGMENT not in "".join(shown) and len(shown) == len(ids)
    assert [t for t, s in zip(texts, shown, strict=True) if FRAGMENT not in t] == \
        [s for t, s in zip(texts, shown, strict=True) if FRAGMENT not in t]  # whole tokens unchanged
    assert "—" in shown or any("—" in s for s in shown)
    cut = next(i for i, t in enumerate(texts) if FRAGMENT in t) + 1  # a window that starts mid-character
    assert FRAGMENT in "".join(merge_fragments(ids[cut:], texts[cut:], lambda r: decode_joint(gpt2_tokenizer, r)))
    html = render.example_html({"pos": 1, "ctx_start": 0, "seq_id": 0, "activation": 1.0, "context_tokens": texts,
                                "context_display": shown, "context_acts": [1.0] * len(ids)}, 1.0)
    assert "京" in html and "—" in html and FRAGMENT not in html


def test_build_context_display_joins_to_the_decoded_window(tiny_store):
    """Rows whose window holds a split character: the shown texts join to the window's ids decoded
    together (brute force from `tokens`), apart from characters cut by the window's edges."""
    from pipeline.models import load_model
    from pipeline.windows import decode_joint

    rows = tiny_store.sql("""
        SELECT e.seq_id, e.ctx_start, e.context_tokens, e.context_display,
               (SELECT list(t.token_id ORDER BY t.pos) FROM tokens t
                 WHERE t.seq_id = e.seq_id AND t.pos >= e.ctx_start
                   AND t.pos < e.ctx_start + len(e.context_tokens)) AS ids
        FROM neuron_examples e WHERE e.context_display IS NOT NULL LIMIT 200""").to_pylist()
    n_plain = tiny_store.sql(
        "SELECT count(*) AS n FROM neuron_examples WHERE context_display IS NULL "
        "AND len(list_filter(context_tokens, lambda t: contains(t, '\ufffd'))) > 0").to_pylist()[0]["n"]
    assert n_plain == 0  # every row with a fragment has its display texts
    assert rows  # the first 2,048 tokens of wiki-vital hold split characters (accents, dashes, IPA)
    tok = load_model("tiny-gpt2").tokenizer
    for r in rows:
        assert len(r["context_display"]) == len(r["context_tokens"])
        joined, want = "".join(r["context_display"]), decode_joint(tok, r["ids"])
        assert joined.strip("\ufffd") == want.strip("\ufffd") or joined == want


# --- LLM explanations, against a local fake OpenAI-compatible server ---------------------------


class FakeLLM:
    """An OpenAI-compatible chat endpoint on localhost: explains every neuron as firing on " Paris"
    and, as the simulator, predicts 10 on tokens containing "Paris" and 0 elsewhere."""

    def __init__(self):
        import http.server
        import json
        import threading

        self.requests: list[dict] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                system, user = body["messages"][0]["content"], body["messages"][1]["content"]
                if "Say in one short sentence" in system:
                    answer = "Fires on the token “ Paris” <script>alert(1)</script>"
                else:
                    lines = user.split("Tokens:\n", 1)[1].splitlines()
                    answer = "\n".join(f"{ln.split(chr(9))[0]}\t{10 if 'Paris' in ln else 0}" for ln in lines)
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_llm():
    server = FakeLLM()
    yield server
    server.close()


def test_llm_explanations_are_scored_cached_and_shown(tmp_path, fake_llm, monkeypatch, capsys):
    from pipeline import explain
    from store import verify_store

    path = write_synthetic_store(tmp_path / "s")
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    args = [str(path), "--endpoint", fake_llm.url, "--model", "fake-explainer", "--neuron", "0/2",
            "--neuron", "L1/N3", "--api-key-env", "FAKE_KEY"]
    assert explain.main(args) == 0
    assert len(fake_llm.requests) == 4 and {r["path"] for r in fake_llm.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in fake_llm.requests} == {"Bearer sk-test"} and fake_llm.requests[0]["temperature"] == 0
    assert verify_store(path) == []
    rows = {(r["layer"], r["neuron"]): r for r in open_store(path).sql(
        "SELECT * FROM neuron_explanations").to_pylist()}
    paris, xss = rows[(0, 2)], rows[(1, 3)]
    assert paris["explanation"].startswith("Fires on the token") and paris["scored_tokens"] > 10
    assert paris["score"] > 0.8  # the Paris neuron's held-out activations follow " Paris"
    assert xss["score"] is None or xss["score"] < paris["score"]
    # cached: a second run asks nothing, and another neuron adds a row without losing the others
    assert explain.main(args) == 0 and len(fake_llm.requests) == 4
    assert explain.main([*args[:5], "--neuron", "1/0", "--api-key-env", "FAKE_KEY"]) == 0
    assert len(fake_llm.requests) == 6 and open_store(path).sql(
        "SELECT count(*) AS n FROM neuron_explanations").to_pylist()[0]["n"] == 3
    assert len(list(path.glob("neuron_explanations*.parquet"))) == 1 and verify_store(path) == []
    # the neuron page shows it, as text
    monkeypatch.setenv(nav.ENV_VAR, str(path))
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.NEURON, layer="0", neuron="2")
    shown = [m.value for m in at.markdown if "fake" in m.value]
    assert len(shown) == 1 and "score +" in shown[0] and "<script>" not in shown[0]


def test_llm_endpoint_errors_are_one_line(tmp_path, capsys):
    from pipeline import explain

    path = write_synthetic_store(tmp_path / "s")
    assert explain.main([str(path), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--neuron", "0/2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mechscope explain: error: http://127.0.0.1:9/v1:") and err.count("\n") == 1
    assert not (path / "neuron_explanations.1.parquet").exists()


def test_simulation_parsing_and_score():
    from pipeline import explain

    assert explain.parse_simulation("0\t3\n2: 11\nnoise\n7\t5\n1 | 2.5", 3) == [3.0, 2.5, 10.0]
    assert explain.correlation([0, 10, 0, 10], [0.1, 0.9, 0.0, 1.0]) > 0.95
    assert explain.correlation([5, 5, 5], [0.1, 0.9, 0.0]) is None
    assert explain.scaled(float("nan"), 2.0) is None
    assert explain.scaled(-1.0, 2.0) == 0 and explain.scaled(1.0, 2.0) == 5


def test_sql_results_link_to_neuron_and_head_pages(app):
    at = open_page(app, nav.SQL)
    at.text_area(key="sql_text").input("SELECT layer, neuron, max FROM neurons ORDER BY max DESC LIMIT 3").run()
    at.button(key="run").click().run()
    frame = at.dataframe[0].value
    assert list(frame["open"]) == [render.neuron_url(1, 6), render.neuron_url(1, 1), render.neuron_url(0, 2)]
    at.text_area(key="sql_text").input("SELECT layer, head FROM heads ORDER BY layer, head LIMIT 2").run()
    at.button(key="run").click().run()
    assert list(at.dataframe[0].value["open"]) == ["head?layer=0&head=0", "head?layer=0&head=1"]
    at.text_area(key="sql_text").input("SELECT count(*) AS n FROM neurons").run()
    at.button(key="run").click().run()
    assert "open" not in at.dataframe[0].value.columns


def test_readme_selectivity_example_finds_the_planted_neuron(synthetic):
    """The README's SQL for " Paris" runs through the SQL guard and ranks the Paris neuron first."""
    import re as re_

    from store.sqlguard import run_user_query

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sql = re_.search(r"```sql\n(-- which neurons are selective for \" Paris\".*?)```", readme, re_.S).group(1)
    rows = run_user_query(open_store(synthetic), sql, max_rows=10, timeout_s=20).table.to_pylist()
    assert (rows[0]["layer"], rows[0]["neuron"]) == (0, 2) and rows[0]["selectivity"] == pytest.approx(1.0)
    expected = queries.token_selectivity(open_store(synthetic), " Paris", 10).to_pylist()
    assert [r["selectivity"] for r in rows] == pytest.approx([r["selectivity"] for r in expected])
    assert "layer::INTEGER * 10000" in readme


def test_overview_counts_have_thousands_separators_and_histogram_colours_by_sign(app):
    import json

    at = app.run()
    config = json.loads(at.dataframe[0].proto.columns)
    assert config["n_rows"]["type_config"]["format"] == "localized"
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.NEURON, layer="0", neuron="1")
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    hist = next(s for s in specs if "positions per activation bin" in json.dumps(s.get("title", "")))
    assert hist["encoding"]["color"]["scale"]["range"] == ["#2166ac", "#999999", "#e66101"]


def test_an_example_expands_to_its_whole_window(app, synthetic):
    at = open_page(app, nav.NEURON, layer="1", neuron="6")
    assert any(e.label == "Whole window of an example" for e in at.expander)
    body = html_of(at)
    window = [h.proto.body for h in at.html if "outside the stored context" in h.proto.body]
    assert len(window) == 1 and window[0].count('title="') == 16  # every position of the 16-token window
    assert "ms-focus" in window[0] and "position 15, outside the stored context" in window[0]
    assert " c.</span>" in body and "—</span>" in body and "\ufffd" not in window[0]  # the split dash, merged
    at.selectbox(key="window_of").set_value(1).run()
    second = [h.proto.body for h in at.html if "outside the stored context" in h.proto.body][0]
    assert second != window[0] and ">·</span>" in second  # window 1's whitespace-only token, visible
