"""A tiny synthetic store with planted neurons and heads, for the dashboard's tests (no model, no torch).

`write_synthetic_store(out)` writes 2 layers x 8 neurons x 4 heads over 6 windows of 16 tokens
through `store.StoreWriter`, with rows valid under `store.schema` and a manifest shaped like the
pipeline's; `omit=HEAD_TABLES` leaves out the head and circuit tables, as a store built before
they existed. Planted facts the tests check:
- layer 0, neuron 2 fires on " Paris" and promotes " Paris" (first value token);
- layer 1, neuron 3 fires on the token `<img src=x onerror=alert(1)>` (must render as text);
- layer 1, neuron 5 has deletion_cos -0.9 (the most deletion-like);
- layer 1, neuron 6 is a position artefact: its largest activations (the largest of the store,
  4.999) sit on position 1, the first token after the BOS, in every window (after_bos_frac 1.0);
- layer 1, neuron 1 fires once on " Paris" (4.998, above any activation of layer 0, neuron 2)
  and nowhere else much: the strongest single activation on " Paris", but not selective for it;
- layer 0, neuron 4 is a city neuron: it fires on every " London" and on one " Paris" (about 3);
  `token_neighbours` makes " London", " France" and " city" the tokens related to " Paris" (cosine
  about 0.6 in a made-up 64-d embedding; every other pair stays below 0.3);
- top examples are at most one per window (each window's strongest position), as the pipeline's;
- window 1, position 2 is a whitespace-only token " ", and window 0, positions 2-3 an em dash split
  over two byte-level tokens (" c.\ufffd", "\ufffd" -> shown " c.", "—"), both in L1/N6's examples;
- layer 0, head 1 is a previous-token head (the top prev_token_score, attention peak at offset 1);
- layer 1, head 2 is an induction head (the top induction_score and rand_induction_score, OV
  copying score +0.95, the largest direct logit attribution 0.9); layer 1, head 3 suppresses (OV
  copying score -0.8);
- K-composition L0H1 -> L1H2 (0.62) is the strongest pair; V L0H3 -> L1H0 (0.41) and Q L0H0 ->
  L1H3 (0.33) are the only others above the baseline (0.12) by 0.1 or more;
- layer 0, head 3's top example attends from window 4, position 10 to the XSS token at
  position 9 (0.97), and the XSS token is its first OV copy token;
- neuron circuits: L0/N2's first input token is " Paris", its first upstream head L0H1, first
  downstream neuron L1/N3 and first downstream head L1H2; L1/N3's first input token is the XSS
  token and its first upstream neuron L0/N2.
The real statistics are computed by `pipeline/`; this only imitates their shape (the pattern
scores are computed from the synthetic patterns, so they agree with the examples).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pyarrow as pa

from store import StoreWriter
from store.histogram_bins import N_BINS, ZERO_BIN, bin_of, bin_ranges, describe
from store.schema import TABLES_BY_NAME

XSS_TOKEN = "<img src=x onerror=alert(1)>"
BOS = "<|endoftext|>"
VOCAB = (" the", " Paris", " is", " capital", " of", " France", ".", "\n", " cat", XSS_TOKEN,
         " dog", " London", ",", " and", " a", " city")
N_LAYERS, D_MLP, SEQ_LEN, N_WINDOWS, TOP_K, RECORDS = 2, 8, 16, 6, 5, 12
CTX_BEFORE, CTX_WIDTH = 4, 7
PLANTED = {(0, 2): " Paris", (1, 3): XSS_TOKEN}
ARTEFACT_NEURON, UNSELECTIVE_NEURON, CITY_NEURON = (1, 6), (1, 1), (0, 4)
CITY_TOKENS = (" Paris", " London", " France", " city")  # near each other in `_token_neighbours`
# (seq_id, pos) -> (text,) or (text, text as shown): a whitespace-only token, and an em dash split
# over two byte-level tokens (each decodes alone to U+FFFD); all inside L1/N6's top-example contexts
PLANTED_TEXT = {(1, 2): (" ",), (0, 2): (" c.\ufffd", " c."), (0, 3): ("\ufffd", "—")}
N_HEADS, BLOCK_W, N_OFFSETS, N_OV_TOKENS, N_LINKS = 4, 8, 16, 5, 3
PREV_TOKEN_HEAD, INDUCTION_HEAD, XSS_HEAD, SUPPRESS_HEAD = (0, 1), (1, 2), (0, 3), (1, 3)
XSS_EXAMPLE = (4, 10, 9)  # (seq_id, pos, src_pos) of XSS_HEAD's top example
COMPOSITION_BASELINE = 0.12
# (src head, dst head, kind) -> score; every other pair scores below baseline + 0.1
PLANTED_COMPOSITION = {((0, 1), (1, 2), "k"): 0.62, ((0, 3), (1, 0), "v"): 0.41, ((0, 0), (1, 3), "q"): 0.33}
CIRCUIT_NEURON, CIRCUIT_DOWNSTREAM = (0, 2), (1, 3)
HEAD_TABLES = ("heads", "head_examples", "head_composition", "neuron_circuits")


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
    layer, neuron = ARTEFACT_NEURON
    acts[layer, neuron, :, 1] = 4.999 - 1e-4 * np.arange(N_WINDOWS)  # right after the BOS, every window
    layer, neuron = UNSELECTIVE_NEURON
    acts[layer, neuron, 3, 7] = 4.998  # one " Paris" (planted in _corpus)
    layer, neuron = CITY_NEURON
    london = ids == VOCAB.index(" London")
    jitter = np.random.default_rng(11).random(int(london.sum()))  # its own generator: `rng`'s draws stay as they were
    acts[layer, neuron][london] = 3.0 + 0.2 * jitter
    acts[layer, neuron, 5, 2] = 3.1  # one " Paris" (planted in _corpus)
    acts[:, :, :, 0] = np.nan  # BOS positions carry no statistic
    return acts


def _text(token_id: int) -> str:
    """The text of a corpus id of `_corpus` (-1 is BOS)."""
    return BOS if token_id < 0 else VOCAB[token_id]


def _texts(ids: np.ndarray, seq: int, start: int = 0, stop: int | None = None) -> list[str]:
    """The texts of window `seq`'s positions start .. stop - 1 as the tokens table holds them:
    `_text`, except the planted tokens of `PLANTED_TEXT` (text only: the ids stay as drawn)."""
    stop = SEQ_LEN if stop is None else stop
    return [PLANTED_TEXT.get((seq, p), (_text(int(ids[seq, p])),))[0] for p in range(start, stop)]


def _display(seq: int, start: int, stop: int) -> list[str] | None:
    """`context_display` of window `seq`'s positions start .. stop - 1 (None: no fragment there)."""
    if not any((seq, p) in PLANTED_TEXT and len(PLANTED_TEXT[seq, p]) > 1 for p in range(start, stop)):
        return None
    return [PLANTED_TEXT[seq, p][-1] if (seq, p) in PLANTED_TEXT else None for p in range(start, stop)]


def _example(layer: int, neuron: int, kind: str, rank: int, seq: int, pos: int, a: np.ndarray,
             ids: np.ndarray) -> dict:
    start = min(max(pos - CTX_BEFORE, 0), SEQ_LEN - CTX_WIDTH)
    window = slice(start, start + CTX_WIDTH)
    return {"layer": layer, "neuron": neuron, "kind": kind, "rank": rank, "seq_id": seq, "pos": pos,
            "activation": float(a[seq, pos]), "ctx_start": start,
            "context_acts": [float(v) for v in a[seq, window]],
            "context_tokens": _texts(ids, seq, start, start + CTX_WIDTH),
            "context_display": _merge_display(_texts(ids, seq, start, start + CTX_WIDTH), _display(seq, start,
                                                                                                 start + CTX_WIDTH))}


def _merge_display(tokens: list[str], display: list[str | None] | None) -> list[str] | None:
    return None if display is None else [d if d is not None else t for t, d in zip(tokens, display, strict=True)]


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
            tops = [next(t for t in flat if t[1] == w) for w in range(N_WINDOWS)]  # one per window
            tops.sort(key=lambda t: (-t[0], t[1], t[2]))
            for rank, (_, s, p) in enumerate(tops[:TOP_K]):
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
                **_evidence(tops[:TOP_K], ids, hist, float(valid.max())),
            })
            neurons[-1]["explanation"] = _explanation(neurons[-1])
    return neurons, examples, records


def _evidence(tops: list[tuple[float, int, int]], ids: np.ndarray, hist: list[int], vmax: float) -> dict:
    """The evidence summaries of a neuron (as `pipeline/stats/evidence.py` derives them) from its
    top examples (value, seq, pos), histogram and max."""
    counts: dict[str, list[int]] = {}
    for rank, (_, s, p) in enumerate(tops):
        counts.setdefault(_texts(ids, s, p, p + 1)[0], []).append(rank)
    best = sorted(counts.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))[:5]
    lows = [lo for lo, _ in bin_ranges()]
    t = 2.0 ** min(max(math.floor(math.log2(vmax)) - 3, -6), 6) if vmax > 0 else None
    return {
        "after_bos_frac": sum(ids[s, p - 1] < 0 for _, s, p in tops) / len(tops),
        "fires_on_tokens": [tok for tok, _ in best], "fires_on_counts": [len(r) for _, r in best],
        "strong_frac": None if t is None else sum(c for c, lo in zip(hist, lows, strict=True) if lo >= t) / sum(hist),
    }


def _explanation(row: dict) -> str:
    if row["after_bos_frac"] > 0.5:
        what = f"Position artefact: {row['after_bos_frac']:.0%} of its top examples sit on the first token after a BOS"
    else:
        what = "Fires on " + ", ".join(f"“{t}” ({c}/{TOP_K})" for t, c in
                                        zip(row["fires_on_tokens"][:3], row["fires_on_counts"], strict=False))
    promotes = ", ".join(f"“{t}”" for t in row["kv_top_tokens"][:3])
    return f"{what}; promotes {promotes}; layer {row['layer']} of {N_LAYERS}."


# --- heads and circuits --------------------------------------------------------------------


def _patterns(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    """Causal attention patterns [layer head seq_id query key]: random with a BOS sink, then the
    planted heads mixed in (each planted row keeps `mass` on its key and the rest scaled down)."""
    logits = rng.normal(0.0, 0.7, size=(N_LAYERS, N_HEADS, N_WINDOWS, SEQ_LEN, SEQ_LEN))
    logits[..., 0] += 1.5  # the attention sink
    logits = np.where(np.tril(np.ones((SEQ_LEN, SEQ_LEN), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)

    def plant(head: tuple[int, int], seq: int, q: int, k: int, mass: float) -> None:
        row = p[head[0], head[1], seq, q]
        row *= 1.0 - mass
        row[k] += mass

    for seq in range(N_WINDOWS):
        for q in range(1, SEQ_LEN):
            plant(PREV_TOKEN_HEAD, seq, q, q - 1, 0.9)
            after = [k + 1 for k in range(1, q - 1) if ids[seq, k] == ids[seq, q]]
            plant(INDUCTION_HEAD, seq, q, after[-1] if after else 0, 0.85 if after else 0.6)
    seq, q, k = XSS_EXAMPLE
    plant(XSS_HEAD, seq, q, k, 0.97)
    return p.astype(np.float32)


def _pattern_scores(a: np.ndarray, ids: np.ndarray) -> dict:
    """One head's corpus scores from its pattern a [seq_id query key] (BOS query rows dropped)."""
    q = np.arange(1, SEQ_LEN)
    k = np.arange(SEQ_LEN)
    rows = a[:, 1:, :]  # seq_id, query (1..), key
    earlier = (k[None, :] < q[:, None])[None]
    same = (ids[:, None, :] == ids[:, 1:, None]) & earlier & (ids[:, None, :] >= 0)
    after = np.zeros_like(same)
    after[:, :, 1:] = same[:, :, :-1] & earlier[:, :, 1:]
    has = same.any(-1)
    entropy = -np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1.0)), 0.0).sum(-1)
    by_offset = [float(np.mean([a[:, t, t - o] for t in range(max(o, 1), SEQ_LEN)])) for o in range(N_OFFSETS)]
    return {
        "count": int(rows.shape[0] * rows.shape[1]), "repeat_count": int(has.sum()),
        "prev_token_score": float(rows[:, q - 1, q - 1].mean()), "self_score": float(rows[:, q - 1, q].mean()),
        "bos_score": float(rows[:, :, 0].mean()),
        "duplicate_score": float((rows * same).sum(-1)[has].mean()) if has.any() else None,
        "induction_score": float((rows * after).sum(-1)[has].mean()) if has.any() else None,
        "entropy_nats": float(entropy.mean()),
        "attn_distance_tokens": float((rows * (q[:, None] - k[None, :]).clip(0)).sum(-1).mean()),
        "attn_by_offset": by_offset,
    }


def _head_rows(rng: np.random.Generator, p: np.ndarray, ids: np.ndarray) -> list[dict]:
    heads = []
    for layer in range(N_LAYERS):
        for h in range(N_HEADS):
            key = (layer, h)
            order = list(rng.permutation(len(VOCAB)))
            if key == XSS_HEAD:
                order.remove(VOCAB.index(XSS_TOKEN))
                order.insert(0, VOCAB.index(XSS_TOKEN))
            copy, suppress = order[:N_OV_TOKENS], order[-N_OV_TOKENS:]
            decay = np.exp(-np.arange(N_OFFSETS) / (1.0 + rng.random()))
            if key == PREV_TOKEN_HEAD:
                decay[1] = 3.0
            ov = {INDUCTION_HEAD: 0.95, SUPPRESS_HEAD: -0.8}.get(key, float(rng.uniform(-0.3, 0.5)))
            heads.append({
                "layer": layer, "head": h, **_pattern_scores(p[layer, h], ids),
                "rand_prev_token_score": 0.95 if key == PREV_TOKEN_HEAD else float(rng.uniform(0.0, 0.1)),
                "rand_duplicate_score": float(rng.uniform(0.0, 0.1)),
                "rand_induction_score": 0.92 if key == INDUCTION_HEAD else float(rng.uniform(0.0, 0.1)),
                "ov_copying_score": ov,
                "ov_copy_token_ids": copy, "ov_copy_tokens": [VOCAB[i] for i in copy],
                "ov_suppress_token_ids": suppress, "ov_suppress_tokens": [VOCAB[i] for i in suppress],
                "qk_pos_by_offset": (decay / decay.sum()).tolist(),
                # no random draw here: the stream of the other columns stays as it was
                "dla_mean": 0.9 if key == INDUCTION_HEAD else round(0.1 * (layer + 1) * (h - 1.5), 3),
            })
    return heads


def _head_examples(p: np.ndarray, ids: np.ndarray) -> list[dict]:
    """Per head its TOP_K query positions by strongest non-BOS attention (earlier first on ties)."""
    rows = []
    for layer in range(N_LAYERS):
        for h in range(N_HEADS):
            a = p[layer, h]
            best = [(float(a[s, q, 1:q + 1].max()), s, q) for s in range(N_WINDOWS) for q in range(1, SEQ_LEN)]
            best.sort(key=lambda t: (-t[0], t[1], t[2]))
            for rank, (weight, s, q) in enumerate(best[:TOP_K]):
                start = min(max(q - BLOCK_W + 2, 0), SEQ_LEN - BLOCK_W)
                block = a[s, start:start + BLOCK_W, start:start + BLOCK_W]
                rows.append({"layer": layer, "head": h, "rank": rank, "seq_id": s, "pos": q,
                             "src_pos": 1 + int(a[s, q, 1:q + 1].argmax()), "attention": weight,
                             "pattern": a[s, q].tolist(), "block_start": start, "block": block.ravel().tolist(),
                             "context_tokens": _texts(ids, s)})
    return rows


def _composition_rows(rng: np.random.Generator) -> list[dict]:
    rows = []
    for src_layer in range(N_LAYERS):
        for dst_layer in range(src_layer + 1, N_LAYERS):
            for src in range(N_HEADS):
                for dst in range(N_HEADS):
                    for kind in "qkv":
                        planted = PLANTED_COMPOSITION.get(((src_layer, src), (dst_layer, dst), kind))
                        rows.append({"src_layer": src_layer, "src_head": src, "dst_layer": dst_layer, "dst_head": dst,
                                     "kind": kind, "score": planted or float(rng.uniform(0.06, 0.2)),
                                     "baseline": COMPOSITION_BASELINE})
    return rows


def _circuit_rows(rng: np.random.Generator) -> list[dict]:
    """Each neuron's input tokens and its strongest neighbours in earlier and later layers
    (heads of its own layer are upstream: attention runs before the MLP in a block)."""
    rows = []

    def add(layer: int, neuron: int, relation: str, others: list, first: tuple[int, int] | int | None = None) -> None:
        if first is not None:
            others = [first] + [o for o in others if o != first]
        weights = sorted(rng.uniform(0.05, 0.5, len(others[:N_LINKS])).tolist(), reverse=True)
        if first is not None:
            weights[0] = 0.7
        for rank, (other, weight) in enumerate(zip(others[:N_LINKS], weights, strict=True)):
            token = relation == "input_token"
            rows.append({"layer": layer, "neuron": neuron, "relation": relation, "rank": rank,
                         "other_layer": None if token else other[0], "other_index": other if token else other[1],
                         "other_token": VOCAB[other] if token else None, "weight": weight})

    for layer in range(N_LAYERS):
        for n in range(D_MLP):
            key = (layer, n)
            token = {(0, 2): VOCAB.index(" Paris"), (1, 3): VOCAB.index(XSS_TOKEN)}.get(key)
            add(layer, n, "input_token", [int(i) for i in rng.permutation(len(VOCAB))], token)
            before = [(lo, m) for lo in range(layer) for m in rng.permutation(D_MLP).tolist()]
            add(layer, n, "upstream_neuron", before, CIRCUIT_NEURON if key == CIRCUIT_DOWNSTREAM else None)
            heads = [(lo, h) for lo in range(layer + 1) for h in rng.permutation(N_HEADS).tolist()]
            add(layer, n, "upstream_head", heads, PREV_TOKEN_HEAD if key == CIRCUIT_NEURON else None)
            later = [(hi, m) for hi in range(layer + 1, N_LAYERS) for m in rng.permutation(D_MLP).tolist()]
            add(layer, n, "downstream_neuron", later, CIRCUIT_DOWNSTREAM if key == CIRCUIT_NEURON else None)
            heads = [(hi, h) for hi in range(layer + 1, N_LAYERS) for h in rng.permutation(N_HEADS).tolist()]
            add(layer, n, "downstream_head", heads, INDUCTION_HEAD if key == CIRCUIT_NEURON else None)
    return rows


def _head_tables(seed: int, ids: np.ndarray) -> dict[str, list[dict]]:
    rng = np.random.default_rng([seed, 1])  # its own stream: the neuron tables stay as they were
    p = _patterns(rng, ids)
    return {"heads": _head_rows(rng, p, ids), "head_examples": _head_examples(p, ids),
            "head_composition": _composition_rows(rng), "neuron_circuits": _circuit_rows(rng)}


LENS_TABLES = ("logit_lens", "lens_positions", "layer_stats")
LENS_WINDOWS = (1, 4)  # windows whose positions 1 .. 15 the synthetic lens "sampled"
MLP_WRITES_MORE = (1,)  # layers where the MLP writes a larger vector than attention (planted)


def _layer_site(d: int, D: int) -> tuple[int, str]:
    return (N_LAYERS - 1, "resid_post") if d == D - 1 else (d // 2, ("resid_pre", "resid_mid")[d % 2])


def _lens_tables(seed: int, ids: np.ndarray) -> dict[str, list[dict]]:
    """The logit lens over LENS_WINDOWS: depth d of 2 * N_LAYERS + 1 grows more confident and closer
    to the final distribution; the last depth predicts the true next token where it is " Paris".
    `layer_stats` holds the means of these rows, so the two tables agree."""
    rng = np.random.default_rng([seed, 2])
    D = 2 * N_LAYERS + 1
    lens, positions = [], []
    per_depth: dict[str, list[list[float]]] = {k: [[] for _ in range(D)] for k in ("kl", "agree", "ent", "norm")}
    for s in LENS_WINDOWS:
        for p in range(1, SEQ_LEN):
            nxt = int(ids[s, p + 1]) if p + 1 < SEQ_LEN else None
            final = [int(i) for i in rng.permutation(len(VOCAB))[:3]]
            if nxt is not None and VOCAB[nxt] == " Paris":
                final = [nxt] + [i for i in final if i != nxt][:2]
            for d in range(D):
                fresh = [int(i) for i in rng.permutation(len(VOCAB))[:3]]
                tops = final if d == D - 1 or rng.random() < d / D else fresh
                p1 = 0.2 + 0.7 * d / (D - 1)
                probs = [p1, (1 - p1) * 0.6, (1 - p1) * 0.3]
                kl = 0.0 if d == D - 1 else float(2.0 * (D - 1 - d) / (D - 1) + rng.uniform(0, 0.1))
                ent = float(2.5 - 2.0 * d / (D - 1))
                layer, site = _layer_site(d, D)
                rank = None if nxt is None else (0 if tops[0] == nxt else int(rng.integers(1, 50)))
                lens.append({"seq_id": s, "pos": p, "depth": d, "layer": layer, "site": site,
                             "top_token_ids": [50000 + i for i in tops], "top_tokens": [VOCAB[i] for i in tops],
                             "top_probs": probs, "true_prob": None if nxt is None else (p1 if rank == 0 else 0.01),
                             "true_rank": rank, "kl_to_final": kl, "entropy_nats": ent,
                             "top1_agrees": tops[0] == final[0]})
                per_depth["kl"][d].append(kl)
                per_depth["agree"][d].append(float(tops[0] == final[0]))
                per_depth["ent"][d].append(ent)
                per_depth["norm"][d].append(float(10 + 5 * d))
            share = float(rng.uniform(0.8, 0.95))
            positions.append({"seq_id": s, "pos": p, "token_id": int(ids[s, p]), "next_token_id": nxt,
                              "final_top_token_id": 50000 + final[0], "final_top_token": VOCAB[final[0]],
                              "pca_share": share, "pca_match": bool(rng.random() < 0.6),
                              "pca_top_token": VOCAB[final[0]],
                              "pca_share_normalized": share - 0.3, "pca_match_normalized": False,
                              "pca_top_token_normalized": VOCAB[int(rng.integers(len(VOCAB)))]})
    stats = []
    for d in range(D):
        layer, site = _layer_site(d, D)
        writer, wl = ("embedding", None) if d == 0 else (("attention", (d - 1) // 2) if d % 2 else ("mlp", d // 2 - 1))
        more = wl in MLP_WRITES_MORE
        norm = {"embedding": 3.0, "attention": 2.0 if more else 4.0, "mlp": 5.0 if more else 1.5}[writer]
        block = None if wl is None else ((2.0, 5.0) if more else (4.0, 1.5))
        share = None if block is None else (block[0] ** 2 if writer == "attention" else block[1] ** 2) / (
            block[0] ** 2 + block[1] ** 2)
        stats.append({"depth": d, "layer": layer, "site": site, "n_positions": len(positions),
                      "n_next": sum(r["next_token_id"] is not None for r in positions),
                      "kl_to_final_mean": float(np.mean(per_depth["kl"][d])),
                      "top1_agreement": float(np.mean(per_depth["agree"][d])),
                      "entropy_nats_mean": float(np.mean(per_depth["ent"][d])),
                      "next_token_accuracy": 0.1 + 0.1 * d, "next_token_loss": 4.0 - 0.5 * d,
                      "resid_norm_mean": float(np.mean(per_depth["norm"][d])), "writer": writer, "writer_layer": wl,
                      "write_norm_mean": norm, "write_share": share, "write_dla_mean": float(rng.uniform(-0.5, 1.0))})
    return {"logit_lens": lens, "lens_positions": positions, "layer_stats": stats}


def _token_neighbours(ids: np.ndarray) -> list[dict]:
    """Every corpus token's other corpus tokens by cosine of a made-up embedding, nearest first:
    CITY_TOKENS share a direction (cosine about 0.6), the rest are random 64-d vectors."""
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(len(VOCAB), 64))
    shared = rng.normal(size=64)
    for tok in CITY_TOKENS:
        emb[VOCAB.index(tok)] = shared + 0.8 * emb[VOCAB.index(tok)]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    present = sorted({int(i) for i in ids[ids >= 0]})
    rows = []
    for i in present:
        others = sorted((j for j in present if j != i), key=lambda j: (-float(unit[i] @ unit[j]), j))
        rows += [{"token_id": i, "token": VOCAB[i], "rank": r, "neighbour_id": j, "neighbour": VOCAB[j],
                  "cosine": float(unit[i] @ unit[j])} for r, j in enumerate(others)]
    return rows


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = TABLES_BY_NAME[name].arrow_schema()
    return pa.Table.from_pylist(rows, schema=schema)


def write_synthetic_store(out: str | Path, name: str = "synthetic-2x8", seed: int = 0,
                          omit: Collection[str] = ()) -> Path:
    """Write the synthetic store to `out` (a new folder) and return its path; the tables named in
    `omit` are left out (`omit=HEAD_TABLES`: a store built before the head tables existed)."""
    rng = np.random.default_rng(seed)
    ids = _corpus(rng)
    acts = _activations(rng, ids)
    tokens = [{"seq_id": s, "pos": p, "doc_id": -1 if ids[s, p] < 0 else s,
               "token_id": 50256 if ids[s, p] < 0 else int(ids[s, p]),
               "token": _texts(ids, s, p, p + 1)[0]}
              for s in range(N_WINDOWS) for p in range(SEQ_LEN)]
    documents = [{"doc_id": s, "source": "synthetic", "n_tokens": SEQ_LEN - 1,
                  "text": "".join(VOCAB[i] for i in ids[s, 1:]), "n_chars": 0} for s in range(N_WINDOWS)]
    for d in documents:
        d["n_chars"] = len(d["text"])
    neurons, examples, records = _neuron_rows(rng, acts, ids)
    tables = {"documents": documents, "tokens": tokens, "neurons": neurons, "neuron_examples": examples,
              "activations": records, "token_neighbours": _token_neighbours(ids), **_head_tables(seed, ids),
              **_lens_tables(seed, ids)}
    writer = StoreWriter(out)
    for table, rows in tables.items():
        if table not in omit:
            writer.write_table(table, _table(table, rows))
    n_tokens = N_WINDOWS * SEQ_LEN
    extra = {} if "head_composition" in omit else {"head_composition": {"baseline": COMPOSITION_BASELINE}}
    return writer.commit({
        **extra,
        "model": {"name": name, "n_layers": N_LAYERS, "d_mlp": D_MLP, "d_model": 16, "n_heads": N_HEADS},
        "corpus": {"spec": "synthetic", "n_documents": N_WINDOWS},
        "build": {"n_tokens": n_tokens, "n_windows": N_WINDOWS, "batch_size": 2,
                  "stats": {"seq_len": SEQ_LEN, "top_k": TOP_K, "records": RECORDS}},
        "timings": {"harvest_s": 1.25, "weights_s": 0.1, "write_s": 0.05},
        "histogram": {**describe(), "sample_fraction": 1.0},
        "records_per_neuron": RECORDS,
        "tokens_per_s": round(n_tokens / 1.25, 1),
    })
