"""Residual-stream page (`residual`): what attention and the MLPs write into the residual stream,
how large it grows, what each writer contributes to the next-token logit, and the PCA experiment
re-measured on this store, beside the published GPT-2 figures.

All from `layer_stats` and `lens_positions` (the logit lens's sampled positions, BOS excluded).
Queries: `dashboard/lens_data.py`; charts: `dashboard/lens_charts.py`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import lens_charts, lens_data, nav
from store.lens_queries import PUBLISHED_PCA

path = nav.current()
nav.require_tables(path, "layer_stats", "lens_positions", title="Residual stream")
st.title("Residual stream")
stats = lens_data.layer_stats(path)
blocks = stats[stats["writer"].isin(["attention", "mlp"])]
if blocks.empty or blocks["write_norm_mean"].isna().all():
    st.info("The build sampled no position for the logit lens: rebuild with a denser sample, e.g. "
            "`mechscope build ... --lens-sample 1`.")
    st.stop()
n = int(stats["n_positions"].iloc[0])

st.subheader("What attention and the MLPs write")
by = blocks.pivot(index="writer_layer", columns="writer", values="write_norm_mean")
mlp_more = int((by["mlp"] > by["attention"]).sum())
st.markdown(f"The MLP writes a larger vector than attention in **{mlp_more} of {len(by)}** layers "
            f"(mean L2 norm of each sublayer's output over {n:,} sampled positions).")
c1, c2 = st.columns(2)
c1.altair_chart(lens_charts.writes_by_layer(stats, "write_norm_mean", "Mean norm of what each sublayer writes",
                                            "mean L2 norm"), width="stretch")
c2.altair_chart(lens_charts.writes_by_layer(stats, "write_share", "Share of the block's squared write",
                                            "share (attention + MLP = 1)"), width="stretch")
c1, c2 = st.columns(2)
c1.altair_chart(lens_charts.writes_by_layer(stats, "write_dla_mean",
                                            "Direct logit attribution to the true next token",
                                            "mean logit contribution"), width="stretch")
c2.altair_chart(lens_charts.depth_curves(stats, {"resid_norm_mean": "residual norm"},
                                         "Residual norm growth"), width="stretch")
embedding = stats[stats["writer"] == "embedding"]["write_dla_mean"]
st.caption("Direct logit attribution: each sublayer's output read through the final norm (its scale "
           "frozen at the final state's) and the unembedding column of the true next token; the "
           "embedding's, every attention's and every MLP's sum to the final logit minus the biases"
           + (f" (the embedding's mean here: {float(embedding.iloc[0]):.3f})." if len(embedding) else "."))

st.subheader("One direction across layers? The PCA experiment")
pca = lens_data.pca_summary(path)
table = pd.DataFrame([
    {"": "this store, raw states", "share of variance on PC1": pca["share"],
     "PC1 decodes to the final top-1": pca["match"]},
    {"": "this store, each state scaled to unit norm (control)", "share of variance on PC1": pca["share_normalized"],
     "PC1 decodes to the final top-1": pca["match_normalized"]},
    {"": "published, GPT-2 (raw)", "share of variance on PC1": PUBLISHED_PCA["share"],
     "PC1 decodes to the final top-1": PUBLISHED_PCA["match"]},
])
st.dataframe(table, hide_index=True, column_config={
    "share of variance on PC1": st.column_config.NumberColumn(format="percent"),
    "PC1 decodes to the final top-1": st.column_config.NumberColumn(format="percent")})
drop = (pca["share"] or 0) - (pca["share_normalized"] or 0)
st.markdown(
    f"Per sampled position ({pca['n_positions']:,}), the residual states at block boundaries (the embedding "
    "and every block's output) are centred over the layers and their first principal component taken, signed "
    "toward the final state and decoded like a state. "
    + ("Scaling each state to unit norm first lowers the share by "
       f"{drop * 100:.0f} points and the match from {pca['match'] * 100:.0f}% to "
       f"{pca['match_normalized'] * 100:.0f}%: "
       "much of the raw result is the residual's norm growing with depth, which alone puts most variance on one "
       "direction, the one the last (largest) states point along, and so decodes to the output. "
       if drop > 0.05 else
       "Scaling each state to unit norm first changes the share little here, so norm growth alone does not "
       "explain it. ")
    + "The published figures come from GPT-2 small; a different model, corpus and sample give different numbers, "
    "and the raw share is not evidence of a single 'prediction direction' unless it survives the control.")
