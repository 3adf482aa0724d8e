"""Logit-lens page (`lens?window=12&from=16&colour=probability`, shareable): what each residual
state of the model already predicts, at the positions the build sampled.

A window picker (windows holding sampled positions), then a depth x position grid of the top-1
token each state decodes to (nostalgebraist's view), coloured by its probability, the KL to the
final distribution, the entropy or the rank of the true next token; hover for the top 5. Below,
the same measures over every sampled position of the corpus, per depth (`layer_stats`). The
states are decoded through the final norm with each state's own scale. Queries:
`dashboard/lens_data.py`; charts: `dashboard/lens_charts.py`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import lens_charts, lens_data, nav, params
from dashboard.text import md

MAX_COLUMNS = 32  # positions per grid



def _bound(where, name: str, options: list[str], label_of, label: str | None = None, help: str | None = None) -> str:
    """A selectbox kept in the URL parameter `name` (Streamlit's own binding would put the shown
    label, not the value, into the URL when the options have labels)."""
    raw = st.query_params.get(name)
    pick = where.selectbox(label or name, options, index=options.index(raw) if raw in options else 0,
                           format_func=label_of, key=f"{name}_pick", help=help)
    st.query_params[name] = pick
    return pick


path = nav.current()
nav.require_tables(path, "logit_lens", "lens_positions", "layer_stats", "tokens", title="Logit lens")
st.title("Logit lens")
st.caption("Each residual state decoded through the final norm (with that state's own scale) and the "
           "unembedding: the rows go from the embedding (L0 in) through every block, after attention "
           "(attn) and after the MLP (the next block's in), to the model's output (out), which is its "
           "own prediction. Only the positions the build sampled are shown (spans of 16 tokens).")

windows = lens_data.lens_windows(path)
if windows.empty:
    st.info("The build sampled no position for the logit lens (the corpus is shorter than one sampled "
            "span): rebuild with a denser sample, e.g. `mechscope build ... --lens-sample 1`.")
    st.stop()
options = [str(s) for s in windows["seq_id"]]
labels = {str(r.seq_id): f"window {r.seq_id} · {r.n_positions} positions · {r.preview.strip()[:40]}"
          for r in windows.itertuples()}
problems = [params.choice_problem("window", st.query_params.get_all("window"), options),
            params.choice_problem("colour", st.query_params.get_all("colour"), list(lens_charts.LENS_COLOURS))]
c1, c2 = st.columns([3, 2])
seq_id = int(_bound(c1, "window", options, labels.get, help="windows of the corpus that hold sampled positions"))
colour = c2.radio("colour by", list(lens_charts.LENS_COLOURS), horizontal=True, key="colour", bind="query-params")

grid = lens_data.lens_grid(path, seq_id)
positions = sorted(set(grid["pos"]))
# runs of consecutive sampled positions, cut to MAX_COLUMNS
starts, run = [], []
for p in positions:
    if run and (p != run[-1] + 1 or len(run) == MAX_COLUMNS):
        starts.append(run)
        run = []
    run.append(p)
starts.append(run)
views = {str(r[0]): r for r in starts}
problems.append(params.choice_problem("from", st.query_params.get_all("from"), list(views)))
for problem in filter(None, problems):
    st.warning(f"The link's {problem} Showing the default instead.")
if len(views) > 1:
    first = _bound(st, "from", list(views), lambda k: f"positions {views[k][0]}–{views[k][-1]}", label="positions")
else:
    first = next(iter(views))
shown = views[first]
cells = grid[grid["pos"].isin(shown)]
st.altair_chart(lens_charts.lens_grid(cells, colour), width="content")

tokens = lens_data.window_tokens(path, seq_id)
lo, hi = max(0, shown[0] - 24), min(len(tokens), shown[-1] + 2)
st.caption("Context, the positions shown between ⟦ ⟧: " + md("".join(tokens[lo:shown[0]]) + "⟦"
           + "".join(tokens[shown[0]:shown[-1] + 1]) + "⟧" + "".join(tokens[shown[-1] + 1:hi])))

st.subheader("Over the corpus")
stats = lens_data.layer_stats(path)
n = int(stats["n_positions"].iloc[0]) if len(stats) else 0
st.caption(f"Means over the {n:,} sampled positions (next-token measures over those with a next token in "
           "their window).")
c1, c2 = st.columns(2)
c1.altair_chart(lens_charts.depth_curves(stats, {"kl_to_final_mean": "KL to final (nats)",
                                                 "entropy_nats_mean": "entropy (nats)"},
                                         "Distance to the output"), width="stretch")
c2.altair_chart(lens_charts.depth_curves(stats, {"top1_agreement": "top-1 = final top-1",
                                                 "next_token_accuracy": "top-1 = true next token"},
                                         "Top-1 agreement"), width="stretch")
