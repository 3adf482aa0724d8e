"""The corpus index: where each window begins, so that a shard tokenizes only its own range.

Checked against the packing itself: starting at any window through the index gives the windows
that reading from the first document gives, on corpora built to hit the packing rule's cases
(documents without tokens, documents that end exactly at a chunk's end so that the separator
is dropped, documents longer than several windows).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import corpus_index
from pipeline import windows as win
from pipeline.corpus import Document, iter_documents
from pipeline.corpus_index import CorpusIndex, count_tokens
from pipeline.models import CACHE_ENV

SEQ_LEN = 8  # chunks of 7 tokens


def _docs(gpt2_tokenizer) -> list[Document]:
    """Documents of chosen token counts: ' a' is one GPT-2 token."""
    counts = [3, 4, 0, 7, 6, 1, 20, 0, 0, 13, 2, 7, 5, 30, 1, 1, 6]
    docs = [Document(i, f"d{i}", " a" * n) for i, n in enumerate(counts)]
    assert [len(ids) for ids in win.encode_texts(gpt2_tokenizer, [d.text for d in docs])] == counts
    return docs


def _windows(docs, tok, **kw):
    return [(int(s), t.tolist(), d.tolist()) for b in win.iter_windows(docs, tok, 50256, SEQ_LEN, None, 3, **kw)
            for s, t, d in zip(b.seq_ids, b.token_ids, b.doc_ids, strict=True)]


def test_starting_anywhere_through_the_index_equals_reading_from_the_start(gpt2_tokenizer):
    docs = _docs(gpt2_tokenizer)
    index = CorpusIndex(np.array([len(i) for i in win.encode_texts(gpt2_tokenizer, [d.text for d in docs])]))
    every = _windows(docs, gpt2_tokenizer)
    assert len(every) == index.n_windows(SEQ_LEN) > 10
    reported_all: list[tuple[int, int]] = []
    _windows(docs, gpt2_tokenizer, on_document=lambda d, n: reported_all.append((d.doc_id, n)))
    for start in range(len(every) + 1):
        for stop in (start + 1, start + 4, None):
            reported: list[tuple[int, int]] = []
            got = _windows(docs, gpt2_tokenizer, start_window=start, stop_window=stop,
                           resume=index.resume_at(start, SEQ_LEN),
                           on_document=lambda d, n, r=reported: r.append((d.doc_id, n)))
            assert got == every[start:stop], (start, stop)
            n_reported = sum(n for _, n in reported)
            assert n_reported == sum(int((np.array(d) >= 0).sum()) for _, _, d in got)
    assert sum(n for _, n in reported_all) == sum(int((np.array(d) >= 0).sum()) for _, _, d in every)


def test_resume_skips_the_documents_before_the_window(gpt2_tokenizer):
    docs = _docs(gpt2_tokenizer)
    index = CorpusIndex(np.array([len(i) for i in win.encode_texts(gpt2_tokenizer, [d.text for d in docs])]))
    resume = index.resume_at(9, SEQ_LEN)
    begins, ends = index.ends(SEQ_LEN)
    # by hand: document 11 begins at 63 = 9 x 7, a chunk's start, so its separator is dropped
    assert (resume.skip_docs, resume.stream_pos, resume.after_a_document) == (11, 63, True)
    assert begins[11] <= 9 * (SEQ_LEN - 1) < ends[11] == 70
    assert index.resume_at(8, SEQ_LEN).skip_docs == 9  # window 8 (56) is inside document 9 [47, 60)
    with pytest.raises(ValueError, match="not this window"):
        next(win.iter_windows(docs, gpt2_tokenizer, 50256, SEQ_LEN, None, 3, start_window=2, resume=resume))


def test_shards_tokenize_the_corpus_about_once(gpt2_tokenizer, monkeypatch, tmp_path):
    """N shards through the index tokenize O(corpus), not O(N x corpus): every document once,
    plus at most a tokenizer group of documents read ahead per shard."""
    corpus = tmp_path / "corpus.jsonl"  # one document per line
    corpus.write_text("\n".join(json.dumps({"text": f"document {i} says" + " more" * (i % 23)}) for i in range(1500)))
    spec = str(corpus)
    index = count_tokens(spec, gpt2_tokenizer)
    n_windows = index.n_windows(SEQ_LEN)
    tokenized: list[int] = []
    real = win.encode_texts
    monkeypatch.setattr(win, "encode_texts", lambda tok, texts: tokenized.append(len(texts)) or real(tok, texts))
    every = _windows(list(iter_documents(spec)), gpt2_tokenizer)
    assert len(every) == n_windows and sum(tokenized) == 1500
    for n_shards in (4, 16):
        tokenized.clear()
        bounds = [n_windows * i // n_shards for i in range(n_shards + 1)]
        got = []
        for a, b in zip(bounds, bounds[1:], strict=False):
            got += _windows(iter_documents(spec), gpt2_tokenizer, start_window=a, stop_window=b,
                            resume=index.resume_at(a, SEQ_LEN))
        assert got == every
        assert sum(tokenized) <= 1500 + n_shards * win.GROUP_DOCS  # without the index: ~ n_shards / 2 x 1500


def test_the_index_is_cached_by_corpus_content(gpt2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "one two three"}\n{"text": " four five"}\n')

    class Model:  # what corpus_index reads of a loaded model: its name and tokenizer
        name, tokenizer = "gpt2-tokenizer", gpt2_tokenizer

    first = corpus_index.corpus_index(str(corpus), Model, fingerprint="a")
    assert first.counts.tolist() == [3, 2] and len(list((tmp_path / "cache" / "corpus_index").iterdir())) == 1
    corpus.write_text('{"text": "one"}\n')  # same fingerprint: the cached counts come back, not a recount
    assert corpus_index.corpus_index(str(corpus), Model, fingerprint="a").counts.tolist() == [3, 2]
    assert corpus_index.corpus_index(str(corpus), Model, fingerprint="b").counts.tolist() == [1]


def test_a_capped_build_counts_only_what_it_needs(gpt2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(win, "GROUP_DOCS", 4)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": " a" * 10}) for _ in range(40)))

    class Model:
        name, tokenizer = "gpt2-tokenizer", gpt2_tokenizer

    part = corpus_index.corpus_index(str(corpus), Model, fingerprint="a", enough=75)
    assert not part.complete and part.counts.tolist() == [10] * 8  # two groups of 4: 80 >= 75 tokens
    corpus.write_text("")  # from here the cache answers (a recount would find nothing)
    assert corpus_index.corpus_index(str(corpus), Model, fingerprint="a", enough=60).counts.tolist() == [10] * 8
    corpus.write_text("\n".join(json.dumps({"text": " a" * 10}) for _ in range(40)))
    whole = corpus_index.corpus_index(str(corpus), Model, fingerprint="a")  # more than it holds: counted again
    assert whole.complete and whole.counts.tolist() == [10] * 40
