"""Overview page: what this store is (model, corpus, build, timings from the manifest), how big
each table is, per-layer density and activation scale, and links into the other pages.

Data comes from `dashboard/data.py`; charts from `dashboard/charts.py`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, nav, render, text

path = nav.current()
m = data.manifest(path)
model, corpus, build = m.get("model") or {}, m.get("corpus") or {}, m.get("build") or {}
timings = m.get("timings") or {}

st.title(f"{text.md(model.get('name', 'unknown model'))} × {text.md(corpus.get('spec', 'unknown corpus'))}")
st.caption(f"store: {text.code(path)}" + (f" · built {text.md(m['created_at'])}" if m.get("created_at") else ""))

n_layers, d_mlp = model.get("n_layers"), model.get("d_mlp")
cols = st.columns(5)
cols[0].metric("layers", f"{n_layers:,}" if isinstance(n_layers, int) else "?")
cols[1].metric("neurons per layer", f"{d_mlp:,}" if isinstance(d_mlp, int) else "?")
cols[2].metric("tokens read", f"{build.get('n_tokens', 0):,}")
cols[3].metric("documents", f"{corpus.get('n_documents', 0):,}")
tps = m.get("tokens_per_s")
cols[4].metric("harvest speed", f"{tps:,.0f} tok/s" if isinstance(tps, int | float) else "?")

st.markdown(
    "BOS positions — position 0 of every window and the separators between packed documents — "
    "are left out of every neuron statistic, as Neuronpedia leaves out position 0: activations "
    "there are attention-sink artefacts, not responses to the text."
)

st.subheader("Explore")
links = st.columns(2) + st.columns(2) + st.columns(2)  # rows of two: the labels stay whole
links[0].page_link(nav.CATALOGUE, label="Neuron catalogue: filter, search, open a neuron", icon=":material/table_rows:")
links[1].page_link(nav.DELETION, label="Deletion neurons: those that erase what they read",
                   icon=":material/remove_circle:")
links[2].page_link(nav.SQL, label="SQL console: ask your own questions", icon=":material/terminal:")
links[3].page_link(nav.NEURON, label="Neuron page: layer 0, neuron 0", icon=":material/neurology:",
                   query_params=render.neuron_query(0, 0))
links[4].page_link(nav.HEADS, label="Head catalogue: attention heads by score", icon=":material/grid_view:")
links[5].page_link(nav.CIRCUITS, label="Circuits: how heads compose", icon=":material/hub:")

summary = data.layer_summary(path) if nav.has_table(path, "neurons") else None
if summary is None:
    pass  # the notice says how to get the neuron statistics
elif summary.empty:
    st.info("This store has no neurons.")
else:
    st.subheader("Per layer")
    left, right = st.columns(2)
    left.altair_chart(charts.per_layer(summary, "mean_strong_frac",
                                       "how often neurons fire strongly (mean fraction ≥ ~max/10)"),
                      width="stretch")
    right.altair_chart(charts.per_layer(summary, "mean_max_text",
                                        "activation scale (mean of per-neuron max, artefacts left out)"),
                       width="stretch")
    st.caption("Raw density (fraction > 0) says little for gated MLPs, whose activation is positive about half "
               "the time: the left chart counts positions within about a tenth of each neuron's max "
               "(`strong_frac`). The right one leaves out the first-after-BOS artefacts (below), whose "
               "massive activations would dominate their layers' means.")

    st.subheader("Notable neurons")
    notable = st.columns(2)
    for col, (column, descending, title) in zip(notable, (
        ("max", True, "Largest activations (neurons that respond to text)"),
        ("deletion_cos", False, "Most deletion-like (input/output cosine)"),
    ), strict=True):
        col.markdown(f"**{title}**")
        for r in data.notable_neurons(path, column, descending, 10 if column == "max" else 5):
            col.page_link(nav.NEURON, label=f"layer {r['layer']}, neuron {r['neuron']}: {column} = {r['value']:,.3f}",
                          query_params=render.neuron_query(r["layer"], r["neuron"]))
        if column == "deletion_cos":
            col.page_link(nav.DELETION, label="more on the deletion neurons page →")
    n_artefacts = data.artefact_count(path)
    with st.expander(f"Position artefacts: {n_artefacts:,} neuron{'s' * (n_artefacts != 1)} whose top examples "
                     "sit mostly on the first token after a BOS"):
        st.markdown(render.ARTEFACT_NOTE.format(share="More than half"))
        for r in data.notable_neurons(path, "max", True, 10, artefacts=True):
            st.page_link(nav.NEURON, label=f"layer {r['layer']}, neuron {r['neuron']}: max = {r['value']:,.3f} · "
                         f"{r['after_bos_frac']:.0%} of top examples after a BOS",
                         query_params=render.neuron_query(r["layer"], r["neuron"]))
        st.page_link(nav.CATALOGUE, label="all of them in the catalogue →", query_params={"show": "position"})

st.subheader("Store")
left, right = st.columns(2)
with left:
    st.markdown("**Rows per table**")
    st.dataframe(data.row_counts(path), hide_index=True,
                 column_config={"table_name": "table",
                                "n_rows": st.column_config.NumberColumn("rows", format="localized")})
    st.markdown("**Timings**")
    items = [(k, f"{v:,.1f} s" if isinstance(v, int | float) else str(v)) for k, v in timings.items()]
    st.dataframe({"step": [k for k, _ in items], "time": [v for _, v in items]}, hide_index=True,
                 )
with right:
    for title, section in (("Model", model), ("Corpus", corpus), ("Build parameters", build)):
        with st.expander(title, expanded=title == "Model"):
            items = render.flat_items(section)
            st.dataframe({"key": [k for k, _ in items], "value": [v for _, v in items]}, hide_index=True)
    extra = {k: v for k, v in m.items() if k not in ("model", "corpus", "build", "timings", "tables", "histogram")}
    if extra:
        with st.expander("Other manifest fields"):
            items = render.flat_items(extra)
            st.dataframe({"key": [k for k, _ in items], "value": [v for _, v in items]}, hide_index=True)
