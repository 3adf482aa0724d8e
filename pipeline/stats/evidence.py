"""Derived `neurons` columns that summarise a neuron's evidence for the catalogue, each exact and
computed from columns that are themselves exact and mergeable (so they share their invariance
to batch size, resuming and sharding):

- `after_bos_frac`: the share of its top examples sitting on the first token after a BOS (from
  the token before each example, `_top_prev_token_ids`, -1 at a BOS);
- `fires_on_tokens` / `fires_on_counts`: the most frequent tokens at its top examples' own
  positions (from the resolved `neuron_examples.context_tokens`);
- `strong_frac`: the fraction of (histogram-sampled) positions where it is within about a tenth
  of its max (from `hist_counts` and `max`), a density that means something for gated MLPs,
  whose raw density (fraction > 0) sits near one half;
- `explanation`: a one-sentence template from the above, the value tokens and the layer.

Each is a function of the build's `{table: {column: values}}` listed in `derived.DERIVED`; it
adds its column(s) when its inputs are there.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store.histogram_bins import HIGH_EXP, LOW_EXP, ZERO_BIN, bin_ranges

N_FIRES_ON = 5  # tokens kept per neuron in fires_on_tokens


def after_bos_frac(tables: dict[str, dict]) -> None:
    """neurons.after_bos_frac: share of the top examples whose previous position is a BOS."""
    neurons = tables.get("neurons", {})
    if "_top_prev_token_ids" not in neurons or "_top_n_examples" not in neurons:
        return
    neurons["after_bos_frac"] = bos_share(neurons["_top_prev_token_ids"], neurons["_top_n_examples"])


def bos_share(prev_token_ids, n_examples) -> np.ndarray:
    """[neurons] share of examples whose previous token id is -1 (BOS); NaN without examples.
    Empty example slots come last in each row (ranks are dense), so the first n count."""
    prev = np.asarray(prev_token_ids).reshape(len(prev_token_ids), -1)
    n = np.asarray(n_examples, dtype=np.int64)
    filled = np.arange(prev.shape[1])[None, :] < n[:, None]
    at_bos = ((prev == -1) & filled).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, at_bos / np.maximum(n, 1), np.nan).astype(np.float32)


def fires_on_tokens(tables: dict[str, dict]) -> None:
    """neurons.fires_on_tokens / fires_on_counts from the top examples' own tokens (as shown:
    `context_display` where a row has it and the token shows something, else `context_tokens`)."""
    neurons, examples = tables.get("neurons", {}), tables.get("neuron_examples", {})
    ctx = examples.get("context_tokens")
    if not neurons or "layer" not in neurons or not isinstance(ctx, pa.Array | pa.ChunkedArray):
        return
    display = examples.get("context_display")
    tokens, counts = most_frequent_tokens(
        neurons["layer"], neurons["neuron"], examples["layer"], examples["neuron"], examples["kind"],
        examples["rank"], examples["pos"], examples["ctx_start"], ctx,
        display if isinstance(display, pa.Array | pa.ChunkedArray) else None)
    neurons["fires_on_tokens"] = tokens
    neurons["fires_on_counts"] = counts


def _own_tokens(context_tokens, rows: np.ndarray, offset_in_row: np.ndarray) -> pa.Array:
    """The element `offset_in_row[i]` of list row `rows[i]` of a list<string> column."""
    if isinstance(context_tokens, pa.ChunkedArray):
        context_tokens = context_tokens.combine_chunks()
    offsets = np.asarray(context_tokens.offsets)
    return pc.take(context_tokens.flatten(), pa.array(offsets[rows] + offset_in_row))


def most_frequent_tokens(n_layer, n_neuron, e_layer, e_neuron, kind, rank, pos, ctx_start, context_tokens,
                         context_display=None, n: int = N_FIRES_ON) -> tuple[list[list[str]], list[list[int]]]:
    """Per neuron (rows of n_layer/n_neuron), the `n` most frequent tokens among its 'top'
    examples, most frequent first; ties: the token of the stronger (lower-rank) example first.
    `context_display` (optional, nullable rows): the texts as shown, used where not null or ''."""
    rows = np.nonzero(np.asarray(kind) == "top")[0]
    at = np.asarray(pos)[rows].astype(np.int64) - np.asarray(ctx_start)[rows].astype(np.int64)
    own = _own_tokens(context_tokens, rows, at)
    if context_display is not None:
        if isinstance(context_display, pa.ChunkedArray):
            context_display = context_display.combine_chunks()
        has = np.asarray(context_display.is_valid())[rows]
        if has.any():
            shown = own.to_pylist()
            alt = _own_tokens(context_display.filter(pa.array(np.isin(np.arange(len(context_display)), rows[has]))),
                              np.arange(int(has.sum())), at[has]).to_pylist()
            for i, text in zip(np.nonzero(has)[0], alt, strict=True):
                if text:
                    shown[i] = text
            own = pa.array(shown, pa.string())
    enc = pc.dictionary_encode(own)
    vocab = enc.dictionary.to_pylist()
    tok = np.asarray(enc.indices, dtype=np.int64)
    key = np.asarray(e_layer)[rows].astype(np.int64) << 32 | np.asarray(e_neuron)[rows].astype(np.int64)
    want = np.asarray(n_layer).astype(np.int64) << 32 | np.asarray(n_neuron).astype(np.int64)
    which = np.searchsorted(want, key)  # neurons are in (layer, neuron) order
    r = np.asarray(rank)[rows].astype(np.int64)
    # one group per (neuron, token): its count and its strongest example's rank
    order = np.lexsort((r, tok, which))
    which, tok, r = which[order], tok[order], r[order]
    start = np.ones(len(which), dtype=bool)
    start[1:] = (which[1:] != which[:-1]) | (tok[1:] != tok[:-1])
    firsts = np.nonzero(start)[0]
    g_which, g_tok, g_rank = which[firsts], tok[firsts], r[firsts]
    g_count = np.diff(np.append(firsts, len(which)))
    best = np.lexsort((g_rank, -g_count, g_which))
    g_which, g_tok, g_count = g_which[best], g_tok[best], g_count[best]
    # the first n groups of each neuron
    first_of = np.searchsorted(g_which, g_which, side="left")
    keep = np.arange(len(g_which)) - first_of < n
    g_which, g_tok, g_count = g_which[keep], g_tok[keep], g_count[keep]
    bounds = np.searchsorted(g_which, np.arange(len(want) + 1))
    vocab_arr = np.array(vocab, dtype=object)
    out_tokens = [vocab_arr[g_tok[a:b]].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    out_counts = [g_count[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return out_tokens, out_counts


def strong_frac(tables: dict[str, dict]) -> None:
    """neurons.strong_frac from the histogram counts and the max."""
    neurons = tables.get("neurons", {})
    if "hist_counts" not in neurons or "max" not in neurons:
        return
    neurons["strong_frac"] = strong_fraction(neurons["hist_counts"], neurons["max"])


def strong_threshold(vmax: float) -> float | None:
    """The power of two in (max/16, max/8], kept within the histogram's edges [2^-6, 2^6];
    None when the max is not positive."""
    if not vmax > 0 or math.isinf(vmax):
        return None if not vmax > 0 else 2.0**HIGH_EXP
    e = math.floor(math.log2(vmax)) - 3
    return 2.0 ** min(max(e, LOW_EXP), HIGH_EXP)


def strong_fraction(hist_counts, maxes) -> np.ndarray:
    """[neurons] fraction of the histogram's counts in the bins at or above strong_threshold(max)."""
    counts = np.asarray([np.asarray(c, dtype=np.int64) for c in hist_counts]) if len(hist_counts) else \
        np.zeros((0, 2 * ZERO_BIN + 1), np.int64)
    lows = np.array([lo for lo, _ in bin_ranges()])
    out = np.full(len(counts), np.nan, dtype=np.float32)
    totals = counts.sum(1)
    for i, vmax in enumerate(np.asarray(maxes, dtype=np.float64)):
        t = strong_threshold(float(vmax))
        if t is None or totals[i] == 0:
            continue
        out[i] = counts[i, lows >= t].sum() / totals[i]
    return out


def _rows(values) -> list:
    """A column as a list of Python values (lists for list columns)."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.to_pylist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def _quoted(tokens) -> str:
    return ", ".join(f"“{t}”" for t in tokens)


def explain(layer: int, n_layers: int, fires_on: list[str] | None, counts: list[int] | None, n_examples: int,
            after_bos: float | None, promotes: list[str] | None, agreement: float | None,
            deletion_cos: float | None) -> str:
    """A short template explanation of one neuron from its evidence: what it fires on, what it
    promotes, where it sits; position artefacts are named as such."""
    third = 3 * layer // max(n_layers, 1)
    where = f"{('early', 'middle', 'late')[min(third, 2)]} layer ({layer} of {n_layers})"
    if after_bos is not None and after_bos == after_bos and after_bos > 0.5:
        parts = [f"Position artefact: {after_bos:.0%} of its top examples sit on the first token after a BOS "
                 "(a massive activation / attention sink, not a response to the text)"]
    elif fires_on:
        counted = [f"“{t}” ({c}/{n_examples})" for t, c in zip(fires_on[:3], counts or [], strict=False)]
        if counts and counts[0] > 1:
            parts = [f"Fires on {', '.join(counted)}"]
        else:
            parts = [f"Fires on varied tokens, e.g. {_quoted(fires_on[:3])}"]
    else:
        parts = ["No top examples"]
    if promotes:
        promo = f"promotes {_quoted(promotes[:3])}"
        if agreement is not None and agreement == agreement and agreement > 0:
            promo += f" (the next token is one of them at {agreement:.0%} of its top examples)"
        parts.append(promo)
    if deletion_cos is not None and deletion_cos == deletion_cos and deletion_cos <= -0.5:
        parts.append(f"erases what it reads (deletion cos {deletion_cos:+.2f})")
    return "; ".join(parts) + f"; {where}."


def explanation(tables: dict[str, dict]) -> None:
    """neurons.explanation: the offline template explanation of every neuron."""
    neurons = tables.get("neurons", {})
    need = ("layer", "fires_on_tokens", "fires_on_counts", "_top_n_examples", "after_bos_frac", "kv_top_tokens")
    if any(c not in neurons for c in need):
        return
    layers = np.asarray(neurons["layer"])
    n_layers = int(layers.max()) + 1 if len(layers) else 0
    none = [None] * len(layers)
    cols = [_rows(neurons[c]) if c in neurons else none for c in (
        "fires_on_tokens", "fires_on_counts", "_top_n_examples", "after_bos_frac", "kv_top_tokens",
        "kv_agreement_frac", "deletion_cos")]
    neurons["explanation"] = [explain(int(layer), n_layers, *row) for layer, *row in zip(layers, *cols, strict=True)]


DERIVED = (after_bos_frac, fires_on_tokens, strong_frac, explanation)
