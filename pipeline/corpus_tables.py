"""The corpus tables (`documents`, `tokens`) and the statistics' requests for corpus tokens.

Rather than holding every token id of the corpus in memory during the harvest, the build
re-reads the corpus once at the end (tokenization is cheap next to the model) and streams the
two tables out; on the way it resolves every `deferred` request of every table: the token ids
at given positions (`TokenIdsAt`, e.g. the token after each neuron's top examples) and the token
texts of given windows (`TokenWindows`, via `pipeline/example_windows.py`, e.g. the context
tokens of neuron and head examples). A merge of shards (`pipeline/shards.py`) reads the windows
and documents each shard kept instead of the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline import corpus as corpora
from pipeline.example_windows import ExampleWindows
from pipeline.shards import merged_documents
from pipeline.stats.deferred import TokenIdsAt, TokenWindows
from pipeline.windows import WindowBatch, decode_joint, decode_tokens, iter_windows
from store.schema import table


def write_corpus_tables(writer, params, model, n_windows: int, windows: Sequence[TokenWindows] = (),
                        ids_at: Sequence[TokenIdsAt] = (), parts=None
                        ) -> tuple[dict, list[pa.ChunkedArray], list[np.ndarray]]:
    """Stream `documents` and `tokens` into the writer. Returns corpus facts for the manifest, the
    token texts of each `windows` request (a list<string> ChunkedArray, row-aligned with it), and
    the token ids of each `ids_at` request (same shape as its positions; -1 for a position of -1,
    a BOS, or beyond the windows read). `parts`: the shards' `pipeline.shards.CorpusPart`s, in
    window order, read instead of the corpus."""
    seq_len = params.stats.seq_len
    examples = [ExampleWindows(w.starts, w.width, seq_len) for w in windows]
    wanted = np.unique(np.concatenate([np.asarray(r.positions, np.int64).reshape(-1) for r in ids_at] or
                                      [np.zeros(0, np.int64)]))
    wanted = wanted[wanted >= 0]
    found = np.full(wanted.shape, -1, dtype=np.int64)
    docs: list[dict] = []
    n_docs = 0
    decoded: dict[int, str] = {}
    doc_schema, tok_schema = table("documents").arrow_schema(), table("tokens").arrow_schema()

    with writer.table_writer("documents") as doc_out, writer.table_writer("tokens") as tok_out:

        def on_document(doc, n_tokens: int) -> None:
            add_document({"doc_id": doc.doc_id, "source": doc.source, "n_chars": len(doc.text),
                          "n_tokens": n_tokens, "text": doc.text})

        def add_document(row: dict) -> None:
            nonlocal n_docs
            docs.append(row)
            n_docs += 1
            if len(docs) >= 1024:
                doc_out.write(pa.Table.from_pylist(docs, schema=doc_schema))
                docs.clear()

        if parts is None:
            batches = iter_windows(corpora.iter_documents(params.corpus), model.tokenizer, model.bos_token_id,
                                   seq_len, params.max_tokens, 64, on_document=on_document,
                                   stop_window=n_windows)
        else:
            batches = _part_batches(parts, 64)
            for row in merged_documents(parts):
                add_document(row)
        for batch in batches:
            ids = batch.token_ids
            missing = [int(i) for i in np.unique(ids) if int(i) not in decoded]
            decoded.update(decode_tokens(model.tokenizer, missing))
            n, s = ids.shape
            first = int(batch.seq_ids[0]) * seq_len
            flat_ids = ids.reshape(-1)
            is_bos = (batch.doc_ids < 0).reshape(-1)
            lo, hi = np.searchsorted(wanted, [first, first + n * s])
            idx = wanted[lo:hi] - first
            found[lo:hi] = np.where(is_bos[idx], -1, flat_ids[idx])
            for ex in examples:
                ex.add(first, flat_ids)
            tok_out.write(pa.table({
                "seq_id": np.repeat(batch.seq_ids.astype(np.int32), s),
                "pos": np.tile(np.arange(s, dtype=np.int16), n),
                "doc_id": batch.doc_ids.reshape(-1).astype(np.int32),
                "token_id": flat_ids.astype(np.int32),
                "token": [decoded[int(i)] for i in flat_ids],
            }, schema=tok_schema))
        if docs:
            doc_out.write(pa.Table.from_pylist(docs, schema=doc_schema))

    solo = lambda ids: decode_tokens(model.tokenizer, ids)  # noqa: E731
    texts = [ex.merged_texts(solo, lambda ids: decode_joint(model.tokenizer, ids)) if w.merged else ex.token_texts(solo)
             for ex, w in zip(examples, windows, strict=True)]
    return {"n_documents": n_docs}, texts, [_lookup(r.positions, wanted, found) for r in ids_at]


def _part_batches(parts, size: int):
    """The parts' windows as `WindowBatch`es of `size` windows, in order."""
    for part in parts:
        for lo in range(0, len(part.token_ids), size):
            ids = part.token_ids[lo:lo + size].astype(np.int64)
            first = part.first_window + lo
            yield WindowBatch(np.arange(first, first + len(ids), dtype=np.int64), ids, part.doc_ids[lo:lo + size])


def _lookup(positions, wanted: np.ndarray, found: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, np.int64)
    out = np.full(positions.shape, -1, dtype=np.int64)
    ok = positions >= 0
    at = np.searchsorted(wanted, positions[ok])
    hit = at < len(wanted)
    hit[hit] = wanted[at[hit]] == positions[ok][hit]
    vals = np.full(at.shape, -1, dtype=np.int64)
    vals[hit] = found[at[hit]]
    out[ok] = vals
    return out
