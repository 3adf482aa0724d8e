"""Where every window of a packed corpus begins, from one tokenize-and-count pass, cached.

A build in pieces (shards, `--resume`) starts at some window `w`. Without an index, finding the
first token of window `w` means tokenizing every document before it, so N shards would
tokenize O(N x corpus). The index is the number of tokens of each document (in reading order);
with the packing rule of `pipeline/windows.py` it gives, by arithmetic, the document that holds
window `w`'s first token and the state the packer had just before that document (`Resume`).
A shard then skips the documents before it unread by the tokenizer (their text is still read:
I/O, not tokenization) and tokenizes only its own range.

The counts depend on the corpus content and the tokenizer, so the cache file is named by the
corpus fingerprint and the model: `$MECHSCOPE_CACHE` (default `~/.cache/mechscope`) /
`corpus_index/<key>.npz`. A driver (`mechscope build --ray`) computes it once and hands it to
every shard.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from pipeline import corpus as corpora
from pipeline.models import cache_dir
from pipeline.windows import document_groups, encode_texts


@dataclass(frozen=True)
class Resume:
    """The packer's state just before document `skip_docs` (in reading order): the stream
    positions taken so far and whether any document with tokens came before."""

    skip_docs: int
    stream_pos: int
    after_a_document: bool


@dataclass(frozen=True)
class CorpusIndex:
    counts: np.ndarray  # int64 [documents]: tokens of each document of `iter_documents`, in order
    complete: bool = True  # False: the first documents only (enough for a build capped by --max-tokens)
    _ends: dict = field(default_factory=dict, compare=False, repr=False)  # seq_len -> ends(seq_len)

    def ends(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(begin, end) stream positions of every document: `begin` is where the packer stood
        before it (its separator, if any, comes next), `end` one past its last token. A
        document without tokens takes no positions. Computed once per seq_len (a loop over
        the documents: whether a separator is needed depends on where the last one ended)."""
        if seq_len not in self._ends:
            self._ends[seq_len] = self._positions(seq_len)
        return self._ends[seq_len]

    def _positions(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        chunk = seq_len - 1
        begins = np.empty(len(self.counts), dtype=np.int64)
        ends = np.empty(len(self.counts), dtype=np.int64)
        pos, seen = 0, False
        for i, n in enumerate(self.counts.tolist()):
            begins[i] = pos
            if n:
                if seen and pos % chunk:  # the separator, unless the document opens a chunk
                    pos += 1
                pos += n
                seen = True
            ends[i] = pos
        return begins, ends

    def n_windows(self, seq_len: int) -> int:
        """Complete windows in the packed corpus (the last incomplete chunk is dropped); of an
        incomplete index, the windows its documents fill."""
        _, ends = self.ends(seq_len)
        return int(ends[-1]) // (seq_len - 1) if len(ends) else 0

    def resume_at(self, window: int, seq_len: int) -> Resume:
        """Where to start reading for window `window`: the last document that begins (separator
        included) at or before the window's first stream position. Positions between that
        document's begin and the window are in earlier windows, which are cut but not yielded."""
        if window <= 0:
            return Resume(0, 0, False)
        begins, _ = self.ends(seq_len)
        first = window * (seq_len - 1)
        k = int(np.searchsorted(begins, first, side="right")) - 1
        return Resume(k, int(begins[k]), bool((self.counts[:k] > 0).any()))


def count_tokens(spec: str, tokenizer, enough: int | None = None) -> CorpusIndex:
    """The index, by tokenizing the documents once (in the same groups as the harvest); with
    `enough`, it stops after the group that brings the count to that many tokens (a build
    capped by --max-tokens needs no more: its windows hold fewer positions than that)."""
    counts: list[int] = []
    total = 0
    for group in document_groups(corpora.iter_documents(spec)):
        group_counts = [len(ids) for ids in encode_texts(tokenizer, [d.text for d in group])]
        counts += group_counts
        total += sum(group_counts)
        if enough is not None and total >= enough:
            return CorpusIndex(np.asarray(counts, dtype=np.int64), complete=False)
    return CorpusIndex(np.asarray(counts, dtype=np.int64))


def corpus_index(spec: str, model, fingerprint: str, enough: int | None = None) -> CorpusIndex:
    """The index of corpus `spec` under `model`'s tokenizer, covering at least `enough` tokens
    (None: the whole corpus): from the cache, or counted and cached (written atomically:
    concurrent shards on one machine may race to write it)."""
    key = hashlib.sha256(f"{fingerprint}\0{model.name}\0{len(model.tokenizer)}".encode()).hexdigest()[:32]
    path = cache_dir() / "corpus_index" / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                cached = CorpusIndex(f["counts"].astype(np.int64), complete=bool(f["complete"]))
            if cached.complete or (enough is not None and int(cached.counts.sum()) >= enough):
                return cached
        except (OSError, ValueError, KeyError):
            pass  # damaged: count again below
    index = count_tokens(spec, model.tokenizer, enough)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, counts=index.counts, complete=np.asarray(index.complete))
    os.replace(tmp, path)
    return index
