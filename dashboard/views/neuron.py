"""Neuron page (`?layer=..&neuron=..`, shareable): one neuron's evidence.

Top activating examples and band samples as token heatmaps (one colour scale per neuron: its
max), the activation histogram, the key-value view (tokens it promotes and suppresses), the
deletion score, its circuits (input tokens, upstream and downstream neurons and heads, when the
store has them), and links to the previous and next neuron. Bad or unknown parameters give a
notice and a picker, never a traceback. Queries: `data.py`; HTML: `render.py`; charts: `charts.py`.
"""

from __future__ import annotations

import html

import streamlit as st

from dashboard import charts, data, nav, render, text

CIRCUIT_SECTIONS = ("upstream_neuron", "upstream_head", "downstream_neuron", "downstream_head")
CIRCUIT_TITLES = ("Upstream neurons", "Upstream heads", "Downstream neurons", "Downstream heads")

path = nav.current()
nav.require_tables(path, "neurons", title="Neuron")
params = st.query_params
raw_layer, raw_neuron = params.get("layer"), params.get("neuron")
layer, neuron = render.parse_int(raw_layer), render.parse_int(raw_neuron)
bounds = data.layer_range(path)


def _go(target_layer: int, target_neuron: int) -> None:
    # `store` is left alone: `nav.choose_store` keeps it in the URL.
    st.query_params.update(render.neuron_query(target_layer, target_neuron))


def _picker(default_layer: int, default_neuron: int) -> None:
    with st.form("pick_neuron", border=False):
        c1, c2, c3 = st.columns([1, 1, 1], vertical_alignment="bottom")
        lo, hi = bounds or (0, 0)
        new_layer = c1.number_input("layer", min_value=lo, max_value=hi, step=1,
                                    value=min(max(default_layer, lo), hi))
        new_neuron = c2.number_input("neuron", min_value=0, step=1, value=max(default_neuron, 0))
        if c3.form_submit_button("Open neuron"):
            _go(int(new_layer), int(new_neuron))
            st.rerun()


problem = None
if raw_layer is None and raw_neuron is None:
    problem = "Pick a neuron (or open one from the catalogue)."
elif raw_layer is None or raw_neuron is None:
    given, absent = ("neuron", "layer") if raw_layer is None else ("layer", "neuron")
    problem = (f"The link gives a {given} but no {absent}: use `?layer=3&neuron=17` "
               "(a neuron is named by its layer and its index within the layer).")
elif layer is None or neuron is None:
    bad = [render.md_escape(f"{k}={v!r}")
           for k, v, n in (("layer", raw_layer, layer), ("neuron", raw_neuron, neuron)) if n is None]
    problem = f"The link's {' and '.join(bad)} is not a whole number: use `?layer=3&neuron=17`."
row = None if problem else data.neuron(path, layer, neuron)
if problem is None and row is None:
    span = f"layers {bounds[0]}–{bounds[1]}" if bounds else "no layers"
    problem = f"This store has no neuron {neuron} in layer {layer} ({span}; neurons are numbered from 0)."
if problem is not None or row is None:
    st.title("Neuron")
    (st.info if raw_layer is None and raw_neuron is None else st.warning)(problem)
    _picker(layer or 0, neuron or 0)
    st.stop()

_go(layer, neuron)  # re-send the URL: a page_link to this same page updates the view, not the address bar
st.set_page_config(page_title=f"L{layer}/N{neuron} · neuron · mechscope")
st.title(f"Layer {layer}, neuron {neuron}")
near = data.neighbours(path, layer, neuron)
nav_cols = st.columns([2, 2, 3, 2])  # short labels: none is cut from a 1,000 px window (Chromium)
for col, key, fmt, what in ((nav_cols[0], "prev", "← L{}/N{}", "the previous neuron"),
                            (nav_cols[1], "next", "L{}/N{} →", "the next neuron")):
    if key in near:
        t_layer, t_neuron = near[key]
        col.page_link(nav.NEURON, label=fmt.format(t_layer, t_neuron), help=what,
                      query_params=render.neuron_query(t_layer, t_neuron))
nav_cols[2].page_link(nav.CATALOGUE, label="back to the catalogue")
nav_cols[3].page_link(nav.LIVE, label="try it live ↗", query_params={"neuron": f"{layer}.{neuron}"},
                      help="run the model on a prompt of yours with this neuron selected (its activations, ablate it)")

vmax, vmin = float(row.get("max") or 0.0), float(row.get("min") or 0.0)
m = st.columns(7)
m[0].metric("max", f"{vmax:,.3f}")
m[1].metric("mean", f"{row.get('mean') or 0:.4f}")
m[2].metric("std", f"{row.get('std') or 0:.4f}")
m[3].metric("density", f"{(row.get('density_frac') or 0):.2%}", help="fraction of positions with activation > 0")
strong = row.get("strong_frac")
m[4].metric("strong density", "—" if strong is None else f"{strong:.2%}",
            help="fraction of (sampled) positions where the activation is within about a tenth of its max (at "
            "least the power of two in (max/16, max/8]): how often it fires strongly; unlike the raw density, "
            "meaningful for gated MLPs")
m[5].metric("deletion cos", f"{row.get('deletion_cos') or 0:+.3f}")
agree = row.get("kv_agreement_frac")
m[6].metric("kv agreement", "—" if agree is None else f"{agree:.0%}",
            help="fraction of top examples whose next token is among the top value tokens")

note = render.artefact_note(row.get("after_bos_frac"))
if note:
    st.warning(note, icon=":material/warning:")
if row.get("explanation"):
    st.markdown(f"**In short** (a template from the evidence below): {text.md(row['explanation'])}")
if data.missing(path, "neuron_explanations") is None:  # written by `python -m pipeline.explain`
    for e in data.neuron_explanations(path, layer, neuron):
        score = "no score" if e["score"] is None else f"score {e['score']:+.2f}"
        st.markdown(f"**{text.md(e['explainer'])}** ({score} over {e['scored_tokens']:,} held-out tokens, "
                    f"simulated by {text.md(e['simulator'])}): {text.md(e['explanation'])}")

left, right = st.columns([3, 2], gap="large")
with left:
    st.markdown("#### Top activating examples")
    st.caption("At most one example per window: each window's strongest position, strongest windows first. "
               "Orange = positive activation (full colour at this neuron's max), blue = negative (on the "
               "same scale, or its min if larger), grey = BOS (not counted). The outlined token is the "
               "example's own position; hover a token for its value; · is a space, ↵ a line break.")
    tops = data.examples(path, layer, neuron, "top")
    fires = render.fires_on_label(row.get("fires_on_tokens"), row.get("fires_on_counts"), len(tops))
    if fires:
        st.html(f'<div style="font-size:0.92em;margin-bottom:0.3em;"><b>fires on</b>: {html.escape(fires)}</div>')
    st.html(render.examples_html(tops, vmax, vmin))
    if tops and data.missing(path, "tokens") is None:
        with st.expander("Whole window of an example"):
            pick = st.selectbox("example", range(len(tops)), key="window_of", format_func=lambda i: (
                f"#{i} · {tops[i]['activation']:,.3f} · window {tops[i]['seq_id']}"))
            ex = tops[int(pick or 0)]
            st.caption(f"Window {ex['seq_id']}, all {len(data.window_tokens(path, ex['seq_id']))} positions; "
                       "activations are stored for the shaded context only.")
            st.html(render.window_html(data.window_tokens(path, ex["seq_id"]), ex, vmax, vmin))

with right:
    st.markdown("#### Key-value view")
    st.caption("The output weights read through the final norm and the unembedding: the tokens this neuron "
               "pushes up (top) and down (bottom) per unit of activation.")
    top_rows = render.value_token_rows(row.get("kv_top_tokens"), row.get("kv_top_logits"))
    bottom_rows = render.value_token_rows(row.get("kv_bottom_tokens"), row.get("kv_bottom_logits"))
    kv_left, kv_right = st.columns(2)
    if top_rows:
        kv_left.altair_chart(charts.value_tokens(top_rows, "promotes", "#e66101"), width="stretch")
    if bottom_rows:
        kv_right.altair_chart(charts.value_tokens(bottom_rows, "suppresses", "#2166ac"), width="stretch")
    st.markdown("#### Deletion score")
    st.write(render.deletion_sentence(row.get("deletion_cos")))
    st.markdown("#### Neighbours")
    st.caption("Neurons of the same layer whose output weights point most nearly the same way "
               "(cosine): they write nearly the same thing to the residual stream.")
    for other, cos in zip(row.get("nbr_neurons") or [], row.get("nbr_cos") or [], strict=False):
        st.page_link(nav.NEURON, label=f"L{layer}/N{other} · cos {cos:+.3f}",
                     query_params=render.neuron_query(layer, int(other)))

st.markdown("#### Input tokens")
if nav.has_table(path, "neuron_circuits"):
    circuits = data.neuron_circuits(path, layer, neuron)
    inputs = circuits.get("input_token", [])
    st.caption("Tokens whose embeddings excite this neuron most, through the residual stream straight into its "
               "input weights (virtual weights, norms folded in).")
    st.html(render.weighted_tokens_html([r["other_token"] for r in inputs], [r["weight"] for r in inputs]))
    st.markdown("#### Upstream / downstream")
    st.caption("The neurons and heads whose output this neuron's input weights read most strongly (upstream: "
               "earlier layers, and the heads of its own layer, which run before its MLP), and those that read "
               "its output most strongly (downstream), by virtual weight.")
    columns = st.columns(4)
    for col, relation, title in zip(columns, CIRCUIT_SECTIONS, CIRCUIT_TITLES, strict=True):
        col.markdown(f"**{title}**")
        for r in circuits.get(relation, []):
            other_layer, other = int(r["other_layer"]), int(r["other_index"])
            is_head = relation.endswith("_head")
            col.page_link(nav.HEAD if is_head else nav.NEURON,
                          label=(render.head_label(other_layer, other) if is_head else f"L{other_layer}/N{other}")
                          + f" · weight {r['weight']:+.3f}",
                          query_params=(render.head_query if is_head else render.neuron_query)(other_layer, other))
        if not circuits.get(relation):
            col.caption("none")

hist = data.manifest(path).get("histogram") or {}
bin_ranges = hist.get("bin_ranges") or []
st.markdown("#### Activation histogram")
hist_rows = render.histogram_rows(row.get("hist_counts"), bin_ranges)
if hist_rows:
    st.altair_chart(charts.histogram(hist_rows, hist.get("sample_fraction")), width="stretch")
else:
    st.caption("No histogram counts for this neuron.")

st.markdown("#### Samples across the activation range")
st.caption("One position drawn at random from each histogram bin (bins are quarter-octaves of the "
           "activation), grouped by octave, highest first: what the neuron does at weaker activations.")
bands = data.examples(path, layer, neuron, "band")
if not bands:
    st.caption("No band samples for this neuron.")
for label, samples in render.group_by_octave(bands, bin_ranges):
    with st.expander(f"activation in {label} · {len(samples)} sample{'s' * (len(samples) != 1)}",
                     expanded=samples[0]["activation"] >= vmax / 2 > 0):
        st.html("".join(render.example_html(s, vmax, vmin, caption=f"{s['activation']:.3f} in {s['bin_range']}")
                        for s in samples))
