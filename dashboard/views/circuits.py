"""Circuits page (`circuits?kind=k&kind=v&margin=0.2&n=50`, shareable): how heads compose.

The strongest composition scores across the model drawn as a graph: heads as nodes placed by
layer (x) and head (y), coloured by their OV copying score, each a link to its head page; an
edge from the head that writes to the head that reads, for every score above its baseline by at
least the chosen margin, coloured by kind (Q, K or V composition). Below, the same edges as a
table with links. The kinds, margin and edge limit are bound to the URL; a value the link gets
wrong is a notice and the control keeps its default. Queries: `data.strongest_compositions`,
`data.head_matrix`; chart: `charts.composition_graph`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, nav, params
from store.queries import COMPOSITION_KINDS

MARGIN_RANGE, MARGIN_DEFAULT = (0.0, 1.0), 0.1
N_RANGE, N_DEFAULT = (1, 500), 100

path = nav.current()
st.title("Circuits")
st.markdown(
    "**Composition** (Elhage et al. 2021): how much of what an earlier head writes (its OV circuit) a later "
    "head reads with its query (**Q**: what it looks for), key (**K**: where it can be found, as an induction "
    "head reads a previous-token head) or value (**V**: what it moves). Scores are in [0, 1]; random matrices "
    "of the same shapes score about the baseline, so only the margin above it means composition."
)
nav.require_tables(path, "heads", "head_composition")

problems = [
    params.choice_problem("kind", st.query_params.get_all("kind"), COMPOSITION_KINDS, multi=True),
    params.float_problem("margin", st.query_params.get_all("margin"), *MARGIN_RANGE),
    params.int_problem("n", st.query_params.get_all("n"), *N_RANGE),
]
for problem in filter(None, problems):
    st.warning(f"The link's {problem} Showing the default instead.")

c1, c2, c3 = st.columns([2, 2, 1])
# No format_func: a bound multiselect keeps its formatted options in the URL, and `kind=k` reads best.
kinds = c1.multiselect("kinds (q: query, k: key, v: value)", COMPOSITION_KINDS, default=list(COMPOSITION_KINDS),
                       key="kind", bind="query-params", help="which input of the reading head")
margin = c2.slider("score above baseline by at least", *MARGIN_RANGE, MARGIN_DEFAULT, step=0.01, key="margin",
                   bind="query-params", help="draw an edge only where score − baseline is at least this")
n = c3.number_input("at most", *N_RANGE, N_DEFAULT, step=10, key="n", bind="query-params",
                    help="the strongest edges, at most this many")

edges = data.strongest_compositions(path, tuple(kinds), float(margin), int(n), nav.store_param())
nodes = data.head_matrix(path, "ov_copying_score", nav.store_param())
kind_text = ", ".join(k.upper() for k in kinds) or "no kind"
st.caption(f"{len(edges):,} edge{'s' * (len(edges) != 1)} · {kind_text} · score − baseline ≥ {margin:.2f}"
           f"{f' · the strongest {n}' if len(edges) >= n else ''} · click a head to open its page")
st.altair_chart(charts.composition_graph(nodes, edges), width="stretch")

if edges.empty:
    st.info("No composition passes these filters: lower the margin or pick more kinds.")
    st.stop()
st.markdown("#### Edges")
columns = ["writes", "kind", "reads", "score", "baseline", "margin", "writes_url", "reads_url"]
st.dataframe(edges[columns], hide_index=True, height=min(560, 38 + 35 * len(edges)), column_config={
    "writes": st.column_config.TextColumn("writes", help="the earlier head, whose output is read"),
    "kind": st.column_config.TextColumn("kind", help="q, k or v: which input of the later head reads it"),
    "reads": st.column_config.TextColumn("reads", help="the later head"),
    "score": st.column_config.NumberColumn("score", format="%.3f"),
    "baseline": st.column_config.NumberColumn("baseline", format="%.3f", help="random matrices of the same shapes"),
    "margin": st.column_config.NumberColumn("above baseline", format="%.3f"),
    "writes_url": st.column_config.LinkColumn("writer's page", display_text="open ↗"),
    "reads_url": st.column_config.LinkColumn("reader's page", display_text="open ↗"),
})
