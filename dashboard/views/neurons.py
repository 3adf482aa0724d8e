"""Neuron catalogue page: every neuron with its headline numbers, the tokens it fires on and
promotes and its template explanation, filtered by layer range, by a token it promotes
(key-value view), by a token it fires on (ranked by selectivity: activation records ⨝ tokens),
by text in its explanation and by score ranges (max, density_frac, strong_frac, deletion_cos,
kv_agreement_frac; applied in SQL). Neurons whose top examples sit mostly on the first token
after a BOS (position artefacts) are left out by default and one switch away.

Each row links to its neuron page; selecting a row opens it too. Every filter is bound to the URL
(`layers`, `promotes`, `fires_on`, `search`, `show`, and e.g.
`deletion_cos=-1&deletion_cos=-0.5`), so a filtered catalogue can be shared; a value the link
gets wrong is a notice, and the filter stays open. Queries: `data.catalogue`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, nav, params, render, text

# column -> (label, fixed bounds or None for the store's own, help); the range sliders, in order
RANGES = {
    "max": ("max activation", None, "largest activation (stops step 1-2-3-5 per decade)"),
    "density_frac": ("density", (0.0, 1.0), "fraction of positions where the activation is > 0"),
    "strong_frac": ("strong density", (0.0, 1.0), "fraction of positions where the activation is within about a "
                    "tenth of the neuron's max (meaningful for gated MLPs)"),
    "deletion_cos": ("deletion cos", (-1.0, 1.0), "input/output weight cosine; strongly negative = deletes "
                     "what it reads"),
    "kv_agreement_frac": ("kv agreement", (0.0, 1.0), "fraction of top examples whose next token is a top "
                          "value token; narrowing it leaves out neurons without a score"),
}


# what the `show` switch keeps: text neurons (the default), all, or only the position artefacts
ARTEFACT_VIEWS = {"text": False, "all": None, "position": True}


def range_filters(path: str) -> tuple[list[tuple[str, float, float]], list[str]]:
    """The range sliders: the active (column, lo, hi) filters and notices about bad link values."""
    active, notices = [], []
    store_bounds = data.score_bounds(path)
    cols = st.columns(len(RANGES))
    for col, (column, (label, fixed, help_)) in zip(cols, RANGES.items(), strict=True):
        raw = st.query_params.get_all(column)
        if fixed is not None:
            lo, hi = fixed
            problem = params.range_problem(column, raw, lo, hi)
            chosen = col.slider(label, lo, hi, (lo, hi), step=0.01, key=column, bind="query-params", help=help_)
        else:
            stops = render.ladder_stops(*store_bounds.get(column, (0.0, 0.0)))
            if len(stops) < 2:
                continue
            lo, hi = stops[0], stops[-1]
            problem = params.range_problem(column, raw, lo, hi, [render.stop_label(x) for x in stops])
            chosen = col.select_slider(label, stops, (lo, hi), format_func=render.stop_label, key=column,
                                       bind="query-params", help=help_)
        if problem:
            notices.append(problem)
        a, b = sorted(chosen)  # a link may give the ends in either order
        if (a, b) != (lo, hi):
            active.append((column, float(a), float(b)))
    return active, notices

path = nav.current()
st.set_page_config(page_title="Neuron catalogue · mechscope")
st.title("Neuron catalogue")
nav.require_tables(path, "neurons")

bounds = data.layer_range(path)
if bounds is None:
    st.info("This store has no neurons.")
    st.stop()

lo, hi = bounds
layer_problem = params.range_problem("layers", st.query_params.get_all("layers"), lo, hi, whole=True) \
    if hi > lo else None
artefact_problem = params.choice_problem("show", st.query_params.get_all("show"), list(ARTEFACT_VIEWS))
for problem in filter(None, (layer_problem, artefact_problem)):
    st.warning(f"The link's {problem} Showing the default instead.")
c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
if hi > lo:
    layer_lo, layer_hi = sorted(c1.slider("layers", lo, hi, (lo, hi), key="layers", bind="query-params",
                                          help="show neurons of these layers (inclusive)"))
else:
    layer_lo, layer_hi = lo, hi
    c1.markdown(f"layer {lo} (the only layer)")
promotes = c2.text_input(
    "promotes token", key="promotes", bind="query-params", placeholder="e.g. Paris",
    help="neurons with this token among their top value tokens (key-value view); whitespace "
    "around the token and letter case are ignored",
)
fires_on = c3.text_input(
    "fires on token", key="fires_on", bind="query-params", placeholder="e.g. the",
    help="neurons with activation records on this token, most selective first: selectivity = the share of the "
    "token's occurrences among the neuron's strongest activations × the share of its top-example activation on the "
    "token or a related token (its nearest tokens in the model's embedding, e.g. London for Paris); whitespace "
    "around the token and letter case are ignored",
)
search = c4.text_input(
    "explanation contains", key="search", bind="query-params", placeholder="e.g. Paris",
    help="neurons whose offline explanation (what it fires on, what it promotes, where) contains this text",
)
view = st.radio(
    "show", list(ARTEFACT_VIEWS), key="show", horizontal=True,
    bind="query-params", help="text: neurons that respond to text (the default); all; position: only the position "
    "artefacts, neurons whose top examples sit mostly on the first token after "
    "a BOS (massive activations / attention sinks, Sun et al. 2024), a response to the position, not the text",
) or "text"

ranges, notices = range_filters(path)
for notice in notices:
    st.warning(f"The link's {notice} That range filter is left open.")
frame = data.catalogue(path, layer_lo, layer_hi, promotes or "", fires_on or "", nav.store_param(), tuple(ranges),
                       ARTEFACT_VIEWS[view], search or "")

what = [f"layers {layer_lo}–{layer_hi}"]
if (promotes or "").strip():
    what.append(f"promoting “{text.md(promotes.strip())}”")
if (fires_on or "").strip():
    what.append(f"firing on “{text.md(fires_on.strip())}”, most selective first")
    related = data.related_tokens(path, fires_on)
    if related:
        labels = ", ".join(render.token_label(t) for t in related)
        what.append("related (nearest in the model's embedding): " + text.md(labels))
if (search or "").strip():
    what.append(f"explanation containing “{text.md(search.strip())}”")
what.append({"text": "position artefacts left out", "all": "position artefacts included",
             "position": "position artefacts only"}[view])
what += [f"{RANGES[c][0]} {render.stop_label(a)} to {render.stop_label(b)}" for c, a, b in ranges]
st.caption(f"{len(frame):,} neuron{'s' * (len(frame) != 1)} · " + ", ".join(what)
           + " · select a row or click “open” for its page")

config = {
    "open": st.column_config.LinkColumn("neuron page", display_text="open ↗", width="small"),
    "layer": st.column_config.NumberColumn("layer", format="%d"),
    "neuron": st.column_config.NumberColumn("neuron", format="%d"),
    "max": st.column_config.NumberColumn("max", format="%.3f", help="largest activation"),
    "density_frac": st.column_config.NumberColumn("density", format="%.4f", help="fraction of positions > 0"),
    "strong_frac": st.column_config.NumberColumn(
        "strong density", format="%.4f", help="fraction of positions within about a tenth of the max"),
    "after_bos_frac": st.column_config.NumberColumn(
        "after BOS", format="%.2f", help="share of top examples on the first token after a BOS (> 0.5: artefact)"),
    "artefact": st.column_config.TextColumn("artefact", help="position artefact: top examples mostly right after "
                                            "a BOS (massive activations / attention sink)"),
    "fires_on_tokens": st.column_config.TextColumn("fires on", help="most frequent tokens of its top examples "
                                                   "(· = space)"),
    "explanation": st.column_config.TextColumn("explanation", width="large"),
    "selectivity": st.column_config.NumberColumn(
        "selectivity", format="%.2f", help="on token × related share, 0 to 1: 1 = fires on every occurrence of the "
        "token and on nothing unrelated"),
    "token_recall": st.column_config.NumberColumn(
        "on token", format="%.2f", help="share of the token's occurrences among the neuron's strongest activations "
        "(its activation records)"),
    "related_share": st.column_config.NumberColumn(
        "related share", format="%.2f", help="share of its top-example activation on the token or a related token "
        "(nearest in the model's embedding)"),
    "deletion_cos": st.column_config.NumberColumn(
        "deletion cos", format="%.3f", help="input/output weight cosine; strongly negative = deletes what it reads"),
    "kv_agreement_frac": st.column_config.NumberColumn(
        "kv agreement", format="%.2f", help="fraction of top examples whose next token is a top value token"),
    "top_value_tokens": st.column_config.TextColumn("top value tokens", help="tokens it promotes most (· = space)"),
    "fires_on_records": st.column_config.NumberColumn("records on token", format="%d"),
    "fires_on_max": st.column_config.NumberColumn("max on token", format="%.3f"),
}
if frame.empty:
    st.info("No neuron matches these filters: widen a range or clear a token.")
    st.dataframe(frame, hide_index=True, column_config=config, key="catalogue_empty")
    st.stop()

# what it responds to first, then the numbers, the sentence last
ORDER = ("open", "layer", "neuron", "artefact", "fires_on_tokens", "top_value_tokens", "selectivity",
         "token_recall", "related_share", "fires_on_records", "fires_on_max", "max", "after_bos_frac", "strong_frac",
         "density_frac", "deletion_cos", "kv_agreement_frac", "explanation")
event = st.dataframe(frame, hide_index=True, column_config=config, height=min(560, 38 + 35 * len(frame)),
                     column_order=[c for c in ORDER if c in frame.columns], key="catalogue",
                     on_select="rerun", selection_mode="single-row")
rows = event.selection.rows if event is not None else []
if rows:
    picked = frame.iloc[rows[0]]
    # No `store` here: with several stores it is bound to the sidebar picker and kept across pages.
    st.switch_page(nav.NEURON, query_params=render.neuron_query(int(picked["layer"]), int(picked["neuron"])))
