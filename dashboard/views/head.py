"""Head page (`?layer=..&head=..`, shareable): one attention head's evidence.

Its scores, each with what it means (the schema's descriptions); its top examples as attention
views (the destination outlined, sources shaded by attention, hover for values) and a token x
token heatmap of one example's block; the tokens its OV circuit copies and suppresses; attention
by offset (measured, and from the weights when the store has it); its strongest composition
partners both ways, with the baseline; links to the previous and next head. Bad or unknown
parameters give a notice and a picker, never a traceback. Queries: `data.py`; HTML: `render.py`;
charts: `charts.py`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, nav, params, render
from store.queries import HEAD_SCORE_COLUMNS
from store.schema import HEADS

N_PARTNERS = 8
HEADLINE = (("prev_token_score", "previous token"), ("induction_score", "induction"),
            ("duplicate_score", "duplicate token"), ("bos_score", "BOS (sink)"),
            ("entropy_nats", "entropy (nats)"), ("ov_copying_score", "OV copying"))

path = nav.current()
nav.require_tables(path, "heads", title="Head")
bounds = data.head_range(path)
raw_layer, raw_head = st.query_params.get_all("layer"), st.query_params.get_all("head")


def _go(layer: int, head: int) -> None:
    # `store` is left alone: `nav.choose_store` keeps it in the URL.
    st.query_params.update(render.head_query(layer, head))


def _picker(default_layer: int, default_head: int) -> None:
    with st.form("pick_head", border=False):
        c1, c2, c3 = st.columns([1, 1, 1], vertical_alignment="bottom")
        lo, hi = (bounds["lo"], bounds["hi"]) if bounds else (0, 0)
        new_layer = c1.number_input("layer", min_value=lo, max_value=hi, step=1, value=min(max(default_layer, lo), hi))
        new_head = c2.number_input("head", min_value=0, max_value=bounds["max_head"] if bounds else 0, step=1,
                                   value=min(max(default_head, 0), bounds["max_head"] if bounds else 0))
        if c3.form_submit_button("Open head"):
            _go(int(new_layer), int(new_head))
            st.rerun()


def _subject() -> tuple[int, int, dict] | str:
    """(layer, head, its row), or the notice saying why there is none."""
    if not raw_layer and not raw_head:
        return "Pick a head (or open one from the head catalogue)."
    bad = [p for p in (params.int_problem("layer", raw_layer or [""], -(2**15), 2**15 - 1),
                       params.int_problem("head", raw_head or [""], -(2**15), 2**15 - 1)) if p]
    if bad:
        return f"The link's {' '.join(bad)} Use `?layer=1&head=2`."
    layer, head = int(float(raw_layer[0])), int(float(raw_head[0]))
    row = data.head(path, layer, head)
    if row is None:
        span = f"layers {bounds['lo']}–{bounds['hi']}, heads 0–{bounds['max_head']}" if bounds else "no heads"
        return f"This store has no head {head} in layer {layer} ({span}; heads are numbered from 0)."
    return layer, head, row


subject = _subject()
if isinstance(subject, str):
    st.title("Head")
    (st.info if not raw_layer and not raw_head else st.warning)(subject)
    first = render.parse_int(raw_layer[0]) if raw_layer else None
    second = render.parse_int(raw_head[0]) if raw_head else None
    _picker(first or 0, second or 0)
    st.stop()
layer, head, row = subject

_go(layer, head)  # re-send the URL: a page_link to this same page updates the view, not the address bar
st.title(f"Layer {layer}, head {head}")
near = data.head_neighbours(path, layer, head)
nav_cols = st.columns([2, 2, 3, 3, 3])  # short labels: none is cut from a 1,000 px window (Chromium)
for col, key, fmt, what in ((nav_cols[0], "prev", "← {}", "the previous head"),
                            (nav_cols[1], "next", "{} →", "the next head")):
    if key in near:
        t_layer, t_head = near[key]
        col.page_link(nav.HEAD, label=fmt.format(render.head_label(t_layer, t_head)), help=what,
                      query_params=render.head_query(t_layer, t_head))
nav_cols[2].page_link(nav.HEADS, label="head catalogue")
nav_cols[3].page_link(nav.CIRCUITS, label="circuits graph")
nav_cols[4].page_link(nav.LIVE, label="try it live ↗", query_params={"head": f"{layer}.{head}"},
                      help="run the model on a prompt of yours with this head selected (its pattern, ablate it)")

metrics = st.columns(len(HEADLINE))
for col, (column, label) in zip(metrics, HEADLINE, strict=True):
    value = row.get(column)
    col.metric(label, "—" if value is None else f"{value:.3f}", help=HEADS.column(column).description)

with st.expander("Every score, and what it means"):
    descriptions = {c.name: c.description for c in HEADS.columns}
    st.dataframe(render.score_rows(row, HEAD_SCORE_COLUMNS, descriptions), hide_index=True,
                 column_config={"value": st.column_config.NumberColumn(format="%.4f"),
                                "meaning": st.column_config.TextColumn(width="large")})
    st.caption(f"The corpus scores cover {row.get('count', 0):,} query positions (BOS excluded); duplicate and "
               f"induction scores the {row.get('repeat_count', 0):,} whose token occurs earlier in its window.")

left, right = st.columns([3, 2], gap="large")
examples = data.head_examples(path, layer, head) if nav.has_table(path, "head_examples") else []
with left:
    st.markdown("#### Top examples")
    st.caption("The destination (query) token is outlined; each earlier token is shaded by the destination's "
               "attention to it (green, full colour at the example's strongest non-BOS weight), the strongest "
               "source is underlined, and tokens after the destination are dimmed. Hover a token for its weight.")
    st.html("".join(render.head_example_html(e) for e in examples) or "<p><em>No examples.</em></p>")

with right:
    if examples:
        st.markdown("#### Attention around an example")
        by_rank = {int(e["rank"]): e for e in examples}
        rank = st.selectbox("example", list(by_rank), key="block_example", format_func=lambda r: (
            f"#{r} · window {by_rank[r]['seq_id']}, position {by_rank[r]['pos']}"))
        st.altair_chart(charts.attention_block(render.attention_block_rows(by_rank[rank])), width="stretch")
    st.markdown("#### Attention by offset")
    offsets = render.offset_rows(row.get("attn_by_offset"), row.get("qk_pos_by_offset"))
    st.altair_chart(charts.attention_by_offset(offsets), width="stretch")
    if row.get("qk_pos_by_offset") is None:
        st.caption("No positional prediction from the weights: this model has no learned position embeddings "
                   "(rotary models fix no positional preference without the tokens).")

st.markdown("#### OV circuit")
st.write(render.ov_sentence(row.get("ov_copying_score")))
st.html(render.value_tokens_html(row.get("ov_copy_tokens"), "copies")
        + render.value_tokens_html(row.get("ov_suppress_tokens"), "suppresses"))

st.markdown("#### Composition")
if nav.has_table(path, "head_composition"):
    partners = data.head_partners(path, layer, head, N_PARTNERS)
    base = next((r["baseline"] for side in partners.values() for r in side), None)
    st.caption("How much of one head's output (its OV circuit) another head's query, key or value input reads "
               "(Elhage et al. 2021)" + (f"; random matrices of the same shapes score about {base:.3f} "
                                         "(the baseline): scores near it mean no composition." if base else "."))
    up, down = st.columns(2)
    for col, side, title, arrow in ((up, "upstream", "Reads from (earlier heads)", "→ this head's"),
                                    (down, "downstream", "Read by (later heads)", "reads this head with its")):
        col.markdown(f"**{title}**")
        for r in partners[side]:
            other = render.head_label(int(r["other_layer"]), int(r["other_head"]))
            col.page_link(nav.HEAD, label=f"{other} {arrow} {r['kind'].upper()}: {r['score']:.3f} "
                          f"(baseline {r['baseline']:.3f})",
                          query_params=render.head_query(int(r["other_layer"]), int(r["other_head"])))
        if not partners[side]:
            col.caption("none: " + ("no earlier layer" if side == "upstream" else "no later layer"))
