"""Cached queries of the logit-lens and residual-stream pages (SQL in `store/lens_queries.py`),
returned as pandas and shaped for the charts in `dashboard/lens_charts.py`."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import render
from dashboard.data import _TTL_S, get_store
from store import lens_queries


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def lens_windows(path: str) -> pd.DataFrame:
    return lens_queries.lens_windows(get_store(path)).to_pandas()


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def window_tokens(path: str, seq_id: int) -> list[str]:
    return [r["token"] for r in lens_queries.window_tokens(get_store(path), seq_id).to_pylist()]


def depth_label(layer: int, site: str) -> str:
    """'L3 in' (block 3's input), 'L3 attn' (after its attention), 'L29 out' (the last block's output)."""
    return f"L{layer} " + {"resid_pre": "in", "resid_mid": "attn", "resid_post": "out"}[site]


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def lens_grid(path: str, seq_id: int) -> pd.DataFrame:
    """One row per (position, depth) of a window, display-ready: cell text (the top-1 token,
    shortened), the top-5 as one line for the tooltip, and the position's column label."""
    rows = lens_queries.lens_grid(get_store(path), seq_id).to_pylist()
    for r in rows:
        tops = [render.visible_token(t) for t in r["top_tokens"]]
        r["top1"] = tops[0]
        r["top1_prob"] = r["top_probs"][0]
        r["cell"] = tops[0] if len(tops[0]) <= 8 else tops[0][:7] + "…"
        r["top5"] = "  ".join(f"{t} {p:.2f}" for t, p in zip(tops, r["top_probs"], strict=True))
        r["depth_label"] = depth_label(r["layer"], r["site"])
        r["column"] = f"{r['pos']:>3} {render.visible_token(r['token'])}"
        r["next"] = render.visible_token(r["next_token"]) if r["next_token"] is not None else "(end of window)"
        r["rank"] = r["true_rank"]
    frame = pd.DataFrame(rows)
    return frame.drop(columns=["top_tokens", "top_probs", "true_rank"]) if len(frame) else frame


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def layer_stats(path: str) -> pd.DataFrame:
    frame = lens_queries.layer_stats(get_store(path)).to_pandas()
    frame["depth_label"] = [depth_label(int(layer), site)
                            for layer, site in zip(frame["layer"], frame["site"], strict=True)]
    return frame


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def pca_summary(path: str) -> dict:
    return lens_queries.pca_summary(get_store(path)).to_pylist()[0]
