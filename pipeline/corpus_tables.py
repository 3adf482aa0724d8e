"""The corpus tables (`documents`, `tokens`) and what needs the corpus's token ids.

Rather than holding every token id of the corpus in memory during the harvest, the build
re-reads the corpus once at the end (tokenization is cheap next to the model) and streams the
two tables out; on the way it picks up the token that follows each neuron's top examples, for
the key-value agreement score, and every example's window of tokens (`pipeline/example_windows.py`)
for `neuron_examples.context_tokens`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import corpus as corpora
from pipeline.example_windows import ExampleWindows
from pipeline.windows import decode_tokens, iter_windows
from store.schema import table


def write_corpus_tables(writer, params, model, n_windows: int, top_positions: np.ndarray,
                        example_starts: np.ndarray) -> dict:
    """Stream `documents` and `tokens` into the writer; return corpus facts for the manifest,
    `next_token_ids`: for every top example position, the token after it (-1 if none: the end of
    the window, or a document boundary), and `context_tokens`: for every `neuron_examples` row,
    given by the flat position of its window's start (seq_id * seq_len + ctx_start), the texts
    of the window's tokens (a list<string> ChunkedArray, in the order of `example_starts`)."""
    seq_len = params.stats.seq_len
    examples = ExampleWindows(example_starts, params.stats.window.width(seq_len), seq_len)
    next_pos = np.where(top_positions >= 0, top_positions + 1, -1)
    next_pos[(next_pos % seq_len) == 0] = -1  # the next position is in another window
    wanted = np.unique(next_pos[next_pos >= 0])
    found = np.full(wanted.shape, -1, dtype=np.int64)
    docs: list[dict] = []
    n_docs = 0
    decoded: dict[int, str] = {}
    doc_schema, tok_schema = table("documents").arrow_schema(), table("tokens").arrow_schema()

    with writer.table_writer("documents") as doc_out, writer.table_writer("tokens") as tok_out:

        def on_document(doc, n_tokens: int) -> None:
            nonlocal n_docs
            docs.append({"doc_id": doc.doc_id, "source": doc.source, "n_chars": len(doc.text),
                         "n_tokens": n_tokens, "text": doc.text})
            n_docs += 1
            if len(docs) >= 1024:
                doc_out.write(pa.Table.from_pylist(docs, schema=doc_schema))
                docs.clear()

        windows = iter_windows(corpora.iter_documents(params.corpus), model.tokenizer, model.bos_token_id,
                               seq_len, params.max_tokens, 64, on_document=on_document,
                               stop_window=n_windows)
        for batch in windows:
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
            examples.add(first, flat_ids)
            tok_out.write(pa.table({
                "seq_id": np.repeat(batch.seq_ids.astype(np.int32), s),
                "pos": np.tile(np.arange(s, dtype=np.int16), n),
                "doc_id": batch.doc_ids.reshape(-1).astype(np.int32),
                "token_id": flat_ids.astype(np.int32),
                "token": [decoded[int(i)] for i in flat_ids],
            }, schema=tok_schema))
        if docs:
            doc_out.write(pa.Table.from_pylist(docs, schema=doc_schema))

    next_ids = np.full(next_pos.shape, -1, dtype=np.int64)
    ok = next_pos >= 0
    next_ids[ok] = found[np.searchsorted(wanted, next_pos[ok])]
    context_tokens = examples.token_texts(lambda ids: decode_tokens(model.tokenizer, ids))
    return {"n_documents": n_docs, "next_token_ids": next_ids, "context_tokens": context_tokens}


def agreement_column(next_token_ids: np.ndarray, top_value_ids: list) -> np.ndarray:
    """kv_agreement_frac per neuron: the share of its top examples (those with a next token)
    whose next token is among its top value tokens. NaN when no example has a next token."""
    flat_next = next_token_ids.reshape(-1, next_token_ids.shape[-1])  # [layer*neuron, k]
    values = np.asarray(top_value_ids)  # [layer*neuron, n_value_tokens]
    hits = (flat_next[:, :, None] == values[:, None, :]).any(-1) & (flat_next >= 0)
    has_next = (flat_next >= 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(has_next > 0, hits.sum(1) / has_next, np.nan).astype(np.float32)
