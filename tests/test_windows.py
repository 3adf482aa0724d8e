"""Packing documents into windows, checked against a brute-force reference of the packing rule
(pipeline/windows.py's docstring) with GPT-2's real tokenizer, plus a toy tokenizer where exact
token counts matter."""

import itertools

import numpy as np
import pytest

from pipeline.corpus import Document, iter_documents
from pipeline.windows import WindowBatch, decode_tokens, iter_windows, n_windows_for

BOS = 50256  # <|endoftext|>

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "hum", "old", "tunes;", "résumé", "naïve", "café", "東京", "🙂", "1,234.5", "—", "end"]


def make_docs(n: int = 40, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    return [Document(i, f"doc{i}", " ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))).capitalize())
            for i in range(n)]


class ToyTokenizer:
    """'3 4 5' -> [3, 4, 5]; lets a test place document boundaries exactly."""

    def __call__(self, texts, add_special_tokens, return_attention_mask, verbose):
        assert add_special_tokens is False
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


def reference(token_lists: list[list[int]], doc_ids: list[int], seq_len: int):
    """The packing rule written the obvious way: (tokens [n seq_len], doc ids [n seq_len])."""
    chunk = seq_len - 1
    stream: list[int] = []
    owners: list[int] = []
    for i, (doc_id, ids) in enumerate((d, t) for d, t in zip(doc_ids, token_lists, strict=True) if t):
        if i > 0 and len(stream) % chunk:
            stream.append(BOS)
            owners.append(-1)
        stream += ids
        owners += [doc_id] * len(ids)
    n = len(stream) // chunk
    tokens = np.array([[BOS] + stream[w * chunk:(w + 1) * chunk] for w in range(n)], dtype=np.int64)
    docs = np.array([[-1] + owners[w * chunk:(w + 1) * chunk] for w in range(n)], dtype=np.int32)
    return tokens.reshape(n, seq_len), docs.reshape(n, seq_len)


def collect(batches, seq_len: int) -> WindowBatch:
    batches = list(batches)
    if not batches:
        return WindowBatch(np.zeros(0, np.int64), np.zeros((0, seq_len), np.int64), np.zeros((0, seq_len), np.int32))
    return WindowBatch(*(np.concatenate([getattr(b, f) for b in batches])
                         for f in ("seq_ids", "token_ids", "doc_ids")))


def windows(docs, tok, seq_len=16, max_tokens=None, batch_size=4, **kw) -> WindowBatch:
    return collect(iter_windows(docs, tok, BOS, seq_len, max_tokens, batch_size, **kw), seq_len)


def test_windows_match_the_packing_rule(gpt2_tokenizer):
    docs = make_docs()
    ids = [gpt2_tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in docs]
    want_tokens, want_docs = reference(ids, [d.doc_id for d in docs], 16)
    got = windows(docs, gpt2_tokenizer)
    assert got.token_ids.dtype == np.int64 and got.doc_ids.dtype == np.int32 and got.seq_ids.dtype == np.int64
    np.testing.assert_array_equal(got.token_ids, want_tokens)
    np.testing.assert_array_equal(got.doc_ids, want_docs)
    np.testing.assert_array_equal(got.seq_ids, np.arange(len(want_tokens)))
    assert len(got.seq_ids) > 20


def test_every_window_starts_with_bos_and_documents_are_separated(gpt2_tokenizer):
    got = windows(make_docs(), gpt2_tokenizer, seq_len=12)
    assert (got.token_ids[:, 0] == BOS).all() and (got.doc_ids[:, 0] == -1).all()
    assert ((got.doc_ids == -1) == (got.token_ids == BOS)).all()  # the texts hold no <|endoftext|>
    assert (got.doc_ids[:, 1] != -1).all()  # a separator never directly follows the window's BOS
    for row in got.doc_ids:  # within a window, a change of document goes through one BOS
        for a, b in itertools.pairwise(row):
            assert a == b or -1 in (a, b)
            assert not a == b == -1


def test_stream_without_bos_is_the_documents_tokens(gpt2_tokenizer):
    docs = make_docs()
    got = windows(docs, gpt2_tokenizer, seq_len=32)
    body_tokens, body_docs = got.token_ids[:, 1:].reshape(-1), got.doc_ids[:, 1:].reshape(-1)
    keep = body_docs >= 0
    stream = body_tokens[keep].tolist()
    expected = list(itertools.chain.from_iterable(
        gpt2_tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in docs))
    assert stream == expected[:len(stream)] and len(expected) - len(stream) < 31  # only the last chunk dropped
    text = gpt2_tokenizer.decode(body_tokens[keep & (body_docs == 3)].tolist())
    assert text == docs[3].text


def test_separator_at_a_chunk_start_is_dropped():
    docs = [Document(0, "a", "1 2 3"), Document(1, "b", "4 5 6 7"), Document(2, "c", "8 9"),
            Document(3, "d", ""), Document(4, "e", "10 11 12 13 14 15")]
    got = windows(docs, ToyTokenizer(), seq_len=4)  # chunks of 3
    assert got.token_ids.tolist() == [[BOS, 1, 2, 3], [BOS, 4, 5, 6], [BOS, 7, BOS, 8], [BOS, 9, BOS, 10],
                                      [BOS, 11, 12, 13]]
    assert got.doc_ids.tolist() == [[-1, 0, 0, 0], [-1, 1, 1, 1], [-1, 1, -1, 2], [-1, 2, -1, 4],
                                    [-1, 4, 4, 4]]


@pytest.mark.parametrize("seq_len", [2, 7, 64])
def test_batch_size_does_not_change_the_windows(gpt2_tokenizer, seq_len):
    docs = make_docs(60, seed=1)
    one = windows(docs, gpt2_tokenizer, seq_len=seq_len, batch_size=1)
    for batch_size in (3, 8, 1000):
        batches = list(iter_windows(docs, gpt2_tokenizer, BOS, seq_len, None, batch_size))
        assert all(len(b.seq_ids) == batch_size for b in batches[:-1]) and 0 < len(batches[-1].seq_ids) <= batch_size
        got = collect(batches, seq_len)
        for field in ("seq_ids", "token_ids", "doc_ids"):
            np.testing.assert_array_equal(getattr(got, field), getattr(one, field))


def test_max_tokens_caps_the_windows_and_stops_reading(gpt2_tokenizer):
    full = windows(make_docs(), gpt2_tokenizer, seq_len=16)
    for max_tokens in (0, 15, 16, 100, 16 * 7):
        got = windows(make_docs(), gpt2_tokenizer, seq_len=16, max_tokens=max_tokens)
        assert len(got.seq_ids) == n_windows_for(max_tokens, 16) == max_tokens // 16
        assert got.token_ids.size <= max_tokens
        np.testing.assert_array_equal(got.token_ids, full.token_ids[:len(got.seq_ids)])
    assert len(windows(make_docs(), gpt2_tokenizer, seq_len=16, max_tokens=10**9).seq_ids) == len(full.seq_ids)

    endless = (Document(i, "x", "the same sentence again") for i in itertools.count())
    got = windows(endless, gpt2_tokenizer, seq_len=16, max_tokens=16 * 50, batch_size=8)
    assert got.seq_ids.tolist() == list(range(50))


@pytest.mark.parametrize(("start", "stop"), [(0, None), (0, 5), (3, 11), (7, None), (5, 5), (9, 4), (0, 10**6),
                                             (10**6, None)])
def test_start_and_stop_window_equal_slicing(gpt2_tokenizer, start, stop):
    docs = make_docs()
    full = windows(docs, gpt2_tokenizer, seq_len=16, batch_size=5)
    got = windows(docs, gpt2_tokenizer, seq_len=16, batch_size=5, start_window=start, stop_window=stop)
    for field in ("seq_ids", "token_ids", "doc_ids"):
        np.testing.assert_array_equal(getattr(got, field), getattr(full, field)[start:stop])


def test_two_halves_equal_one_pass_under_a_cap(gpt2_tokenizer):
    docs, cap = make_docs(), 16 * 20
    whole = windows(docs, gpt2_tokenizer, max_tokens=cap)
    halves = [windows(docs, gpt2_tokenizer, max_tokens=cap, stop_window=9),
              windows(docs, gpt2_tokenizer, max_tokens=cap, start_window=9)]
    np.testing.assert_array_equal(np.concatenate([h.token_ids for h in halves]), whole.token_ids)
    np.testing.assert_array_equal(np.concatenate([h.seq_ids for h in halves]), whole.seq_ids)


@pytest.mark.parametrize(("start", "stop", "max_tokens"), [(0, None, None), (0, None, 16 * 9), (4, 13, None),
                                                           (6, None, 16 * 30), (1000, None, None)])
def test_on_document_counts_the_tokens_read(gpt2_tokenizer, start, stop, max_tokens):
    docs = make_docs()
    calls: list[tuple[int, int]] = []
    got = windows(docs, gpt2_tokenizer, max_tokens=max_tokens, batch_size=3, start_window=start, stop_window=stop,
                  on_document=lambda doc, n: calls.append((doc.doc_id, n)))
    read = got.doc_ids[got.doc_ids >= 0]
    ids, counts = np.unique(read, return_counts=True)
    assert calls == list(zip(ids.tolist(), counts.tolist(), strict=True))  # once each, in order, exact counts
    assert sum(n for _, n in calls) == (got.doc_ids >= 0).sum()


def test_on_document_is_called_before_the_batch_after_the_document_ends(gpt2_tokenizer):
    reported: set[int] = set()
    it = iter_windows(make_docs(), gpt2_tokenizer, BOS, 16, None, 2, on_document=lambda d, n: reported.add(d.doc_id))
    previous = None
    for batch in it:
        if previous is not None:  # every document that ended in the previous batch is reported
            ended = set(previous.doc_ids[previous.doc_ids >= 0].tolist()) - set(batch.doc_ids.reshape(-1).tolist())
            assert ended <= reported
        previous = batch


def test_documents_without_tokens_are_skipped():
    docs = [Document(0, "a", "1 2"), Document(1, "b", "   "), Document(2, "c", "3 4 5")]
    calls = []
    got = windows(docs, ToyTokenizer(), seq_len=4, on_document=lambda d, n: calls.append((d.doc_id, n)))
    assert got.token_ids.tolist() == [[BOS, 1, 2, BOS], [BOS, 3, 4, 5]]
    assert calls == [(0, 2), (2, 3)]


def test_a_bare_tokenizers_tokenizer_gives_the_same_windows(gpt2_tokenizer):
    docs = make_docs()
    np.testing.assert_array_equal(windows(docs, gpt2_tokenizer.backend_tokenizer).token_ids,
                                  windows(docs, gpt2_tokenizer).token_ids)


def test_bad_arguments(gpt2_tokenizer):
    for kw in ({"seq_len": 1}, {"batch_size": 0}, {"start_window": -1}, {"max_tokens": -5}):
        args = {"seq_len": 16, "max_tokens": None, "batch_size": 4, **kw}
        with pytest.raises(ValueError):
            list(iter_windows(make_docs(), gpt2_tokenizer, BOS, **args))


def test_decode_tokens(gpt2_tokenizer):
    decoded = decode_tokens(gpt2_tokenizer, [262, 15496, 262, BOS, 11])
    assert decoded == {262: " the", 15496: "Hello", BOS: "<|endoftext|>", 11: ","}
    assert decode_tokens(gpt2_tokenizer, []) == {}
    assert decode_tokens(gpt2_tokenizer, np.array([262], dtype=np.int64)) == {262: " the"}


def test_wiki_vital_windows(gpt2_tokenizer):
    calls = []
    got = windows(iter_documents("wiki-vital"), gpt2_tokenizer, seq_len=128, max_tokens=128 * 40, batch_size=16,
                  on_document=lambda d, n: calls.append(n))
    assert got.token_ids.shape == (40, 128)
    assert sum(calls) == (got.doc_ids >= 0).sum() and len(calls) > 10
    assert "Western art music" in gpt2_tokenizer.decode(got.token_ids[0, 1:].tolist())
