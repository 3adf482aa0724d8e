"""A synthetic store of GPT-2 small's shape (12 x 3072 neurons) for the query benchmarks.

    python bench/synthetic_store.py [--tokens 10M] [--out bench/results/synthetic-10m] [--seed 0]
                                    [--force] [--verify]

Writes, through `store.StoreWriter`, every table with rows valid under `store/schema.py` and
the sizes a real build of N tokens gives: `tokens` N rows (windows of 128 packing documents
back to back, BOS between them), `documents` ~N/100, `neurons` 36,864 (99-bin histograms,
key-value lists of 10), `neuron_examples` 20 'top' + ~60 'band' rows per neuron with 21-float
contexts (NaN at BOS) and their 21 tokens (the `tokens` rows of the window), `activations` 256
records per neuron. Values are random (numpy, seeded);
the top examples are the neuron's strongest records, their first one is its `max`, band samples
fall in their bins. Large tables stream in sort-key order, one layer (or 1024 windows) at a time.
A complete store at --out is reused (a cache) unless --force. Prints generation time and size.
"""

from __future__ import annotations

import argparse
import shutil
import string
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.stats import StatsConfig  # noqa: E402
from pipeline.stats import bins as hist_bins  # noqa: E402
from store import StoreWriter, schema, verify_store  # noqa: E402
from store.manifest import partial_dir, read_manifest  # noqa: E402

N_LAYERS, D_MLP, SEQ_LEN, D_VOCAB = 12, 3072, 128, 50257
BOS_ID, BOS = 50256, "<|endoftext|>"
N_FAKE_VOCAB, TOP_K, RECORDS, N_KV = 4096, 20, 256, 10
STATS = StatsConfig(seq_len=SEQ_LEN, top_k=TOP_K, records=RECORDS)
WIDTH = STATS.context_before + 1 + STATS.context_after  # 21
SAMPLE_FRACTION = 1 / 2**STATS.hist_sample_shift
DEFAULT_OUT = ROOT / "bench" / "results" / "synthetic-10m"
MODEL = {"name": "gpt2-synthetic", "source": "bench/synthetic_store.py (random values, GPT-2 small shape)",
         "n_layers": N_LAYERS, "d_model": 768, "d_mlp": D_MLP, "n_heads": 12, "d_vocab": D_VOCAB, "gated": False,
         "bos_token_id": BOS_ID, "bos_token": BOS, "dtype": "float32", "device": "cpu",
         "architecture": "GPT2LMHeadModel", "normalization": "LN", "act_fn": "gelu_new", "n_ctx": 1024}


def parse_count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def lists(values: np.ndarray | pa.Array, width) -> pa.ListArray:
    """Rows of `width` values each (an int, or a per-row array of lengths) as a list array."""
    lengths = np.full(len(values) // width, width) if np.isscalar(width) else width
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)), values)


def fit_schema(name: str, columns: dict) -> pa.Table:
    """`columns` as a table; columns the schema gained since this script was written get placeholder
    values (lists of N_KV), columns it lost are dropped: the benchmark keeps up with the schema."""
    spec, rng, data = schema.table(name), np.random.default_rng(0), pa.table(columns)
    for col in spec.columns:
        if col.name in data.column_names:
            continue
        typ, is_list = col.type, pa.types.is_list(col.type)
        inner, k = (typ.value_type, data.num_rows * N_KV) if is_list else (typ, data.num_rows)
        raw = ["x"] * k if pa.types.is_string(inner) else rng.integers(0, 100, k) if pa.types.is_integer(inner) \
            else rng.random(k)
        values = pa.array(raw)
        print(f"synthetic: {name}.{col.name} is new to this script: placeholder values", file=sys.stderr)
        data = data.append_column(col.name, lists(values.cast(inner), N_KV) if is_list else values.cast(inner))
    return data.select([c for c in data.column_names if c in spec.column_names])


class Corpus:
    """The token stream: fake vocabulary, documents packed into windows of SEQ_LEN."""

    def __init__(self, n_tokens: int, rng: np.random.Generator):
        self.n_windows = n_tokens // SEQ_LEN
        letters = np.array(list(string.ascii_lowercase))
        words = ["".join(rng.choice(letters, rng.integers(1, 9))) for _ in range(N_FAKE_VOCAB)]
        self.vocab_text = pa.array([(" " + w) if rng.random() < 0.75 else w for w in words])
        self.vocab_ids = np.sort(rng.choice(BOS_ID, N_FAKE_VOCAB, replace=False)).astype(np.int32)
        stream_len = self.n_windows * (SEQ_LEN - 1)
        lengths = np.maximum(1, rng.lognormal(np.log(80), 0.65, stream_len // 60 + 16)).astype(np.int64)
        n_docs = int(np.searchsorted(np.cumsum(lengths + 1), stream_len)) + 1
        stream = np.repeat(np.arange(n_docs, dtype=np.int32), lengths[:n_docs] + 1)
        stream[np.cumsum(lengths[:n_docs] + 1) - 1] = -1  # the BOS after each document
        doc_ids = np.full((self.n_windows, SEQ_LEN), -1, dtype=np.int32)
        doc_ids[:, 1:] = stream[:stream_len].reshape(self.n_windows, SEQ_LEN - 1)
        self.doc_ids = doc_ids.reshape(-1)
        self.is_bos = self.doc_ids < 0
        self.not_bos = np.flatnonzero(~self.is_bos).astype(np.int64)  # flat seq_id * SEQ_LEN + pos
        zipf = 1.0 / (np.arange(N_FAKE_VOCAB) + 2.7)
        self.vocab_idx = np.full(self.doc_ids.shape, -1, dtype=np.int32)  # index into the fake vocab
        self.vocab_idx[self.not_bos] = rng.choice(N_FAKE_VOCAB, len(self.not_bos), p=zipf / zipf.sum())
        self.n_docs = int(self.doc_ids.max()) + 1

    def token_text(self, idx: np.ndarray) -> pa.Array:
        all_text = pa.concat_arrays([self.vocab_text, pa.array([BOS])])
        return all_text.take(pa.array(np.where(idx < 0, N_FAKE_VOCAB, idx)))

    def write(self, writer: StoreWriter) -> None:
        with writer.table_writer("documents") as out:
            idx = self.vocab_idx[self.not_bos]
            doc_of = self.doc_ids[self.not_bos]
            n_tok = np.bincount(doc_of, minlength=self.n_docs).astype(np.int32)
            text = pc.binary_join(lists(self.token_text(idx), n_tok), "")
            out.write(fit_schema("documents", {
                "doc_id": np.arange(self.n_docs, dtype=np.int32), "source": ["synthetic"] * self.n_docs,
                "n_chars": pc.utf8_length(text).cast(pa.int32()), "n_tokens": n_tok, "text": text}))
        step = 1024 * SEQ_LEN  # one 128k-row group per write
        with writer.table_writer("tokens") as out:
            for lo in range(0, len(self.doc_ids), step):
                idx = self.vocab_idx[lo:lo + step]
                flat = np.arange(lo, lo + len(idx))
                out.write(fit_schema("tokens", {
                    "seq_id": (flat // SEQ_LEN).astype(np.int32), "pos": (flat % SEQ_LEN).astype(np.int16),
                    "doc_id": self.doc_ids[lo:lo + step],
                    "token_id": np.where(idx < 0, BOS_ID, self.vocab_ids[np.maximum(idx, 0)]).astype(np.int32),
                    "token": self.token_text(idx)}))

    def random_positions(self, rng: np.random.Generator, shape: tuple[int, int], unique: bool) -> np.ndarray:
        """Flat non-BOS positions; with `unique`, sorted and distinct along the last axis."""
        m = len(self.not_bos)
        if not unique:
            return self.not_bos[rng.integers(0, m, shape)]
        k = shape[-1]
        return self.not_bos[np.sort(rng.integers(0, m - k, shape), axis=-1) + np.arange(k)]


def neurons_table(rng: np.random.Generator, count: int, corpus: Corpus) -> tuple[pa.Table, dict]:
    """The `neurons` table, and per neuron its non-empty histogram bins lo..hi, max and the bin ranges."""
    n = N_LAYERS * D_MLP
    ranges = np.array([[np.nan if v is None else v for v in r] for r in hist_bins.describe()["bin_ranges"]])
    ranges[0, 0], ranges[-1, 1] = -80.0, 80.0
    p = {"lo": rng.integers(30, 39, n), "hi": rng.integers(86, hist_bins.N_BINS, n), "ranges": ranges}
    p["max"] = rng.uniform(ranges[p["hi"], 0], ranges[p["hi"], 1]).astype(np.float32)
    b = np.arange(hist_bins.N_BINS)
    inside = (b >= p["lo"][:, None]) & (b <= p["hi"][:, None])
    shape = np.exp(-np.abs(b - hist_bins.ZERO_BIN) / rng.uniform(3, 8, (n, 1)))
    lam = shape / shape.sum(1, keepdims=True) * count * SAMPLE_FRACTION
    hist = np.where(inside, np.maximum(rng.poisson(lam), 1), 0).astype(np.int64)
    kv = np.sort(rng.integers(0, N_FAKE_VOCAB - 2 * N_KV, (n, 2 * N_KV)), axis=1) + np.arange(2 * N_KV)
    kv = np.take_along_axis(kv, np.argsort(rng.random(kv.shape), axis=1), axis=1)
    top, bottom = kv[:, :N_KV].reshape(-1), kv[:, N_KV:].reshape(-1)
    logits = np.sort(rng.normal(0, 1, (n, 2 * N_KV)).astype(np.float32), axis=1) * 2
    agree = rng.integers(0, TOP_K + 1, n) / TOP_K
    nbr = np.sort(rng.integers(0, D_MLP - 1 - N_KV, (n, N_KV)), axis=1) + np.arange(N_KV)  # distinct, != self
    agree = pa.array(agree.astype(np.float32), mask=rng.random(n) < 0.01)
    return fit_schema("neurons", {
        "layer": np.repeat(np.arange(N_LAYERS, dtype=np.int16), D_MLP),
        "neuron": np.tile(np.arange(D_MLP, dtype=np.int32), N_LAYERS),
        "count": np.full(n, count, dtype=np.int64),
        "mean": rng.normal(0.05, 0.05, n).astype(np.float32), "std": rng.uniform(0.1, 1.0, n).astype(np.float32),
        "min": rng.uniform(ranges[p["lo"], 0], ranges[p["lo"], 1]).astype(np.float32), "max": p["max"],
        "density_frac": rng.uniform(0.02, 0.6, n).astype(np.float32),
        "hist_counts": lists(hist.reshape(-1), hist_bins.N_BINS),
        "deletion_cos": rng.normal(0, 0.05, n).astype(np.float32),
        "kv_top_token_ids": lists(corpus.vocab_ids[top], N_KV),
        "kv_top_tokens": lists(corpus.token_text(top), N_KV),
        "kv_top_logits": lists(logits[:, ::-1][:, :N_KV].reshape(-1), N_KV),
        "kv_bottom_token_ids": lists(corpus.vocab_ids[bottom], N_KV),
        "kv_bottom_tokens": lists(corpus.token_text(bottom), N_KV),
        "kv_bottom_logits": lists(logits[:, :N_KV].reshape(-1), N_KV),
        "nbr_neurons": lists(((np.arange(n) % D_MLP)[:, None] + 1 + nbr).reshape(-1) % D_MLP, N_KV),
        "nbr_cos": lists(np.sort(rng.uniform(0.05, 0.9, (n, N_KV)), axis=1)[:, ::-1].reshape(-1), N_KV),
        "kv_agreement_frac": agree,
    }), p


def layer_tables(layer: int, seed: int, p: dict, corpus: Corpus) -> tuple[pa.Table, pa.Table]:
    """(activations, neuron_examples) rows of one layer, in sort-key order."""
    rng = np.random.default_rng([seed, 1, layer])
    sl = slice(layer * D_MLP, (layer + 1) * D_MLP)
    vmax, lo, hi, ranges = p["max"][sl], p["lo"][sl], p["hi"][sl], p["ranges"]
    neuron = np.arange(D_MLP, dtype=np.int32)
    # activations: RECORDS distinct positions per neuron (sorted), values from max downwards
    flat = corpus.random_positions(rng, (D_MLP, RECORDS), unique=True)
    values = vmax[:, None] * (1 - 0.7 * np.sort(rng.random((D_MLP, RECORDS)), axis=1))
    values[:, 0] = vmax
    slot = np.argsort(rng.random((D_MLP, RECORDS)), axis=1)  # the record holding the j-th value
    acts = np.empty_like(values)
    np.put_along_axis(acts, slot, values, axis=1)
    activations = fit_schema("activations", {
        "layer": np.full(D_MLP * RECORDS, layer, dtype=np.int16), "neuron": np.repeat(neuron, RECORDS),
        "seq_id": (flat // SEQ_LEN).reshape(-1).astype(np.int32), "pos": (flat % SEQ_LEN).reshape(-1).astype(np.int16),
        "activation": acts.reshape(-1).astype(np.float32)})
    # neuron_examples: per neuron its band rows (rank = bin, lo..hi), then its top rows ('band' < 'top')
    n_band = hi - lo + 1
    band_neuron = np.repeat(neuron, n_band)
    band_bin = np.arange(n_band.sum()) - np.repeat(np.cumsum(n_band) - n_band - lo, n_band)  # lo..hi per neuron
    band_act = rng.uniform(ranges[band_bin, 0], np.minimum(ranges[band_bin, 1], vmax[band_neuron]))
    band_flat = corpus.random_positions(rng, (len(band_bin), 1), unique=False)[:, 0]
    top_flat = np.take_along_axis(flat, slot[:, :TOP_K], axis=1).reshape(-1)
    ex_neuron = np.concatenate([band_neuron, np.repeat(neuron, TOP_K)])
    kind = np.concatenate([np.zeros(len(band_bin), np.int8), np.ones(D_MLP * TOP_K, np.int8)])
    rank = np.concatenate([band_bin, np.tile(np.arange(TOP_K), D_MLP)]).astype(np.int16)
    ex_flat = np.concatenate([band_flat, top_flat])
    ex_act = np.concatenate([band_act, values[:, :TOP_K].reshape(-1)]).astype(np.float32)
    order = np.lexsort((rank, kind, ex_neuron))
    ex_neuron, kind, rank, ex_flat, ex_act = (a[order] for a in (ex_neuron, kind, rank, ex_flat, ex_act))
    pos = ex_flat % SEQ_LEN
    ctx_start = np.clip(pos - STATS.context_before, 0, SEQ_LEN - WIDTH)
    ctx_flat = (ex_flat - pos + ctx_start)[:, None] + np.arange(WIDTH)
    ctx = (rng.normal(0, 0.15, ctx_flat.shape) * np.abs(ex_act)[:, None]).astype(np.float32)
    ctx.view(np.uint32)[...] &= np.uint32(0xFFFE0000)  # 6 mantissa bits: compresses like the demo store
    ctx[ctx_flat == ex_flat[:, None]] = ex_act
    ctx[corpus.is_bos[ctx_flat]] = np.nan
    examples = fit_schema("neuron_examples", {
        "layer": np.full(len(order), layer, dtype=np.int16), "neuron": ex_neuron,
        "kind": pa.DictionaryArray.from_arrays(pa.array(kind), pa.array(["band", "top"])),
        "rank": rank, "seq_id": (ex_flat // SEQ_LEN).astype(np.int32), "pos": pos.astype(np.int16),
        "activation": ex_act, "ctx_start": ctx_start.astype(np.int16),
        "context_acts": lists(ctx.reshape(-1), WIDTH),
        "context_tokens": lists(corpus.token_text(corpus.vocab_idx[ctx_flat].reshape(-1)), WIDTH)})
    return activations, examples


def generate(out: Path, n_tokens: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    writer = StoreWriter(out)
    timings, t = {}, time.perf_counter()
    corpus = Corpus(n_tokens, rng)
    corpus.write(writer)
    timings["corpus_tables_s"] = time.perf_counter() - t
    t = time.perf_counter()
    neurons, p = neurons_table(rng, len(corpus.not_bos), corpus)
    writer.write_table("neurons", neurons)
    with writer.table_writer("activations") as acts_out, writer.table_writer("neuron_examples") as ex_out:
        for layer in range(N_LAYERS):
            acts, examples = layer_tables(layer, seed, p, corpus)
            acts_out.write(acts)
            ex_out.write(examples)
    timings["neuron_tables_s"] = time.perf_counter() - t
    n_tok = corpus.n_windows * SEQ_LEN
    total = sum(timings.values())
    manifest = {
        "model": MODEL,
        "corpus": {"spec": "synthetic", "kind": "synthetic", "seed": seed, "n_documents": corpus.n_docs},
        "build": {"model": "gpt2-synthetic", "corpus": "synthetic", "max_tokens": n_tokens, "stats": asdict(STATS),
                  "batch_size": 8, "dtype": "float32", "device": "cpu", "n_windows": corpus.n_windows,
                  "n_tokens": n_tok},
        "records_per_neuron": RECORDS,
        "histogram": {**hist_bins.describe(), "sample_fraction": SAMPLE_FRACTION},
        "timings": {**{k: round(v, 3) for k, v in timings.items()}, "total_s": round(total, 3)},
        "tokens_per_s": round(n_tok / total, 1),
        "synthetic": {"generator": "bench/synthetic_store.py", "seed": seed},
    }
    writer.commit(manifest)
    return manifest


def describe(out: Path) -> str:
    m = read_manifest(out)
    tables, size = m["tables"], sum(v["bytes"] for v in m["tables"].values())
    lines = [f"{out}: {size / 2**20:,.1f} MiB; generated in {m['timings'].get('total_s', float('nan')):.1f} s "
             f"({m['build']['n_tokens']:,} tokens, seed {m.get('synthetic', {}).get('seed')})"]
    lines += [f"  {k:<16} {v['rows']:>12,} rows {v['bytes'] / 2**20:>9,.1f} MiB" for k, v in tables.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=parse_count, default=10_000_000, help="N tokens (10M, 64k, ...)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if --out holds a store")
    ap.add_argument("--verify", action="store_true", help="run store.verify_store on the result")
    args = ap.parse_args(argv)
    out = args.out.expanduser().absolute()
    if args.tokens < SEQ_LEN * 2:
        ap.error(f"--tokens must be at least {SEQ_LEN * 2}")
    if (out / "manifest.json").is_file() and not args.force:
        print(f"cached (pass --force to regenerate): {describe(out)}")
    else:
        if out.is_dir() and any(out.iterdir()):
            if not (out / "manifest.json").is_file():
                ap.error(f"--out '{out}' is a non-empty folder that is not a store; pick another")
            shutil.rmtree(out)  # --force on our own cached store
        shutil.rmtree(partial_dir(out), ignore_errors=True)  # a killed earlier run of this script
        t = time.perf_counter()
        generate(out, args.tokens, args.seed)
        print(f"generated in {time.perf_counter() - t:.1f} s wall: {describe(out)}")
    if args.verify:
        t = time.perf_counter()
        problems = verify_store(out)
        print(f"verify: {'OK' if not problems else '; '.join(problems)} ({time.perf_counter() - t:.1f} s)")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
