"""Tokenization and packing of documents into fixed windows of `seq_len` tokens.

The packing rule:
1. each document is tokenized with the model's tokenizer, `add_special_tokens=False`
   (a document that gives no tokens is skipped);
2. the documents are concatenated into one stream with `bos_id` between consecutive documents;
3. the stream is cut into chunks of `seq_len - 1` tokens and each window is `[bos_id] + chunk`.
So every window starts with BOS, and every document is preceded by a BOS: the window's own or
a separator. A separator that would be the first token of a chunk is dropped, since the
window's own BOS already precedes that document; no window starts with two BOS tokens.
The last incomplete chunk is dropped (no padding).

`doc_ids` is -1 at every BOS (position 0 and separators), which is how the statistics leave
BOS positions out (as Neuronpedia does). `max_tokens` caps the tokens read, counted as
windows x seq_len: `n_windows_for(max_tokens, seq_len)` windows. Window `i` is the same
whatever `batch_size`, `start_window` or `stop_window`, so a corpus can be built in pieces
(`--resume`, shards) and merged. Documents are tokenized a small group at a time with the fast
tokenizer's batch call, and reading stops at the last window needed: memory stays bounded by
the group and the batch, not the corpus.

What is elsewhere: where documents come from in `pipeline/corpus.py`; the `documents` and
`tokens` tables in `pipeline/corpus_tables.py`; the choice of `bos_id` per model in
`pipeline/models.py` (`document_separator`).
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.corpus import Document

if TYPE_CHECKING:
    from pipeline.corpus_index import Resume

GROUP_DOCS = 64  # documents per tokenizer batch call ...
GROUP_CHARS = 1 << 18  # ... or fewer, once their texts reach this many characters

_decoded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {token_id: text}


@dataclass
class WindowBatch:
    seq_ids: np.ndarray  # [batch] int64, consecutive global window indices
    token_ids: np.ndarray  # [batch seq_len] int64; column 0 is always bos_id
    doc_ids: np.ndarray  # [batch seq_len] int32; -1 at BOS tokens (position 0 and separators)


def n_windows_for(max_tokens: int, seq_len: int) -> int:
    """How many windows a cap of `max_tokens` tokens reads (incomplete windows are not read)."""
    return max_tokens // seq_len


def iter_windows(docs: Iterable[Document], tokenizer, bos_id: int, seq_len: int, max_tokens: int | None,
                 batch_size: int, on_document: Callable[[Document, int], None] | None = None,
                 start_window: int = 0, stop_window: int | None = None,
                 resume: Resume | None = None) -> Iterator[WindowBatch]:
    """Batches of the windows [start_window, stop_window) of the packed corpus (module docstring),
    at most `n_windows_for(max_tokens, seq_len)` of them; `None` means no limit.

    Windows before `start_window` are tokenized (to know where they fall) but not yielded, unless
    `resume` (`pipeline.corpus_index.CorpusIndex.resume_at(start_window)`) says where they end:
    then the documents before it are skipped untokenized.
    `on_document(doc, n_tokens)` is called once, in document order, for every document with
    tokens in a yielded window, with how many of its tokens are in yielded windows; it is called
    by the time the batch holding the document's last read token, or the next one, is yielded,
    and all calls are made before the iterator is exhausted."""
    stop = _stop_window(seq_len, batch_size, max_tokens, start_window, stop_window)
    if stop is not None and stop <= start_window:
        return
    chunk = seq_len - 1
    packer = _Packer(chunk, bos_id)
    if resume is not None and resume.skip_docs:
        if resume.stream_pos > start_window * chunk:
            raise ValueError("resume lies after start_window: it is not this window's")
        docs = itertools.islice(docs, resume.skip_docs, None)
        packer.seed(resume)
    reports = _Reports(packer.spans, on_document, start_window * chunk)
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (window, tokens [chunk], doc ids [chunk])
    for window, tokens, doc_ids in _cut_corpus(docs, tokenizer, packer):
        last = window + 1 == stop
        if window < start_window:
            reports.flush((window + 1) * chunk, final=False)  # forgets the documents of skipped windows
            continue
        pending.append((window, tokens, doc_ids))
        if len(pending) == batch_size or last:
            reports.flush((window + 1) * chunk, final=last)
            yield _batch(pending, bos_id)
            pending = []
        if last:
            return  # stops reading the corpus
    reports.flush(packer.n_windows * chunk, final=True)
    if pending:
        yield _batch(pending, bos_id)


def _stop_window(seq_len: int, batch_size: int, max_tokens: int | None, start_window: int,
                 stop_window: int | None) -> int | None:
    """The first window not to read (None: read to the end), after checking the arguments."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (BOS + one token), got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if start_window < 0 or (max_tokens is not None and max_tokens < 0):
        raise ValueError("start_window and max_tokens must not be negative")
    if max_tokens is None:
        return stop_window
    cap = n_windows_for(max_tokens, seq_len)
    return cap if stop_window is None else min(stop_window, cap)


def decode_tokens(tokenizer, token_ids: Iterable[int]) -> dict[int, str]:
    """Each id decoded on its own (GPT-2's 262 -> " the"), for `tokens.token`. Special tokens are
    kept and spaces are not cleaned up; a byte-level token that is part of a multi-byte
    character decodes to U+FFFD. Cached per tokenizer."""
    try:
        cache = _decoded.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    wanted = list(dict.fromkeys(int(i) for i in token_ids))
    missing = [i for i in wanted if i not in cache]
    if missing:
        texts = tokenizer.batch_decode([[i] for i in missing], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        cache.update(zip(missing, texts, strict=True))
    return {i: cache[i] for i in wanted}


def decode_joint(tokenizer, token_ids: Sequence[int]) -> str:
    """A run of ids decoded together (a character split over byte-level tokens comes out whole)."""
    return tokenizer.decode(list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


# --- packing -------------------------------------------------------------------------------


class _Packer:
    """The token stream and its cut into chunks; keeps only the tokens not yet cut."""

    def __init__(self, chunk: int, bos_id: int):
        self.chunk, self.bos_id = chunk, bos_id
        self.length = 0  # stream positions appended so far (documents and separators)
        self.n_windows = 0  # chunks cut so far
        self.n_docs = 0  # documents added (with at least one token)
        self.spans: deque[tuple[Document, int, int]] = deque()  # documents added: [start, end) positions
        self._tokens: list[list[int]] = []
        self._docs: list[tuple[int, int]] = []  # (doc_id or -1, how many positions) per piece

    def seed(self, resume: Resume) -> None:
        """Stand where the packer stood after the documents before `resume.skip_docs`: the
        positions of the chunk under way are placeholders (they belong to windows not yielded)."""
        self.length = resume.stream_pos
        self.n_docs = int(resume.after_a_document)
        self.n_windows, rest = divmod(resume.stream_pos, self.chunk)
        self._tokens, self._docs = ([[self.bos_id] * rest], [(-1, rest)]) if rest else ([], [])

    def add(self, doc: Document, ids: list[int]) -> None:
        if not ids:
            return
        if self.n_docs and self.length % self.chunk:  # at a chunk start the window's BOS separates
            self._append([self.bos_id], -1)
        self.n_docs += 1
        self.spans.append((doc, self.length, self.length + len(ids)))
        self._append(ids, doc.doc_id)

    def _append(self, ids: list[int], doc_id: int) -> None:
        self._tokens.append(ids)
        self._docs.append((doc_id, len(ids)))
        self.length += len(ids)

    def cut(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(window index, tokens, doc ids) of every complete chunk; the remainder is kept."""
        n_pos = sum(n for _, n in self._docs)
        n_full = n_pos // self.chunk
        if n_full == 0:
            return
        tokens = np.fromiter(itertools.chain.from_iterable(self._tokens), dtype=np.int64, count=n_pos)
        ids, counts = zip(*self._docs, strict=True)
        doc_ids = np.repeat(np.asarray(ids, dtype=np.int32), counts)
        rest = n_full * self.chunk
        self._tokens = [tokens[rest:].tolist()]
        self._docs = _runs(doc_ids[rest:])
        for i in range(n_full):
            sl = slice(i * self.chunk, (i + 1) * self.chunk)
            self.n_windows += 1
            yield self.n_windows - 1, tokens[sl], doc_ids[sl]


def _runs(doc_ids: np.ndarray) -> list[tuple[int, int]]:
    """Run-length encoding of a (short) doc id array."""
    if len(doc_ids) == 0:
        return []
    edges = np.flatnonzero(np.diff(doc_ids)) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [len(doc_ids)]]))
    return [(int(doc_ids[s]), int(n)) for s, n in zip(starts, lengths, strict=True)]


class _Reports:
    """Calls `on_document` once a document's count of yielded tokens is final."""

    def __init__(self, spans: deque[tuple[Document, int, int]], on_document: Callable[[Document, int], None] | None,
                 first_pos: int):
        self.spans, self.on_document, self.first_pos = spans, on_document, first_pos

    def flush(self, end_pos: int, final: bool) -> None:
        """Report documents ending by stream position `end_pos` (all of them if `final`), counting
        their tokens in [first_pos, end_pos): the positions of yielded windows."""
        while self.spans and (final or self.spans[0][2] <= end_pos):
            doc, a, b = self.spans.popleft()
            n = min(b, end_pos) - max(a, self.first_pos)
            if n > 0 and self.on_document is not None:
                self.on_document(doc, n)


def _batch(pending: list[tuple[int, np.ndarray, np.ndarray]], bos_id: int) -> WindowBatch:
    n, chunk = len(pending), len(pending[0][1])
    token_ids = np.full((n, chunk + 1), bos_id, dtype=np.int64)
    doc_ids = np.full((n, chunk + 1), -1, dtype=np.int32)
    for row, (_, tokens, docs) in enumerate(pending):
        token_ids[row, 1:] = tokens
        doc_ids[row, 1:] = docs
    return WindowBatch(np.array([w for w, _, _ in pending], dtype=np.int64), token_ids, doc_ids)


# --- tokenization --------------------------------------------------------------------------


def _cut_corpus(docs: Iterable[Document], tokenizer, packer: _Packer) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Every complete chunk of the corpus, tokenizing lazily: a group of documents at a time."""
    for group in document_groups(docs):
        for doc, ids in zip(group, encode_texts(tokenizer, [d.text for d in group]), strict=True):
            packer.add(doc, ids)
        yield from packer.cut()


def document_groups(docs: Iterable[Document]) -> Iterator[list[Document]]:
    group: list[Document] = []
    chars = 0
    for doc in docs:
        group.append(doc)
        chars += len(doc.text)
        if len(group) >= GROUP_DOCS or chars >= GROUP_CHARS:
            yield group
            group, chars = [], 0
    if group:
        yield group


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added. `verbose=False` silences the warning
    about texts longer than the model's context: they are cut into windows here."""
    if hasattr(tokenizer, "encode_batch") and not callable(tokenizer):  # a bare `tokenizers.Tokenizer`
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    out = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return out["input_ids"]
