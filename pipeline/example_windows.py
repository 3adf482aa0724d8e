"""The token windows of the `neuron_examples` rows, for their `context_tokens` column.

An example's window is the flat corpus positions `start .. start + width - 1`, where
`start = seq_id * seq_len + ctx_start`; it never crosses a corpus window. `ExampleWindows` is
filled while `pipeline/corpus_tables.py` re-reads the corpus: every batch of whole corpus
windows hands over its token ids, and the rows whose windows lie in it copy theirs out, all
in numpy (no loop over rows). Memory: the [rows, width] int32 ids and two int64 per row,
whatever the corpus size. At the end the ids become text, each distinct id decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa

CHUNK_ROWS = 1 << 16  # rows per Arrow chunk: keeps each chunk's string data far below 2 GiB


class ExampleWindows:
    def __init__(self, starts: np.ndarray, width: int, seq_len: int):
        starts = np.asarray(starts, dtype=np.int64)
        if len(starts) and ((starts < 0).any() or (starts % seq_len + width > seq_len).any()):
            raise ValueError("an example window starts before the corpus or crosses a corpus window")
        self.width = width
        self._order = np.argsort(starts, kind="stable")
        self._sorted = starts[self._order]
        self._offsets = np.arange(width, dtype=np.int64)
        self.token_ids = np.full((len(starts), width), -1, dtype=np.int32)

    def add(self, first: int, flat_ids: np.ndarray) -> None:
        """The token ids of flat positions first, first + 1, ... (whole corpus windows)."""
        lo, hi = np.searchsorted(self._sorted, [first, first + len(flat_ids)])
        if hi > lo:
            at = (self._sorted[lo:hi] - first)[:, None] + self._offsets
            self.token_ids[self._order[lo:hi]] = flat_ids[at]

    def token_texts(self, decode: Callable[[Iterable[int]], dict[int, str]]) -> pa.ChunkedArray:
        """Every row's window as a list of token texts; `decode(ids)` gives {id: text}."""
        if (self.token_ids < 0).any():
            raise RuntimeError("some example windows lie outside the corpus that was read")
        present = np.flatnonzero(np.bincount(self.token_ids.reshape(-1))) if self.token_ids.size else []
        texts = decode(int(i) for i in present)
        vocab = pa.array([texts[int(i)] for i in present], pa.string())
        index = np.zeros(int(present[-1]) + 1 if len(present) else 0, dtype=np.int32)
        index[present] = np.arange(len(present), dtype=np.int32)  # token id -> its row in `vocab`
        chunks = []
        for lo in range(0, len(self.token_ids), CHUNK_ROWS):
            ids = self.token_ids[lo:lo + CHUNK_ROWS]
            offsets = np.arange(0, ids.size + 1, self.width, dtype=np.int32)
            chunks.append(pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(index[ids.reshape(-1)]))))
        return pa.chunked_array(chunks, type=pa.list_(pa.string()))

    def merged_texts(self, decode: Callable[[Iterable[int]], dict[int, str]],
                     decode_joint: Callable[[list[int]], str]) -> pa.ChunkedArray:
        """Every row's window as shown (`merge_fragments`): null for a row none of whose tokens
        decodes alone to U+FFFD (most rows), else its texts with split characters merged."""
        if (self.token_ids < 0).any():
            raise RuntimeError("some example windows lie outside the corpus that was read")
        present = np.flatnonzero(np.bincount(self.token_ids.reshape(-1))) if self.token_ids.size else []
        texts = decode(int(i) for i in present)
        broken = np.zeros(int(present[-1]) + 1 if len(present) else 0, dtype=bool)
        broken[[int(i) for i in present if FRAGMENT in texts[int(i)]]] = True
        rows = broken[self.token_ids].any(1) if self.token_ids.size else np.zeros(0, bool)
        out: list[list[str] | None] = [None] * len(self.token_ids)
        for r in np.flatnonzero(rows):
            ids = [int(i) for i in self.token_ids[r]]
            out[r] = merge_fragments(ids, [texts[i] for i in ids], decode_joint)
        return pa.chunked_array([pa.array(out[lo:lo + CHUNK_ROWS], pa.list_(pa.string()))
                                 for lo in range(0, max(len(out), 1), CHUNK_ROWS)], type=pa.list_(pa.string()))


FRAGMENT = "\ufffd"  # what a byte-level token that holds part of a character decodes to on its own


def merge_fragments(ids: list[int], texts: list[str], decode_joint: Callable[[list[int]], str]) -> list[str]:
    """Token texts as shown: each run of tokens whose own text holds U+FFFD (byte-level pieces of
    a character) is decoded together, and each token of the run shows what it completes: the
    text of the run up to it, less what the tokens before it showed and less any unfinished
    character at its end (so `” c.\ufffd”, “\ufffd”` becomes `” c.”, “—”`; a token that
    completes nothing shows ''). A character whose bytes are not all inside `ids` stays U+FFFD."""
    out = list(texts)
    i, n = 0, len(ids)
    while i < n:
        if FRAGMENT not in texts[i]:
            i += 1
            continue
        j = i
        while j < n and FRAGMENT in texts[j]:
            j += 1
        shown = ""
        for k in range(i, j):
            full = decode_joint(ids[i:k + 1])
            stable = full if k == j - 1 else full.rstrip(FRAGMENT)
            if not stable.startswith(shown):  # a decoder that rewrites earlier text: keep the token's own
                break
            out[k], shown = stable[len(shown):], stable
        i = j
    return out
