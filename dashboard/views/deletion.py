"""Deletion neurons page (`?n=20&layers=0&layers=29&threshold=-0.5`, shareable): the neurons whose
output weights point against their input weights.

A per-layer chart of how many neurons have deletion_cos below a threshold, then the most negative
neurons, each with its value tokens and top activating examples (the neuron page's heatmap) and a
link to its page. The controls are bound to the URL; a value the link gets wrong is a notice and
the control keeps its default. Queries: `data.deletion_*`; HTML: `render.py`; charts: `charts.py`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, nav, params, render

N_RANGE, N_DEFAULT = (1, 100), 20
THRESHOLD_RANGE, THRESHOLD_DEFAULT = (-1.0, 0.0), -0.5
N_EXAMPLES = 3

path = nav.current()
st.title("Deletion neurons")
nav.require_tables(path, "neurons")
st.markdown(
    "The **deletion score** `deletion_cos` is the cosine between a neuron's input weights (the "
    "direction it reads from the residual stream) and its output weights (the direction it writes "
    "back), both in the residual basis. Strongly negative: the neuron writes back the negative of "
    "what it reads, so when it fires it erases its own input direction. For gated MLPs the input "
    "vector is the *up* projection: the output is linear in up·x, so a neuron writing minus its up "
    "vector erases what it reads, whatever the gate does. The score is a function of the weights "
    "alone; the examples below show what the neuron reads in the corpus."
)

bounds = data.layer_range(path)
if bounds is None:
    st.info("This store has no neurons.")
    st.stop()
lo, hi = bounds

problems = [
    params.int_problem("n", st.query_params.get_all("n"), *N_RANGE),
    params.range_problem("layers", st.query_params.get_all("layers"), lo, hi, whole=True) if hi > lo else None,
    params.float_problem("threshold", st.query_params.get_all("threshold"), *THRESHOLD_RANGE),
]
for problem in filter(None, problems):
    st.warning(f"The link's {problem} Showing the default instead.")

st.subheader("Per layer")
threshold = st.columns([1, 2])[0].slider(
    "deletion_cos below", *THRESHOLD_RANGE, THRESHOLD_DEFAULT, step=0.05, key="threshold", bind="query-params",
    help="count the neurons of each layer whose deletion score is below this value",
)
counts = data.deletion_counts(path, threshold)
n_below, n_all = int(counts["n_below"].sum()), int(counts["n_neurons"].sum())
st.caption(f"{n_below:,} of {n_all:,} neurons ({n_below / max(n_all, 1):.2%}) have deletion_cos < {threshold:+.2f}")
st.altair_chart(charts.per_layer(counts, "n_below", f"neurons with deletion_cos < {threshold:+.2f}", fmt="d"),
                width="stretch")

st.subheader("Most negative")
c1, c2 = st.columns([1, 2])
n = c1.slider("how many", *N_RANGE, N_DEFAULT, key="n", bind="query-params")
if hi > lo:
    layer_lo, layer_hi = sorted(c2.slider("layers", lo, hi, (lo, hi), key="layers", bind="query-params",
                                          help="rank the neurons of these layers (inclusive)"))
else:
    layer_lo, layer_hi = lo, hi
    c2.markdown(f"layer {lo} (the only layer)")

rows = data.deletion_neurons(path, n, layer_lo, layer_hi, N_EXAMPLES)
if not rows:
    st.info(f"No neuron in layers {layer_lo}–{layer_hi} has a deletion score.")
    st.stop()
st.caption(f"The {len(rows)} neurons of layers {layer_lo}–{layer_hi} with the most negative deletion_cos, "
           f"each with its top {N_EXAMPLES} activating examples (orange = positive activation, full colour "
           "at the neuron's max; the outlined token is the example's own position).")
for rank, r in enumerate(rows, start=1):
    layer, neuron = int(r["layer"]), int(r["neuron"])
    with st.container(border=True):
        head, stats = st.columns([3, 2], vertical_alignment="center")
        head.page_link(nav.NEURON, label=f"#{rank} · layer {layer}, neuron {neuron} · deletion cos "
                       f"{r['deletion_cos']:+.3f}", icon=":material/neurology:",
                       query_params=render.neuron_query(layer, neuron))
        stats.caption(f"max {r['max'] or 0:.3f} · density {r['density_frac'] or 0:.2%}")
        body = render.value_tokens_html(r["top_value_tokens"])
        body += render.examples_html(r["examples"], float(r["max"] or 0.0), float(r["min"] or 0.0))
        st.html(body)
