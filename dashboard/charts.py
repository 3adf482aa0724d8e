"""Altair chart builders: plain rows in, `alt.Chart` out. No Streamlit, no SQL.

Pages pass the rows they got from `dashboard/data.py` (or from `dashboard/render.py` helpers,
such as `histogram_rows`) and hand the chart to `st.altair_chart`.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from store.histogram_bins import ZERO_BIN

# Streamlit fits the whole chart (title and axes included) into its height: keep axis titles short.


def per_layer(rows: pd.DataFrame, field: str, title: str, fmt: str = ".3g") -> alt.Chart:
    """Bar chart of one per-layer value (rows with `layer`, `n_neurons` and the field, such as
    `layer_summary`'s); fmt "d" makes it a count, with whole-number ticks."""
    y_axis = alt.Axis(format="d", tickMinStep=1) if fmt == "d" else alt.Axis()
    return (
        alt.Chart(rows, title=title)
        .mark_bar(color="#e66101")
        .encode(
            x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
            y=alt.Y(f"{field}:Q", title=None, axis=y_axis),
            tooltip=[alt.Tooltip("layer:O"), alt.Tooltip(f"{field}:Q", format=fmt), alt.Tooltip("n_neurons:Q")],
        )
        .properties(height=260)
    )


SIGN_COLOURS = {"positive": "#e66101", "negative": "#2166ac", "near zero": "#999999"}  # render.POS_RGB / NEG_RGB


def histogram(rows: Sequence[dict], sample_fraction: float | None = None) -> alt.Chart:
    """Bars of counts over histogram bins (rows from `render.histogram_rows`) on a log count axis.

    Bars start at 0.5 rather than 0 (log 0 has no place on the axis), so a bin with one position
    still shows; empty bins keep their place on the axis and draw nothing."""
    frame = pd.DataFrame(list(rows), columns=["bin", "range", "from", "count"])
    # the heatmaps' colours: orange for positive bins, blue for negative ones, grey near zero
    frame["sign"] = ["positive" if b > ZERO_BIN else "negative" if b < ZERO_BIN else "near zero" for b in frame["bin"]]
    order = frame["from"].tolist()
    title = "positions per activation bin (log scale)"
    if sample_fraction and sample_fraction < 1:
        title += f", from a {sample_fraction:.3g} sample of positions"
    return (
        alt.Chart(frame[frame["count"] > 0], title=title)
        .mark_bar()
        .encode(
            color=alt.Color("sign:N", legend=None, scale=alt.Scale(
                domain=["negative", "near zero", "positive"], range=[SIGN_COLOURS[k] for k in
                                                                     ("negative", "near zero", "positive")])),
            x=alt.X("from:N", sort=order, scale=alt.Scale(domain=order), title="activation (bin's lower edge)",
                    axis=alt.Axis(labelAngle=-45, labelOverlap=True)),
            y=alt.Y("count:Q", scale=alt.Scale(type="log", domainMin=0.5), title="positions"),
            y2=alt.datum(0.5),
            tooltip=[alt.Tooltip("range:N", title="activation"), "count:Q", "bin:O"],
        )
        .properties(height=340)
    )


def value_tokens(rows: Sequence[dict], title: str, colour: str) -> alt.Chart:
    """Horizontal bars of value-token logits (rows from `render.value_token_rows`), in given order."""
    frame = pd.DataFrame(list(rows), columns=["token", "logit"])
    frame["order"] = range(len(frame))
    return (
        alt.Chart(frame, title=title)
        .mark_bar(color=colour)
        .encode(
            y=alt.Y("token:N", sort=alt.EncodingSortField("order"), title=None, axis=alt.Axis(labelOverlap=False)),
            x=alt.X("logit:Q", title="logit"),
            tooltip=["token:N", alt.Tooltip("logit:Q", format=".3f")],
        )
        .properties(height=90 + 28 * len(frame))
    )


def head_matrix(frame: pd.DataFrame, column: str, diverging: bool = False) -> alt.Chart:
    """Layer x head heatmap of one score (rows with layer, head, value, url, label): a cell's link
    (`href`) opens that head's page; hover shows the value."""
    scale = alt.Scale(scheme="redblue", domainMid=0, reverse=True) if diverging else alt.Scale(scheme="viridis")
    n_layers = frame["layer"].nunique() if len(frame) else 1
    return (
        alt.Chart(frame, title=f"{column} per head (click a cell to open the head)")
        .mark_rect(stroke="white", strokeWidth=0.5, cursor="pointer")
        .encode(
            x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("layer:O", title="layer"),
            color=alt.Color("value:Q", title=column, scale=scale),
            href="url:N",
            tooltip=[alt.Tooltip("label:N", title="head"), alt.Tooltip("value:Q", title=column, format=".4f")],
        )
        .properties(height=min(140 + 34 * n_layers, 1100))
    )


def attention_block(rows: Sequence[dict]) -> alt.Chart:
    """Token x token heatmap of a block of an attention pattern (rows from `render.attention_block_rows`)."""
    frame = pd.DataFrame(list(rows), columns=["query", "key", "query_pos", "key_pos", "weight"])
    order = frame.drop_duplicates("key_pos").sort_values("key_pos")["key"].tolist()
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("key:N", sort=order, title="source (key)", axis=alt.Axis(labelAngle=-45, labelOverlap=False)),
            y=alt.Y("query:N", sort=order, title="destination (query)", axis=alt.Axis(labelOverlap=False)),
            color=alt.Color("weight:Q", scale=alt.Scale(domain=[0, 1], range=["#ffffff", "#00441b"]),
                            title="attention"),
            tooltip=[alt.Tooltip("query:N", title="destination"), alt.Tooltip("key:N", title="source"),
                     alt.Tooltip("weight:Q", format=".4f")],
        )
        .properties(height=120 + 26 * len(order))
    )


def attention_by_offset(rows: Sequence[dict]) -> alt.Chart:
    """Mean attention per offset (rows from `render.offset_rows`), one line per source."""
    frame = pd.DataFrame(list(rows), columns=["offset", "source", "attention"])
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("offset:O", title="offset (key = query − offset)", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("attention:Q", title="mean attention"),
            color=alt.Color("source:N", title=None,
                            legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=320)),
            tooltip=["source:N", "offset:O", alt.Tooltip("attention:Q", format=".4f")],
        )
        .properties(height=260)
    )


KIND_COLOURS = {"q": "#1b9e77", "k": "#d95f02", "v": "#7570b3"}


def composition_graph(nodes: pd.DataFrame, edges: pd.DataFrame) -> alt.LayerChart:
    """Heads as nodes at (layer, head), composition edges as lines from the writing head to the
    reading one, coloured by kind, wider for higher scores. Nodes link (`href`) to their head pages.
    `nodes`: layer, head, value (OV copying score), url, label; `edges`: `strongest_compositions` rows."""
    x = alt.Scale(domain=[-0.5, max(int(nodes["layer"].max()) if len(nodes) else 0, 1) + 0.5], nice=False)
    y = alt.Scale(domain=[max(int(nodes["head"].max()) if len(nodes) else 0, 1) + 0.5, -0.5], nice=False)
    kinds = alt.Scale(domain=list(KIND_COLOURS), range=list(KIND_COLOURS.values()))
    edge_frame = edges.assign(src=[f"L{a}/H{b}" for a, b in zip(edges["src_layer"], edges["src_head"], strict=True)],
                              dst=[f"L{a}/H{b}" for a, b in zip(edges["dst_layer"], edges["dst_head"], strict=True)])
    lines = (
        alt.Chart(edge_frame)
        .mark_rule(opacity=0.75)
        .encode(
            x=alt.X("src_layer:Q", scale=x, title="layer", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("src_head:Q", scale=y, title="head", axis=alt.Axis(tickMinStep=1, format="d")),
            x2="dst_layer:Q", y2="dst_head:Q",
            color=alt.Color("kind:N", scale=kinds, title="composition",
                            legend=alt.Legend(orient="top", direction="horizontal")),
            strokeWidth=alt.StrokeWidth("score:Q", scale=alt.Scale(range=[1, 7]), legend=None),
            tooltip=[alt.Tooltip("src:N", title="writes"), alt.Tooltip("dst:N", title="reads"), "kind:N",
                     alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("baseline:Q", format=".3f")],
        )
    )
    points = (
        alt.Chart(nodes)
        .mark_circle(size=260, stroke="#333", strokeWidth=0.8, opacity=1, cursor="pointer")
        .encode(
            x=alt.X("layer:Q", scale=x), y=alt.Y("head:Q", scale=y),
            color=alt.Color("value:Q", scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True),
                            title="OV copying", legend=alt.Legend(orient="top", direction="horizontal")),
            href="url:N",
            tooltip=[alt.Tooltip("label:N", title="head"), alt.Tooltip("value:Q", title="OV copying", format="+.3f")],
        )
    )
    n_heads = int(nodes["head"].max()) + 1 if len(nodes) else 1
    return alt.layer(lines, points).resolve_scale(color="independent").properties(
        height=min(180 + 40 * n_heads, 1000), title="composition between heads (click a head to open it)")
