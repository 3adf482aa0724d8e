"""Neuron catalogue page: every neuron with its headline numbers, filtered by layer range, by a
token it promotes (key-value view) and by a token it fires on (activation records ⨝ tokens).

Each row links to its neuron page; selecting a row opens it too. The filters are bound to the
URL (`promotes`, `fires_on`), so a filtered catalogue can be shared. Queries: `data.catalogue`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, nav, render

path = nav.current()
st.title("Neuron catalogue")

bounds = data.layer_range(path)
if bounds is None:
    st.info("This store has no neurons.")
    st.stop()

lo, hi = bounds
c1, c2, c3 = st.columns([2, 1, 1])
if hi > lo:
    layer_lo, layer_hi = c1.slider("layers", lo, hi, (lo, hi), help="show neurons of these layers (inclusive)")
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
    help="neurons with activation records on this token, strongest first; whitespace around "
    "the token and letter case are ignored",
)

frame = data.catalogue(path, layer_lo, layer_hi, promotes or "", fires_on or "", nav.store_param())

what = [f"layers {layer_lo}–{layer_hi}"]
if (promotes or "").strip():
    what.append(f"promoting “{promotes.strip()}”")
if (fires_on or "").strip():
    what.append(f"firing on “{fires_on.strip()}”")
st.caption(f"{len(frame):,} neurons · " + ", ".join(what) + " · select a row or click “open” for its page")

config = {
    "open": st.column_config.LinkColumn("neuron page", display_text="open ↗", width="small"),
    "layer": st.column_config.NumberColumn("layer", format="%d"),
    "neuron": st.column_config.NumberColumn("neuron", format="%d"),
    "max": st.column_config.NumberColumn("max", format="%.3f", help="largest activation"),
    "density_frac": st.column_config.NumberColumn("density", format="%.4f", help="fraction of positions > 0"),
    "deletion_cos": st.column_config.NumberColumn(
        "deletion cos", format="%.3f", help="input/output weight cosine; strongly negative = deletes what it reads"),
    "kv_agreement_frac": st.column_config.NumberColumn(
        "kv agreement", format="%.2f", help="fraction of top examples whose next token is a top value token"),
    "top_value_tokens": st.column_config.TextColumn("top value tokens", help="tokens it promotes most (· = space)"),
    "fires_on_records": st.column_config.NumberColumn("records on token", format="%d"),
    "fires_on_max": st.column_config.NumberColumn("max on token", format="%.3f"),
}
if frame.empty:
    st.info("No neuron matches these filters.")
    st.stop()

event = st.dataframe(frame, hide_index=True, column_config=config, height=560, key="catalogue",
                     on_select="rerun", selection_mode="single-row")
rows = event.selection.rows if event is not None else []
if rows:
    picked = frame.iloc[rows[0]]
    # No `store` here: with several stores it is bound to the sidebar picker and kept across pages.
    st.switch_page(nav.NEURON, query_params=render.neuron_query(int(picked["layer"]), int(picked["neuron"])))
