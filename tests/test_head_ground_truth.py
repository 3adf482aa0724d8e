"""Ground truth recovered by a whole build: the trained attention-only model of
`tests/trained_induction.py`, whose previous-token and induction heads are measured directly
there, built into a store over text with repeated segments. The store's own rankings must name
the same heads, and K-composition must name that pair first."""

from __future__ import annotations

import pytest

from pipeline.build import BuildParams, build
from pipeline.models import load_model
from pipeline.stats import StatsConfig
from store import open_store, verify_store


@pytest.fixture(scope="module")
def store(induction_model, tmp_path_factory):
    facts = induction_model
    model = load_model(str(facts.folder))
    from trained_induction import repeated_texts

    corpus = tmp_path_factory.mktemp("corpus") / "repeats.txt"
    corpus.write_text("\n\n".join(repeated_texts(facts.token_ids, model.tokenizer, n=96)) + "\n")
    params = BuildParams(model=str(facts.folder), corpus=str(corpus), max_tokens=None,
                         stats=StatsConfig(seq_len=facts.n_ctx, top_k=5, records=8), batch_size=8)
    return open_store(build(params, tmp_path_factory.mktemp("gt") / "store", progress=False, model=model))


def _first(store, sql: str) -> tuple:
    return tuple(store.sql(sql).to_pylist()[0].values())


def test_the_trained_heads_rank_first(store, induction_model):
    prev, induction = induction_model.prev_token_head, induction_model.induction_head
    assert _first(store, "SELECT layer, head FROM heads ORDER BY prev_token_score DESC LIMIT 1") == prev
    assert _first(store, "SELECT layer, head FROM heads ORDER BY induction_score DESC LIMIT 1") == induction
    scores = store.sql("SELECT induction_score AS s FROM heads ORDER BY s DESC").column("s").to_pylist()
    assert scores[0] > 0.5 and scores[0] > 2 * scores[1]


def test_that_pair_composes_first_by_k_composition(store, induction_model):
    prev, induction = induction_model.prev_token_head, induction_model.induction_head
    top = _first(store, "SELECT src_layer, src_head, dst_layer, dst_head FROM head_composition "
                        "WHERE kind = 'k' ORDER BY score DESC LIMIT 1")
    assert top == (*prev, *induction)
    k = store.sql("SELECT score, baseline FROM head_composition WHERE kind = 'k' ORDER BY score DESC").to_pylist()
    assert k[0]["score"] > 1.5 * k[1]["score"] and k[1]["score"] < 2 * k[1]["baseline"]
    assert verify_store(store.path) == []
