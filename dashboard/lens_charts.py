"""Altair charts of the logit-lens and residual-stream pages: plain rows in, `alt.Chart` out."""

from __future__ import annotations

import altair as alt
import pandas as pd

# What a lens cell can be coloured by: (column, title, colour scale, tooltip format).
LENS_COLOURS = {
    "probability": ("top1_prob", "top-1 probability", alt.Scale(scheme="blues", domain=[0, 1]), ".3f"),
    "kl": ("kl_to_final", "KL to final (nats)", alt.Scale(scheme="oranges"), ".3f"),
    "entropy": ("entropy_nats", "entropy (nats)", alt.Scale(scheme="purples"), ".2f"),
    "rank": ("rank", "rank of the true next token (log)", alt.Scale(type="symlog", scheme="greens", reverse=True), "d"),
}


def lens_grid(frame: pd.DataFrame, colour: str) -> alt.LayerChart:
    """Depth (rows, the embedding at the top, the model's output at the bottom) x position (columns):
    each cell the top-1 token of that state decoded, coloured by `colour` (LENS_COLOURS)."""
    field, title, scale, fmt = LENS_COLOURS[colour]
    depth_order = list(dict.fromkeys(frame.sort_values("depth")["depth_label"]))
    column_order = list(dict.fromkeys(frame.sort_values("pos")["column"]))
    base = alt.Chart(frame).encode(
        x=alt.X("column:N", title="position and token", sort=column_order,
                axis=alt.Axis(labelAngle=-45, labelLimit=90, labelOverlap=False)),
        y=alt.Y("depth_label:N", title="residual state", sort=depth_order, axis=alt.Axis(labelOverlap=False)),
    )
    tooltip = [
        alt.Tooltip("column:N", title="position, token"), alt.Tooltip("next:N", title="true next token"),
        alt.Tooltip("depth_label:N", title="state"), alt.Tooltip("top5:N", title="top 5"),
        alt.Tooltip("kl_to_final:Q", title="KL to final", format=".3f"),
        alt.Tooltip("entropy_nats:Q", title="entropy", format=".2f"),
        alt.Tooltip("rank:Q", title="rank of next token"), alt.Tooltip("true_prob:Q", title="p(next)", format=".3f"),
    ]
    cells = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color(f"{field}:Q", title=title, scale=scale), tooltip=tooltip)
    text = base.mark_text(fontSize=10, limit=70).encode(
        text="cell:N", tooltip=tooltip,
        color=alt.condition(_dark(field), alt.value("white"), alt.value("black")))
    n_depths, n_cols = len(depth_order), len(column_order)
    # Streamlit fits the whole chart, axes included, into `height`: room for the rotated labels
    return (cells + text).properties(height=110 + 24 * n_depths, width=max(300, 66 * n_cols))


def _dark(field: str) -> str:
    """A Vega predicate for cells dark enough to need white text."""
    return {"top1_prob": "datum.top1_prob > 0.6", "kl_to_final": "false", "entropy_nats": "false",
            "rank": "datum.rank == 0"}[field]


def depth_curves(stats: pd.DataFrame, columns: dict[str, str], title: str) -> alt.Chart:
    """Lines over depth (x) of several `layer_stats` columns {column: legend label}."""
    long = stats.melt(id_vars=["depth", "depth_label"], value_vars=list(columns), var_name="measure")
    long["measure"] = long["measure"].map(columns)
    return (
        alt.Chart(long, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("depth:Q", title="depth (2·layer = block input, +1 = after attention)"),
            y=alt.Y("value:Q", title=None),
            color=alt.Color("measure:N", title=None),
            tooltip=["depth_label:N", "measure:N", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(height=260)
    )


def writes_by_layer(stats: pd.DataFrame, field: str, title: str, y_title: str) -> alt.Chart:
    """Attention against MLP per block (grouped bars) of one `layer_stats` column."""
    rows = stats[stats["writer"].isin(["attention", "mlp"])]
    return (
        alt.Chart(rows, title=title)
        .mark_bar()
        .encode(
            x=alt.X("writer_layer:O", title="layer"),
            xOffset="writer:N",
            y=alt.Y(f"{field}:Q", title=y_title),
            color=alt.Color("writer:N", title=None, scale=alt.Scale(domain=["attention", "mlp"],
                                                                    range=["#4c78a8", "#f58518"])),
            tooltip=["writer:N", "writer_layer:O", alt.Tooltip(f"{field}:Q", format=".4f")],
        )
        .properties(height=260)
    )


def patch_grid(frame: pd.DataFrame) -> alt.Chart:
    """Layer (rows) x position (columns) of an activation-patching result (`value`: logit difference)."""
    order = list(dict.fromkeys(frame.sort_values("pos")["position"]))
    return (
        alt.Chart(frame, title="Logit difference after patching one (layer, position)")
        .mark_rect()
        .encode(
            x=alt.X("position:N", sort=order, title="position and token", axis=alt.Axis(labelAngle=-45)),
            y=alt.Y("layer:O", title="layer (residual stream entering it)"),
            color=alt.Color("value:Q", title="good − bad",
                            scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True)),
            tooltip=["layer:O", "position:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(height=120 + 14 * frame["layer"].nunique())
    )
