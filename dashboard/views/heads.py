"""Head catalogue page (`heads?score=induction_score&layers=0&layers=5`, shareable): every attention
head at a glance.

A layer x head heatmap of one chosen score (clicking a cell opens that head's page), then every
head of the chosen layers with all its scores, sorted by the chosen one (the columns sort and the
table searches too); each row links to its head page, and selecting a row opens it. The score and
layers are bound to the URL; a value the link gets wrong is a notice and the control keeps its
default. A store without head statistics says how to get them. Queries: `data.head_*`; chart:
`charts.head_matrix`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, nav, params, render
from store.queries import HEAD_SCORE_COLUMNS
from store.schema import HEADS

SCORE_DEFAULT = "induction_score"
DIVERGING = {"ov_copying_score"}  # signed scores: a diverging colour scale around 0

path = nav.current()
st.title("Head catalogue")
nav.require_tables(path, "heads")
bounds = data.head_range(path)
if bounds is None:
    st.info("This store has no heads.")
    st.stop()
lo, hi = bounds["lo"], bounds["hi"]

problems = [
    params.choice_problem("score", st.query_params.get_all("score"), HEAD_SCORE_COLUMNS),
    params.range_problem("layers", st.query_params.get_all("layers"), lo, hi, whole=True) if hi > lo else None,
]
for problem in filter(None, problems):
    st.warning(f"The link's {problem} Showing the default instead.")

c1, c2 = st.columns([1, 2])
score = c1.selectbox("score", HEAD_SCORE_COLUMNS, index=HEAD_SCORE_COLUMNS.index(SCORE_DEFAULT), key="score",
                     bind="query-params", help="what the heatmap shows and the table is sorted by")
if hi > lo:
    layer_lo, layer_hi = sorted(c2.slider("layers", lo, hi, (lo, hi), key="layers", bind="query-params",
                                          help="list the heads of these layers (inclusive)"))
else:
    layer_lo, layer_hi = lo, hi
    c2.markdown(f"layer {lo} (the only layer)")
st.caption(render.md_escape(HEADS.column(score).description))

matrix = data.head_matrix(path, score, nav.store_param())
st.altair_chart(charts.head_matrix(matrix, score, diverging=score in DIVERGING), width="stretch")

frame = data.head_catalogue(path, layer_lo, layer_hi, score, nav.store_param())
st.caption(f"{len(frame):,} head{'s' * (len(frame) != 1)} · layers {layer_lo}–{layer_hi} · sorted by {score} "
           "· select a row or click “open” for its page")
config = {
    "open": st.column_config.LinkColumn("head page", display_text="open ↗", width="small"),
    "layer": st.column_config.NumberColumn("layer", format="%d"),
    "head": st.column_config.NumberColumn("head", format="%d"),
    "ov_copy_tokens": st.column_config.TextColumn("OV copies", help="tokens it copies most (· = space)"),
    "ov_suppress_tokens": st.column_config.TextColumn("OV suppresses", help="tokens it suppresses most"),
    **{c: st.column_config.NumberColumn(c, format="%.3f", help=HEADS.column(c).description)
       for c in HEAD_SCORE_COLUMNS},
}
event = st.dataframe(frame, hide_index=True, column_config=config, height=min(560, 38 + 35 * len(frame)),
                     key="head_catalogue", on_select="rerun", selection_mode="single-row")
rows = event.selection.rows if event is not None else []
if rows:
    picked = frame.iloc[rows[0]]
    st.switch_page(nav.HEAD, query_params=render.head_query(int(picked["layer"]), int(picked["head"])))
