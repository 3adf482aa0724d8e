"""Altair chart builders: plain rows in, `alt.Chart` out. No Streamlit, no SQL.

Pages pass the rows they got from `dashboard/data.py` (or from `dashboard/render.py` helpers,
such as `histogram_rows`) and hand the chart to `st.altair_chart`.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

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


def histogram(rows: Sequence[dict], sample_fraction: float | None = None) -> alt.Chart:
    """Bars of counts over histogram bins (rows from `render.histogram_rows`) on a log count axis.

    Bars start at 0.5 rather than 0 (log 0 has no place on the axis), so a bin with one position
    still shows; empty bins keep their place on the axis and draw nothing."""
    frame = pd.DataFrame(list(rows), columns=["bin", "range", "from", "count"])
    order = frame["from"].tolist()
    title = "positions per activation bin (log scale)"
    if sample_fraction and sample_fraction < 1:
        title += f", from a {sample_fraction:.3g} sample of positions"
    return (
        alt.Chart(frame[frame["count"] > 0], title=title)
        .mark_bar(color="#e66101")
        .encode(
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
