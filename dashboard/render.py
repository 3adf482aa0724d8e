"""Render helpers: plain data in, HTML or display strings out. No Streamlit, no SQL.

Token heatmaps, token labels, histogram-bin labels and grouping, the deletion-score sentence,
neuron links and manifest flattening, and for heads the attention views (destination outlined,
sources shaded by attention), the token x token block rows, head links and the OV sentence live
here so that tests can call them on hand-made data.
Altair charts are in `dashboard/charts.py`; queries in `store/queries.py`.

Every piece of corpus text goes through `html.escape` before it enters HTML: a corpus token
is untrusted input (a token `<img src=x onerror=...>` must show as text).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from urllib.parse import urlencode

POS_RGB = (230, 97, 1)  # orange: positive activation
NEG_RGB = (33, 102, 172)  # blue: negative activation


def token_label(token: str | None) -> str:
    """A token as short display text: spaces as '·', newlines '↵', tabs '⇥' (for tables)."""
    if token is None:
        return "∅"
    if token == "":
        return "''"
    return token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def token_list_label(tokens: Sequence[str] | None, n: int = 5) -> str:
    return "  ".join(token_label(t) for t in (list(tokens) if tokens is not None else [])[:n])


ARTEFACT_FRAC = 0.5  # as store.queries.ARTEFACT_FRAC: above it, a neuron is a first-after-BOS artefact
ARTEFACT_NOTE = (
    "**Position artefact.** {share} of this neuron's top examples sit on the first token after a BOS "
    "(position 1, or the first token of a packed document). Language models put \"massive activations\" "
    "there: a few dimensions take values orders of magnitude above the rest on the first token, whatever "
    "it is, and later heads use that position as an attention sink (Sun et al. 2024, *Massive Activations "
    "in Large Language Models*; Xiao et al. 2023, attention sinks). Such a neuron responds to the "
    "position rather than to the text, so the overview and the catalogue list it apart (the catalogue's "
    "“show” switch: all, or position). BOS positions themselves are excluded from every statistic."
)


def is_artefact(after_bos_frac: float | None) -> bool:
    return after_bos_frac is not None and not math.isnan(after_bos_frac) and after_bos_frac > ARTEFACT_FRAC


def artefact_label(after_bos_frac: float | None) -> str:
    """The catalogue's label for a first-after-BOS artefact ('' for a neuron that responds to text)."""
    return f"after BOS {after_bos_frac:.0%}" if is_artefact(after_bos_frac) else ""


def artefact_note(after_bos_frac: float | None) -> str | None:
    """The neuron page's explanation of a first-after-BOS artefact (Markdown), or None."""
    return ARTEFACT_NOTE.format(share=f"{after_bos_frac:.0%}") if is_artefact(after_bos_frac) else None


def fires_on_label(tokens: Sequence[str] | None, counts: Sequence[int] | None, n_examples: int) -> str:
    """'·Paris ×6 | ·London ×2' for the tokens a neuron's top examples sit on (escape for HTML)."""
    parts = [f"{token_label(t)} ×{c}" for t, c in zip(tokens or [], counts or [], strict=False)]
    return " | ".join(parts) + (f"  (of {n_examples} top examples)" if parts and n_examples else "")


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def activation_colour(value: float | None, vmax: float, vmin: float = 0.0) -> str:
    """Background colour of a token: orange, full at the neuron's max (vmax), for positive values;
    blue for negative ones, full at max(|vmin|, vmax) so that the small negative tail of a GELU
    never outshines the positives; transparent at 0; light grey for None/NaN (BOS)."""
    if value is None or math.isnan(value):
        return "rgba(128,128,128,0.18)"
    if value >= 0:
        frac, rgb = (value / vmax if vmax > 0 else 0.0), POS_RGB
    else:
        scale = max(-vmin, vmax)
        frac, rgb = (-value / scale if scale > 0 else 0.0), NEG_RGB
    alpha = round(min(max(frac, 0.0), 1.0) * 0.85, 3)
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha})"


def _token_span(token: str, value: float | None, vmax: float, vmin: float, focus: bool) -> str:
    shown = html.escape(visible_token(token), quote=True)
    is_bos = value is None or math.isnan(value)
    title = html.escape(f"{token!r}: " + ("BOS (excluded from statistics)" if is_bos else f"{value:.4f}"))
    style = f"background:{activation_colour(value, vmax, vmin)};white-space:pre-wrap;border-radius:2px;padding:0 1px;"
    if focus:
        style += "outline:2px solid #222;outline-offset:0;font-weight:600;"
    br = "<br>" if "\n" in token else ""
    cls = ' class="ms-focus"' if focus else ""
    return f'<span{cls} title="{title}" style="{style}">{shown}</span>{br}'


def heatmap_html(tokens: Sequence[str | None], acts: Sequence[float | None], vmax: float, vmin: float = 0.0,
                 focus: int | None = None) -> str:
    """One example as inline HTML: each token shaded by its activation (hover shows the value),
    token `focus` (index into tokens) outlined. tokens and acts are aligned; the shorter wins."""
    spans = []
    for i, (tok, val) in enumerate(zip(tokens, acts, strict=False)):
        value = None if val is None else float(val)
        spans.append(_token_span("" if tok is None else str(tok), value, vmax, vmin, focus == i))
    return "".join(spans)


def example_html(example: dict, vmax: float, vmin: float = 0.0, caption: str = "") -> str:
    """One example row (a `neuron_examples` row with `context_tokens`) as a block of HTML."""
    focus = int(example["pos"]) - int(example["ctx_start"])
    tokens = example.get("context_display") or example.get("context_tokens") or []  # split characters merged
    body = heatmap_html(tokens, example.get("context_acts") or [], vmax, vmin, focus)
    label = html.escape(caption or f"{float(example['activation']):.3f}")
    where = html.escape(f"window {example['seq_id']}, position {example['pos']}")
    return (
        '<div style="display:flex;gap:0.75em;align-items:baseline;margin:0.15em 0;font-size:0.92em;">'
        f'<code title="{where}" style="min-width:5.5em;text-align:right;">{label}</code>'
        f'<div style="flex:1;min-width:0;overflow-wrap:anywhere;font-family:ui-monospace,monospace;'
        f'line-height:1.75;">{body}</div></div>'
    )


def window_html(window: Sequence[dict], example: dict, vmax: float, vmin: float = 0.0) -> str:
    """An example's whole window (`window`: rows pos, token, is_bos of every position): the
    stored context shaded as in `example_html` (its texts as shown), the rest of the window plain
    (no activation is stored there), BOS positions grey; the example's position outlined."""
    ctx_start = int(example["ctx_start"])
    shown = list(example.get("context_display") or example.get("context_tokens") or [])
    acts = list(example.get("context_acts") or [])
    spans = []
    for w in window:
        p, i = int(w["pos"]), int(w["pos"]) - ctx_start
        if 0 <= i < len(acts):
            token = shown[i] if i < len(shown) else str(w["token"])
            spans.append(_token_span(token, None if acts[i] is None else float(acts[i]), vmax, vmin,
                                     p == int(example["pos"])))
        elif w.get("is_bos"):
            spans.append(_token_span(str(w["token"]), float("nan"), vmax, vmin, False))
        else:
            token = str(w["token"])
            title = html.escape(f"{token!r}: position {p}, outside the stored context", quote=True)
            br = "<br>" if "\n" in token else ""
            spans.append(f'<span title="{title}" style="white-space:pre-wrap;padding:0 1px;opacity:0.75;">'
                         f'{html.escape(visible_token(token), quote=True)}</span>{br}')
    return ('<div style="font-family:ui-monospace,monospace;line-height:1.75;overflow-wrap:anywhere;'
            f'font-size:0.92em;">{"".join(spans)}</div>')


def examples_html(examples: Sequence[dict], vmax: float, vmin: float = 0.0) -> str:
    """Several examples, one per line, on one colour scale."""
    if not examples:
        return "<p><em>No examples.</em></p>"
    return "".join(example_html(e, vmax, vmin) for e in examples)


def value_tokens_html(tokens: Sequence[str] | None, label: str = "promotes") -> str:
    """A neuron's value tokens as one line of HTML, each escaped, in a code box."""
    style = "background:rgba(128,128,128,0.13);border-radius:3px;padding:0 4px;margin-right:2px;"
    boxes = " ".join(f'<code style="{style}">{html.escape(token_label(t))}</code>' for t in (tokens or []))
    return f'<div style="margin:0.1em 0 0.4em 0;font-size:0.92em;">{html.escape(label)}: {boxes or "—"}</div>'


def bound_label(x: float) -> str:
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.3g}".replace("-", "−")


def bin_label(lo: float, hi: float) -> str:
    """A histogram bin's value range as text. Positive bins are [lo, hi); negative ones (hi <= 0)
    hold -|hi| < x <= ... i.e. (lo, hi]; the near-zero bin spans zero."""
    if hi <= 0:
        return f"({bound_label(lo)}, {bound_label(hi)}]"
    return f"[{bound_label(lo)}, {bound_label(hi)})"


def octave_of(lo: float, hi: float) -> tuple[float, str]:
    """(sort key, label) of the octave a bin lies in: [2^k, 2^(k+1)) by magnitude, mirrored for
    negative bins; open-ended and near-zero bins are their own group. Larger key = higher values."""
    if lo < 0 < hi:
        return 0.0, f"near zero {bin_label(lo, hi)}"
    sign = 1 if hi > 0 else -1
    mag = lo if sign > 0 else -hi  # the smaller magnitude bound
    if math.isinf(hi if sign > 0 else lo):
        return sign * 1e9, (f"≥ {bound_label(lo)}" if sign > 0 else f"≤ {bound_label(hi)}")
    k = math.floor(math.log2(mag)) if mag > 0 else -1000
    a, b = 2.0**k, 2.0 ** (k + 1)
    return sign * (k + 1000), (bin_label(a, b) if sign > 0 else bin_label(-b, -a))


def _bound(value, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value)  # also 'inf', '-Infinity' as text
    except (TypeError, ValueError):
        return default


def bin_bounds(bin_ranges: Sequence[Sequence] | None) -> list[tuple[float, float]]:
    """The manifest's `histogram.bin_ranges` as float pairs. JSON has no infinity, so the open
    ends may be stored as null (or text): a missing low bound is -inf, a missing high one +inf."""
    out = []
    for r in bin_ranges or []:
        r = list(r) if isinstance(r, list | tuple) else [None, None]
        out.append((_bound(r[0] if r else None, -math.inf), _bound(r[1] if len(r) > 1 else None, math.inf)))
    return out


def group_by_octave(samples: Sequence[dict], bin_ranges: Sequence[Sequence[float]]) -> list[tuple[str, list[dict]]]:
    """Band samples (their `rank` is the histogram bin) grouped by octave, highest values first;
    each sample gets `bin_range` (its bin's label). Samples whose bin is unknown go last."""
    bounds = bin_bounds(bin_ranges)
    groups: dict[tuple[float, str], list[dict]] = {}
    for s in samples:
        b = int(s["rank"])
        if 0 <= b < len(bounds):
            lo, hi = bounds[b]
            key, rng = octave_of(lo, hi), bin_label(lo, hi)
        else:
            key, rng = (-2e9, "other bins"), f"bin {b}"
        groups.setdefault(key, []).append({**s, "bin_range": rng})
    ordered = sorted(groups.items(), key=lambda kv: -kv[0][0])
    return [(label, sorted(items, key=lambda s: -float(s["activation"]))) for (_, label), items in ordered]


def histogram_rows(counts: Sequence[int] | None, bin_ranges: Sequence[Sequence[float]]) -> list[dict]:
    """Rows (bin, range, from, count) for the bins from the first to the last non-empty one;
    `from` is the bin's lower edge, a short axis label."""
    counts, bounds = list(counts or []), bin_bounds(bin_ranges)
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return []
    rows = []
    for i in range(nonzero[0], nonzero[-1] + 1):
        known = i < len(bounds)
        rng = bin_label(*bounds[i]) if known else f"bin {i}"
        rows.append({"bin": i, "range": rng, "from": bound_label(bounds[i][0]) if known else f"bin {i}",
                     "count": int(counts[i])})
    return rows


def value_token_rows(tokens: Sequence[str] | None, logits: Sequence[float] | None) -> list[dict]:
    return [{"token": token_label(t), "logit": float(v)} for t, v in zip(tokens or [], logits or [], strict=False)]


def deletion_sentence(cos: float | None) -> str:
    """What a deletion score means, for this neuron."""
    if cos is None or math.isnan(cos):
        return "No deletion score for this neuron."
    base = (f"Deletion score {cos:+.3f}: the cosine between the direction this neuron reads from the "
            "residual stream (input weights) and the direction it writes back (output weights). ")
    if cos <= -0.5:
        return base + "Strongly negative: it writes back the negative of what it reads, erasing its own input."
    if cos <= -0.2:
        return base + "Moderately negative: it partly cancels the direction it reads."
    if cos < 0.2:
        return base + "Near zero: what it writes is unrelated to what it reads."
    return base + "Positive: it reinforces the direction it reads."


_LADDER = sorted(float(f"{m}e{e}") for e in range(-6, 10) for m in (1, 2, 3, 5))  # exact decimals


def ladder_stops(lo: float, hi: float, span: float = 1e4) -> list[float]:
    """Slider stops covering [lo, hi] for a value spread over decades (a neuron's max activation):
    1-2-3-5 steps per decade, from the smallest such step >= hi down to hi/span; the low end is the
    largest step <= lo, else 0, else minus the smallest step >= -lo (with 0 as a stop too)."""
    top = next((v for v in _LADDER if v >= hi), _LADDER[-1]) if hi > 0 else 0.0
    floor = top / span
    if lo >= floor:
        bottom = max((v for v in _LADDER if v <= lo), default=floor)
    elif lo >= 0:
        bottom = 0.0
    else:
        bottom = -next((v for v in _LADDER if v >= -lo), _LADDER[-1])
    inner = [v for v in _LADDER if bottom < v < top and v >= floor]
    stops = [bottom] + ([0.0] if bottom < 0 < top else []) + inner + [top]
    return sorted(set(stops))


def stop_label(x: float) -> str:
    """A slider stop as short text (also its value in the URL)."""
    return f"{x:g}"


def neuron_query(layer: int, neuron: int, store: str | None = None) -> dict[str, str]:
    params = {"layer": str(layer), "neuron": str(neuron)}
    if store:
        params["store"] = store
    return params


def neuron_url(layer: int, neuron: int, store: str | None = None, page: str = "neuron") -> str:
    """Relative link to a neuron page (works under any base URL)."""
    return f"{page}?{urlencode(neuron_query(layer, neuron, store))}"


def subject_links(frame, store: str | None = None) -> list[str | None] | None:
    """For a query result (a pandas frame) with whole-number `layer` and `neuron` (or `head`)
    columns, each row's link to that neuron's (head's) page (None where a value is missing);
    None when the result names no neuron or head, or already has an `open` column."""
    cols = set(frame.columns)
    kind = "neuron" if {"layer", "neuron"} <= cols else "head" if {"layer", "head"} <= cols else None
    if kind is None or "open" in cols:
        return None
    out = []
    for layer, index in zip(frame["layer"], frame[kind], strict=True):
        a, b = _whole(layer), _whole(index)
        out.append(None if a is None or b is None else
                   (neuron_url(a, b, store) if kind == "neuron" else head_url(a, b, store)))
    return out if any(u is not None for u in out) else None


def _whole(value) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f == f and f == int(f) else None


def parse_int(text: str | None) -> int | None:
    """An integer query parameter, or None when absent or not an integer."""
    if text is None:
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def md_escape(text: str) -> str:
    """Text for Markdown elements shown literally: `dashboard.text.md` (the one escaper)."""
    from dashboard.text import md

    return md(text)


def flat_items(d: dict | None, prefix: str = "") -> list[tuple[str, str]]:
    """A nested manifest section as (dotted key, display value) pairs; long lists abbreviated."""
    out: list[tuple[str, str]] = []
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(flat_items(v, key + "."))
        elif isinstance(v, list) and len(v) > 8:
            out.append((key, f"[{len(v)} values]"))
        elif isinstance(v, float):
            out.append((key, f"{v:,.4g}"))
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append((key, f"{v:,}"))
        else:
            out.append((key, str(v)))
    return out


# --- heads ---------------------------------------------------------------------------------

ATTN_RGB = (27, 120, 55)  # green: attention weight


def head_label(layer: int, head: int) -> str:
    return f"L{layer}/H{head}"


def head_query(layer: int, head: int, store: str | None = None) -> dict[str, str]:
    params = {"layer": str(layer), "head": str(head)}
    if store:
        params["store"] = store
    return params


def head_url(layer: int, head: int, store: str | None = None) -> str:
    """Relative link to a head page (works under any base URL)."""
    return f"head?{urlencode(head_query(layer, head, store))}"


_WHITESPACE_GLYPHS = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible_token(token: str) -> str:
    """A token's text with its whitespace made visible: newlines '↵', tabs '⇥', and a token that
    is only whitespace with a glyph per character ('·' a space, '␣' any other space character such
    as a no-break space), so that no token shows as an empty box. An empty text is '◌': a
    byte-level piece of the character that the next token completes (`context_display`)."""
    if token == "":
        return "◌"
    if token.strip() == "":
        return "".join(_WHITESPACE_GLYPHS.get(ch, "␣") for ch in token)
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def attention_colour(weight: float | None, scale: float) -> str:
    """Background of a source token: green, full at `scale` (the example's strongest weight)."""
    if weight is None or math.isnan(weight) or scale <= 0:
        return "transparent"
    alpha = round(min(max(weight / scale, 0.0), 1.0) * 0.85, 3)
    return f"rgba({ATTN_RGB[0]},{ATTN_RGB[1]},{ATTN_RGB[2]},{alpha})"


def attention_html(tokens: Sequence[str | None], pattern: Sequence[float | None], pos: int, src_pos: int,
                   after: int = 3) -> str:
    """One head example as inline HTML: the window's tokens up to the destination `pos` (outlined)
    and `after` more (dimmed: a query never sees them), each source shaded by the destination's
    attention to it, full colour at the strongest non-BOS weight; `src_pos` is underlined. Hover
    a token for its position and weight. Every token is escaped; whitespace is visible."""
    weights = [None if w is None else float(w) for w in pattern]
    scale = max((w for w in weights[1:pos + 1] if w is not None and not math.isnan(w)), default=0.0)
    spans = []
    for i in range(min(len(tokens), pos + 1 + after)):
        token = "" if tokens[i] is None else str(tokens[i])
        w = weights[i] if i < len(weights) and i <= pos else None
        style = "white-space:pre-wrap;border-radius:2px;padding:0 1px;"
        if i > pos:
            what = "after the destination"
            style += "opacity:0.4;"
        else:
            what = f"attention {w:.4f}" if w is not None and not math.isnan(w) else "attention —"
            style += f"background:{attention_colour(w, scale)};"
        classes = []
        if i == pos:
            classes.append("ms-dest")
            what = "destination · " + what
            style += "outline:2px solid #222;outline-offset:0;font-weight:600;"
        if i == src_pos:
            classes.append("ms-src")
            style += "border-bottom:3px solid #1b7837;"
        title = html.escape(f"{token!r} · position {i} · {what}", quote=True)
        cls = f' class="{" ".join(classes)}"' if classes else ""
        br = "<br>" if "\n" in token else ""
        spans.append(f'<span{cls} title="{title}" style="{style}">{html.escape(visible_token(token))}</span>{br}')
    return "".join(spans)


def head_example_html(example: dict) -> str:
    """One `head_examples` row as a block of HTML: its weight, then the attention view."""
    pos, src = int(example["pos"]), int(example["src_pos"])
    body = attention_html(example.get("context_tokens") or [], example.get("pattern") or [], pos, src)
    where = html.escape(f"window {example['seq_id']}, position {pos} attends to position {src}")
    return (
        '<div style="display:flex;gap:0.75em;align-items:baseline;margin:0.15em 0;font-size:0.92em;">'
        f'<code title="{where}" style="min-width:5.5em;text-align:right;">{float(example["attention"]):.3f}</code>'
        f'<div style="flex:1;min-width:0;overflow-wrap:anywhere;font-family:ui-monospace,monospace;'
        f'line-height:1.75;">{body}</div></div>'
    )


def attention_block_rows(example: dict) -> list[dict]:
    """The example's `block` (w x w, row-major) as rows (query, key, weight) for a token x token
    heatmap; query and key are 'position token' labels, unique by position."""
    block, start = list(example.get("block") or []), int(example.get("block_start") or 0)
    tokens = list(example.get("context_tokens") or [])
    w = math.isqrt(len(block))

    def label(p: int) -> str:
        return f"{p} {token_label(tokens[p]) if p < len(tokens) else '?'}"

    return [{"query": label(start + i), "key": label(start + j), "query_pos": start + i, "key_pos": start + j,
             "weight": float(block[i * w + j])} for i in range(w) for j in range(w)]


def offset_rows(corpus: Sequence[float] | None, weights: Sequence[float] | None) -> list[dict]:
    """Attention by offset as long rows (offset, source, attention): the corpus measurement and,
    when the store has it (learned position embeddings only), the weights' positional QK part."""
    rows = [{"offset": i, "source": "corpus (measured)", "attention": float(v)} for i, v in enumerate(corpus or [])]
    rows += [{"offset": i, "source": "weights (positional QK)", "attention": float(v)}
             for i, v in enumerate(weights or [])]
    return rows


def score_rows(row: dict, columns: Sequence[str], descriptions: dict[str, str]) -> list[dict]:
    """(score, value, meaning) for each of `columns` of a row; a null value is shown as None."""
    return [{"score": c, "value": None if row.get(c) is None else float(row[c]), "meaning": descriptions.get(c, "")}
            for c in columns]


def ov_sentence(score: float | None) -> str:
    """What a head's OV copying score means, for this head."""
    if score is None or math.isnan(score):
        return "No OV copying score for this head."
    base = (f"OV copying score {score:+.3f}: the share of the OV circuit's eigenvalues (in token space) that "
            "are positive, weighted by size. ")
    if score >= 0.5:
        return base + "It copies: attending to a token raises that same token's logit."
    if score <= -0.5:
        return base + "It suppresses: attending to a token lowers that same token's logit."
    return base + "Mixed: it neither clearly copies nor clearly suppresses what it attends to."


def weighted_tokens_html(tokens: Sequence[str | None], weights: Sequence[float]) -> str:
    """Tokens with their weights as one line of HTML code boxes, each token escaped."""
    style = "background:rgba(128,128,128,0.13);border-radius:3px;padding:0 4px;margin-right:2px;"
    boxes = [f'<code style="{style}">{html.escape(token_label(t))}</code>&nbsp;{float(w):+.3f}'
             for t, w in zip(tokens, weights, strict=False)]
    return f'<div style="margin:0.1em 0 0.4em 0;font-size:0.92em;line-height:2;">{" · ".join(boxes) or "—"}</div>'

