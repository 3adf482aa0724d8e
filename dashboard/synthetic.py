"""A tiny synthetic store with planted neurons, for the dashboard's tests (no model, no torch).

`write_synthetic_store(out)` writes 2 layers x 8 neurons over 6 windows of 16 tokens through
`store.StoreWriter`, with rows valid under `store.schema` and a manifest shaped like the
pipeline's. Planted facts the tests check:
- layer 0, neuron 2 fires on " Paris" and promotes " Paris" (first value token);
- layer 1, neuron 3 fires on the token `<img src=x onerror=alert(1)>` (must render as text);
- layer 1, neuron 5 has deletion_cos -0.9 (the most deletion-like).
The real statistics are computed by `pipeline/`; this only imitates their shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from store import StoreWriter
from store.histogram_bins import N_BINS, ZERO_BIN, bin_of, describe
from store.schema import TABLES_BY_NAME

XSS_TOKEN = "<img src=x onerror=alert(1)>"
BOS = "<|endoftext|>"
VOCAB = (" the", " Paris", " is", " capital", " of", " France", ".", "\n", " cat", XSS_TOKEN,
         " dog", " London", ",", " and", " a", " city")
N_LAYERS, D_MLP, SEQ_LEN, N_WINDOWS, TOP_K, RECORDS = 2, 8, 16, 6, 5, 12
CTX_BEFORE, CTX_WIDTH = 4, 7
PLANTED = {(0, 2): " Paris", (1, 3): XSS_TOKEN}


def _corpus(rng: np.random.Generator) -> np.ndarray:
    ids = rng.integers(0, len(VOCAB), size=(N_WINDOWS, SEQ_LEN))
    for seq, pos, tok in ((1, 3, " Paris"), (3, 7, " Paris"), (5, 2, " Paris"), (2, 5, XSS_TOKEN), (4, 9, XSS_TOKEN)):
        ids[seq, pos] = VOCAB.index(tok)
    ids[:, 0] = -1  # BOS
    return ids


def _activations(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    acts = rng.normal(0.0, 0.4, size=(N_LAYERS, D_MLP, N_WINDOWS, SEQ_LEN)).astype(np.float32)
    acts[acts < 0] *= 0.3  # GELU-like: small negatives
    for (layer, neuron), tok in PLANTED.items():
        acts[layer, neuron][ids == VOCAB.index(tok)] = 4.0 + rng.random(int((ids == VOCAB.index(tok)).sum()))
    acts[:, :, :, 0] = np.nan  # BOS positions carry no statistic
    return acts


def _text(token_id: int) -> str:
    """The text of a corpus id of `_corpus` (-1 is BOS)."""
    return BOS if token_id < 0 else VOCAB[token_id]


def _example(layer: int, neuron: int, kind: str, rank: int, seq: int, pos: int, a: np.ndarray,
             ids: np.ndarray) -> dict:
    start = min(max(pos - CTX_BEFORE, 0), SEQ_LEN - CTX_WIDTH)
    window = slice(start, start + CTX_WIDTH)
    return {"layer": layer, "neuron": neuron, "kind": kind, "rank": rank, "seq_id": seq, "pos": pos,
            "activation": float(a[seq, pos]), "ctx_start": start,
            "context_acts": [float(v) for v in a[seq, window]],
            "context_tokens": [_text(int(i)) for i in ids[seq, window]]}


def _neuron_rows(rng: np.random.Generator, acts: np.ndarray,
                 ids: np.ndarray) -> tuple[list[dict], list[dict], list[dict]]:
    neurons, examples, records = [], [], []
    for layer in range(N_LAYERS):
        for n in range(D_MLP):
            a = acts[layer, n]
            valid = a[:, 1:].ravel()
            hist = [0] * N_BINS
            for v in valid:
                hist[bin_of(float(v))] += 1
            # positions (seq, pos) sorted by activation desc, earlier first on ties
            flat = [(float(a[s, p]), s, p) for s in range(N_WINDOWS) for p in range(1, SEQ_LEN)]
            flat.sort(key=lambda t: (-t[0], t[1], t[2]))
            for rank, (_, s, p) in enumerate(flat[:TOP_K]):
                examples.append(_example(layer, n, "top", rank, s, p, a, ids))
            for b in sorted({bin_of(v) for v, _, _ in flat} - {ZERO_BIN}):
                s, p = next((s, p) for v, s, p in flat if bin_of(v) == b)
                examples.append(_example(layer, n, "band", b, s, p, a, ids))
            records += [{"layer": layer, "neuron": n, "seq_id": s, "pos": p, "activation": v}
                        for v, s, p in flat[:RECORDS]]
            order = list(rng.permutation(len(VOCAB)))
            if (layer, n) == (0, 2):
                order.remove(VOCAB.index(" Paris"))
                order.insert(0, VOCAB.index(" Paris"))
            top, bottom = order[:5], order[-5:]
            neurons.append({
                "layer": layer, "neuron": n, "count": valid.size, "mean": float(valid.mean()),
                "std": float(valid.std()), "min": float(valid.min()), "max": float(valid.max()),
                "density_frac": float((valid > 0).mean()), "hist_counts": hist,
                "deletion_cos": -0.9 if (layer, n) == (1, 5) else float(rng.uniform(-0.3, 0.3)),
                "kv_top_token_ids": top, "kv_top_tokens": [VOCAB[i] for i in top],
                "kv_top_logits": sorted(rng.uniform(0.5, 3.0, 5).tolist(), reverse=True),
                "kv_bottom_token_ids": bottom, "kv_bottom_tokens": [VOCAB[i] for i in bottom],
                "kv_bottom_logits": sorted(rng.uniform(-3.0, -0.5, 5).tolist()),
                "kv_agreement_frac": None if (layer, n) == (1, 7) else float(rng.integers(0, TOP_K + 1) / TOP_K),
                "nbr_neurons": [m for m in range(D_MLP) if m != n][:3],
                "nbr_cos": sorted(rng.uniform(-0.2, 0.9, 3).tolist(), reverse=True),
            })
    return neurons, examples, records


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = TABLES_BY_NAME[name].arrow_schema()
    return pa.Table.from_pylist(rows, schema=schema)


def write_synthetic_store(out: str | Path, name: str = "synthetic-2x8", seed: int = 0) -> Path:
    """Write the synthetic store to `out` (a new folder) and return its path."""
    rng = np.random.default_rng(seed)
    ids = _corpus(rng)
    acts = _activations(rng, ids)
    tokens = [{"seq_id": s, "pos": p, "doc_id": -1 if ids[s, p] < 0 else s,
               "token_id": 50256 if ids[s, p] < 0 else int(ids[s, p]),
               "token": _text(int(ids[s, p]))}
              for s in range(N_WINDOWS) for p in range(SEQ_LEN)]
    documents = [{"doc_id": s, "source": "synthetic", "n_tokens": SEQ_LEN - 1,
                  "text": "".join(VOCAB[i] for i in ids[s, 1:]), "n_chars": 0} for s in range(N_WINDOWS)]
    for d in documents:
        d["n_chars"] = len(d["text"])
    neurons, examples, records = _neuron_rows(rng, acts, ids)
    writer = StoreWriter(out)
    for table, rows in (("documents", documents), ("tokens", tokens), ("neurons", neurons),
                        ("neuron_examples", examples), ("activations", records)):
        writer.write_table(table, _table(table, rows))
    n_tokens = N_WINDOWS * SEQ_LEN
    return writer.commit({
        "model": {"name": name, "n_layers": N_LAYERS, "d_mlp": D_MLP, "d_model": 16, "n_heads": 2},
        "corpus": {"spec": "synthetic", "n_documents": N_WINDOWS},
        "build": {"n_tokens": n_tokens, "n_windows": N_WINDOWS, "batch_size": 2,
                  "stats": {"seq_len": SEQ_LEN, "top_k": TOP_K, "records": RECORDS}},
        "timings": {"harvest_s": 1.25, "weights_s": 0.1, "write_s": 0.05},
        "histogram": {**describe(), "sample_fraction": 1.0},
        "records_per_neuron": RECORDS,
        "tokens_per_s": round(n_tokens / 1.25, 1),
    })
