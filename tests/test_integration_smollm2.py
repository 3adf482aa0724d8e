"""A small store built with the real model (smollm2-135m over wiki-vital): what only a trained
model gives. Random-weight models test the arithmetic; this checks that the catalogue means
something: contexts are real corpus text, value tokens are words, some neurons' value tokens
are the tokens that follow their top activations, and the README's SQL answers.

One build of 4,096 tokens (32 windows of 128), shared by the module: ~1 minute on 2 cores.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from pipeline.build import BuildParams, build
from pipeline.stats import StatsConfig
from store import open_store, verify_store
from store.sqlguard import run_user_query

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
TOKENS = 4096
SEQ_LEN = 128
RECORDS = 64  # activation records per neuron (default 256): 30 x 1536 x 64 rows is plenty here
WORD = re.compile(r"[A-Za-z]{3,}")

PARIS_SQL = """
SELECT a.layer, a.neuron, max(a.activation) AS top
FROM activations a JOIN tokens t USING (seq_id, pos)
WHERE t.token = ? GROUP BY ALL ORDER BY top DESC LIMIT 10
"""


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    started = time.perf_counter()
    params = BuildParams(model=MODEL, corpus="wiki-vital", max_tokens=TOKENS,
                         stats=StatsConfig(seq_len=SEQ_LEN, records=RECORDS), batch_size=8)
    out = build(params, tmp_path_factory.mktemp("smol") / "store", progress=False)
    timings = json.loads((out / "manifest.json").read_text())["timings"]
    print(f"\nsmollm2 build: {time.perf_counter() - started:.1f}s {timings}")
    with open_store(out) as store:
        yield store


@pytest.fixture(scope="module")
def tokenizer(smol):
    from pipeline.models import load_model

    return load_model(MODEL).tokenizer


def test_manifest_and_verify(smol):
    assert verify_store(smol.path) == []
    m = json.loads((Path(smol.path) / "manifest.json").read_text())
    model = m["model"]
    assert (model["name"], model["n_layers"], model["d_mlp"], model["gated"]) == (MODEL, 30, 1536, True)
    assert m["build"]["n_tokens"] == TOKENS and m["build"]["n_windows"] == TOKENS // SEQ_LEN
    assert m["tables"]["neurons"]["rows"] == 30 * 1536
    assert m["tables"]["tokens"]["rows"] == TOKENS


def test_top_example_contexts_are_corpus_text(smol, tokenizer):
    """Each sampled top example's context, decoded, is a substring of its own document."""
    examples = smol.sql(
        "SELECT layer, neuron, seq_id, pos, ctx_start, len(context_acts) AS n FROM neuron_examples "
        "WHERE kind = 'top' AND rank < 3 AND neuron % 97 = 0 ORDER BY layer, neuron, rank").to_pylist()
    assert len(examples) >= 30 * 15 * 3
    tokens = smol.sql("SELECT seq_id, pos, doc_id, token_id FROM tokens ORDER BY seq_id, pos").to_pydict()
    by_window: dict[int, list[tuple[int, int]]] = {}
    for seq, doc, tid in zip(tokens["seq_id"], tokens["doc_id"], tokens["token_id"], strict=True):
        by_window.setdefault(seq, []).append((doc, tid))
    texts = dict(zip(*smol.sql("SELECT doc_id, text FROM documents").to_pydict().values(), strict=True))
    checked = 0
    for ex in examples:
        window = by_window[ex["seq_id"]]
        doc = window[ex["pos"]][0]
        assert doc >= 0, f"top example at a BOS position: {ex}"
        lo, hi = ex["ctx_start"], min(ex["ctx_start"] + ex["n"], SEQ_LEN)
        assert lo <= ex["pos"] < hi
        # the run of the example's document inside the context (a BOS separator ends it)
        a = ex["pos"]
        while a > lo and window[a - 1][0] == doc:
            a -= 1
        b = ex["pos"] + 1
        while b < hi and window[b][0] == doc:
            b += 1
        text = tokenizer.decode([tid for _, tid in window[a:b]]).strip("\ufffd")  # split UTF-8 at the edges
        if text.strip():
            assert text in texts[doc], (ex, text)
            checked += 1
    assert checked >= 0.9 * len(examples)


def test_value_tokens_are_words_and_agree_with_next_tokens(smol):
    kv = smol.sql("SELECT layer, neuron, kv_top_tokens, kv_agreement_frac FROM neurons").to_pylist()
    values = [t for row in kv for t in row["kv_top_tokens"]]
    words = sum(bool(WORD.fullmatch(t.lstrip(" "))) for t in values) / len(values)
    print(f"\nvalue tokens that are words (>= 3 letters): {words:.1%}")
    assert words > 0.6

    scored = sorted((r for r in kv if r["kv_agreement_frac"] is not None), key=lambda r: -r["kv_agreement_frac"])
    assert len(scored) > 0.9 * len(kv)
    chance = sum(r["kv_agreement_frac"] for r in scored) / len(scored)
    best = scored[:8]
    print(f"key-value agreement: mean {chance:.3f}, best neurons:")
    for r in best:
        nxt = smol.sql(
            "SELECT t.token FROM neuron_examples e JOIN tokens t ON t.seq_id = e.seq_id AND t.pos = e.pos + 1 "
            "WHERE e.layer = ? AND e.neuron = ? AND e.kind = 'top' ORDER BY e.rank LIMIT 6",
            [r["layer"], r["neuron"]])["token"].to_pylist()
        print(f"  L{r['layer']}/N{r['neuron']}: {r['kv_agreement_frac']:.2f}  values {r['kv_top_tokens'][:5]}"
              f"  next tokens {nxt}")
    assert best[0]["kv_agreement_frac"] > 0.5
    assert best[0]["kv_agreement_frac"] > 10 * chance
    assert sum(r["kv_agreement_frac"] > 0.5 for r in scored) >= 5


def test_which_neurons_fire_on_a_token(smol):
    """The README's question: on ' Paris' when the read text has it, else on a frequent word."""
    token = " Paris"
    if not smol.sql("SELECT 1 FROM tokens WHERE token = ' Paris' LIMIT 1").num_rows:
        token = smol.sql(
            "SELECT token, count(*) AS n FROM tokens WHERE regexp_full_match(token, ' [A-Z][a-z]{3,}') "
            "GROUP BY token ORDER BY n DESC, token LIMIT 1")["token"][0].as_py()
    sql = PARIS_SQL.replace("?", "'" + token.replace("'", "''") + "'")
    rows = run_user_query(smol, sql).table.to_pylist()
    print(f"\nneurons firing hardest on {token!r}: {rows[:3]}")
    assert len(rows) == 10
    assert [r["top"] for r in rows] == sorted((r["top"] for r in rows), reverse=True)
    assert rows[0]["top"] > 0
    # each answer is a real record: that neuron's activation at a position holding the token
    for r in rows[:3]:
        hit = smol.sql("SELECT count(*) AS n FROM activations a JOIN tokens t USING (seq_id, pos) "
                       "WHERE a.layer = ? AND a.neuron = ? AND t.token = ? AND a.activation = ?",
                       [r["layer"], r["neuron"], token, r["top"]])["n"][0].as_py()
        assert hit >= 1
