"""Live prompt page (`live?prompt=...&iv=[...]&head=5.1&neuron=3.17`, shareable): run the store's
model (or any model name) on a prompt, look inside, and intervene.

The prompt, the interventions (a JSON list of plain records: component, layer, index, kind,
value), the chosen head and neuron are all in the URL, so a set can be saved, shared and replayed;
each intervention is a chip with a remove button. The page shows, for the run with the
interventions beside the plain run: the next-token top 10, greedy generations, per-token loss;
for the intervened run: the logit-lens grid, what each sublayer writes, direct logit attribution
per sublayer and per head to a chosen token, the chosen head's attention pattern and the chosen
neuron's activations; and an activation-patching grid from a second prompt. Torch is imported
only here (`dashboard/live_data.py`, `pipeline/live.py`). Prompts, generations and grids are
capped, with a notice.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dashboard import charts, data, lens_charts, live_data, nav, render
from dashboard.text import md

N_GENERATE = 20


def _pair(raw: str | None, default: tuple[int, int]) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in str(raw).split("."))
        return a, b
    except (TypeError, ValueError):
        return default


path = nav.current()
st.title("Live prompt")
manifest = data.manifest(path)
store_model = (manifest.get("model") or {}).get("name", "")
name = st.query_params.get("model") or store_model
if not name:
    st.info("This store names no model: add `?model=NAME` to the URL (e.g. smollm2-135m).")
    st.stop()
try:
    live = live_data.live_model(name)
except Exception as e:  # a model that cannot load is a notice, never a traceback
    st.error(f"Model {md(name)} could not be loaded: {md(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
    st.stop()
m = live.model
bos = render.visible_token(m.tokenizer.convert_ids_to_tokens(m.bos_token_id))
st.caption(f"Model {md(name)} ({m.n_layers} layers × {m.n_heads} heads, {m.d_mlp:,} neurons per layer). "
           f"The prompt is preceded by {md(bos)}, the separator the store's windows start with.")

# --- the request, from the URL ------------------------------------------------------------
prompt = st.text_area("prompt", value=st.query_params.get("prompt", "The capital of France is"), height=80,
                      key="live_prompt")
st.query_params["prompt"] = prompt
ids, cut = live.encode(prompt)
if cut:
    st.warning(f"The prompt is longer than {len(ids) - 1} tokens: only its first {len(ids) - 1} are used.")
try:
    interventions = live_data.interventions_of(st.query_params.get("iv"))
    live.check(interventions)
except Exception as e:
    st.warning(f"The link's interventions could not be read ({md(e)}): starting without any.")
    interventions = []
head = _pair(st.query_params.get("head"), (0, 0))
neuron = _pair(st.query_params.get("neuron"), (0, 0))
head = (min(max(head[0], 0), m.n_layers - 1), min(max(head[1], 0), m.n_heads - 1))
neuron = (min(max(neuron[0], 0), m.n_layers - 1), min(max(neuron[1], 0), m.d_mlp - 1))


def _set_interventions(ivs) -> None:
    st.query_params["iv"] = live_data.interventions_json(ivs)


# --- interventions: chips and a form to add one -------------------------------------------
st.subheader("Interventions")
if interventions:
    chips = st.columns(min(len(interventions), 6))
    for i, iv in enumerate(interventions):
        if chips[i % len(chips)].button(f"✕ {iv.label()}", key=f"chip_{i}", help="remove this intervention"):
            _set_interventions(interventions[:i] + interventions[i + 1:])
            st.rerun()
else:
    st.caption("None: the run below is the plain model. Add one:")
with st.form("add_iv", border=True):
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    what = c1.selectbox("intervention", ["zero-ablate a head", "mean-ablate a head (mean over this prompt)",
                                         "zero-ablate a neuron", "mean-ablate a neuron (mean from the store)",
                                         "steer with a neuron's output vector",
                                         "steer with the difference of two prompts"], key="iv_kind")
    layer = c2.number_input("layer", 0, m.n_layers - 1, head[0], key="iv_layer")
    index = c3.number_input("head / neuron", 0, max(m.n_heads, m.d_mlp) - 1, 0, key="iv_index")
    scale = c4.number_input("steering scale", value=4.0, step=1.0, key="iv_scale")
    p1, p2 = st.columns(2)
    plus = p1.text_input("steer toward (prompt)", "I love this", key="iv_plus")
    minus = p2.text_input("steer away from (prompt)", "I hate this", key="iv_minus")
    if st.form_submit_button("Add"):
        from dashboard import live_steer

        try:
            iv = live_steer.make(live, what, int(layer), int(index), float(scale), ids, plus, minus, path)
            live.check([iv])
            _set_interventions([*interventions, iv])
            st.rerun()
        except ValueError as e:
            st.warning(md(e))

# --- the runs -----------------------------------------------------------------------------
ivs = live_data.interventions_json(interventions)
with st.spinner("running the model…"):
    plain = live_data.analyse(name, tuple(ids), "[]", head, neuron)
    run = (live_data.analyse(name, tuple(ids), ivs, head, neuron, plain["top"][0]["token_id"])
           if interventions else plain)
left, right = st.columns(2)
for col, result, title in ((left, plain, "Plain model"), (right, run, "With the interventions")):
    col.markdown(f"**{title}**" + ("" if interventions or title == "Plain model" else " (none yet)"))
    col.dataframe(pd.DataFrame(result["top"])[["token", "prob"]], hide_index=True, height=230,
                  column_config={"prob": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0,
                                                                         format="%.3f")})
if st.toggle(f"generate {N_GENERATE} tokens greedily (plain and with the interventions)", key="live_generate"):
    with st.spinner("generating…"):
        texts = []
        for ivset in ([], interventions):
            out = live.generate(ids, N_GENERATE, ivset)
            texts.append("".join(live_data.token_texts(live, out)) if out else "")
    left.code(texts[0], language=None, wrap_lines=True)
    right.code(texts[1] if interventions else texts[0], language=None, wrap_lines=True)

loss = pd.DataFrame({"position": range(1, len(run["loss"]) + 1),
                     "token": [render.visible_token(t) for t in run["tokens"][1:]], "loss (nats)": run["loss"]})
st.caption("Per-token loss (nats) of the run with the interventions: how surprised the model is by each token.")
st.bar_chart(loss, x="position", y="loss (nats)", height=180)

# --- inside the run -----------------------------------------------------------------------
st.subheader("Logit lens")
colour = st.radio("colour by", list(lens_charts.LENS_COLOURS), horizontal=True, key="live_colour")
grid = pd.DataFrame(run["grid"])
if run["grid_first"] > 1:
    st.caption(f"The last {live_data.MAX_GRID_POSITIONS} positions (the grid is capped).")
st.altair_chart(lens_charts.lens_grid(grid, colour), width="content")

c1, c2 = st.columns(2)
c1.altair_chart(lens_charts.writes_by_layer(pd.DataFrame(run["writes"]), "write_norm_mean",
                                            "What each sublayer writes (mean norm)", "mean L2 norm"), width="stretch")
c2.altair_chart(lens_charts.writes_by_layer(pd.DataFrame(run["dla"]), "dla",
                                            "Direct logit attribution at the last position", "logit"),
                width="stretch")
target_text = render.visible_token(run["target_text"])
st.caption(f"Attribution to {md(target_text)} (the plain run's top-1), through the final norm with its scale "
           "frozen at the final state's.")
head_frame = pd.DataFrame(run["head_dla"])
head_frame["url"] = [render.head_url(r.layer, r.head, nav.store_param()) for r in head_frame.itertuples()]
head_frame["label"] = [f"L{r.layer}H{r.head}" for r in head_frame.itertuples()]
st.altair_chart(charts.head_matrix(head_frame, f"DLA to {target_text}", diverging=True), width="stretch")

st.subheader(f"Head L{head[0]}H{head[1]} and neuron L{neuron[0]}/N{neuron[1]}")
c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")
hl = c1.number_input("head layer", 0, m.n_layers - 1, head[0], key="pick_hl")
hh = c2.number_input("head", 0, m.n_heads - 1, head[1], key="pick_hh")
nl = c3.number_input("neuron layer", 0, m.n_layers - 1, neuron[0], key="pick_nl")
nn = c4.number_input("neuron", 0, m.d_mlp - 1, neuron[1], key="pick_nn")
if (hl, hh, nl, nn) != (*head, *neuron):
    st.query_params.update({"head": f"{hl}.{hh}", "neuron": f"{nl}.{nn}"})
    st.rerun()
st.page_link(nav.HEAD, label=f"L{head[0]}H{head[1]} in the catalogue ↗",
             query_params=render.head_query(*head))
example = {"block": [w for row in run["pattern"] for w in row], "block_start": 0, "context_tokens": run["tokens"]}
st.altair_chart(charts.attention_block(render.attention_block_rows(example)), width="stretch")
acts = run["neuron"]
vmax = max((abs(a) for a in acts[1:]), default=1.0) or 1.0
st.markdown(render.heatmap_html(run["tokens"], [None, *acts[1:]], vmax, -vmax), unsafe_allow_html=True)
st.page_link(nav.NEURON, label=f"L{neuron[0]}/N{neuron[1]} in the catalogue ↗",
             query_params=render.neuron_query(*neuron))

# --- activation patching ------------------------------------------------------------------
st.subheader("Activation patching")
st.caption("Direction: clean → corrupted. The corrupted prompt is run with the residual stream entering "
           "one block at one position (first grid), or one head's output at every position (second grid), "
           "replaced by the clean prompt's; each cell is the resulting logit difference (good − bad) at the "
           "last position. Both prompts must have the same number of tokens.")
p1, p2 = st.columns(2)
corrupted = p2.text_input("corrupted prompt", value=st.query_params.get("corrupt", ""), key="live_corrupt")
p1.text_input("clean prompt (the prompt above)", value=prompt, disabled=True)
if corrupted:
    st.query_params["corrupt"] = corrupted
    bad_ids, _ = live.encode(corrupted)
    if len(bad_ids) != len(ids):
        st.warning(f"The corrupted prompt has {len(bad_ids) - 1} tokens, the clean one {len(ids) - 1}: "
                   "they must match.")
    elif st.button("Run the patching grid", key="patch_run"):
        good = plain["top"][0]["token_id"]
        bad = live_data.analyse(name, tuple(bad_ids), "[]", head, neuron)["top"][0]["token_id"]
        n_pos = min(len(ids), 16)  # the last 16 positions
        bar = st.progress(0.0, text="patching…")
        grid = live.patch_grid(ids, bad_ids, good, bad, positions=list(range(len(ids) - n_pos, len(ids))),
                               progress=lambda i, n: bar.progress(i / n, text=f"layer {i} of {n}"))
        bar = st.progress(0.0, text="patching heads…")
        heads_grid = live.patch_heads(ids, bad_ids, good, bad,
                                      progress=lambda i, n: bar.progress(i / n, text=f"heads of layer {i} of {n}"))
        bar.empty()
        head_frame = pd.DataFrame([{"layer": layer, "head": h, "value": float(heads_grid[layer, h]),
                                    "label": f"L{layer}H{h}", "url": render.head_url(layer, h, nav.store_param())}
                                   for layer in range(heads_grid.shape[0]) for h in range(heads_grid.shape[1])])
        texts = live_data.token_texts(live, ids)
        frame = pd.DataFrame([{"layer": layer, "position": f"{p:>3} {render.visible_token(texts[p])}", "pos": p,
                               "value": float(grid[layer, j])}
                              for layer in range(grid.shape[0])
                              for j, p in enumerate(range(len(ids) - n_pos, len(ids)))])
        st.session_state["patch_result"] = (json.dumps([prompt, corrupted]), frame, head_frame,
                                            live_data.token_texts(live, [good, bad]))
    kept = st.session_state.get("patch_result")
    if kept and kept[0] == json.dumps([prompt, corrupted]):
        _, frame, head_frame, (good_text, bad_text) = kept
        st.caption(f"good = {md(render.visible_token(good_text))}, bad = {md(render.visible_token(bad_text))} "
                   "(the plain top-1 of the clean and of the corrupted prompt)")
        st.altair_chart(lens_charts.patch_grid(frame), width="stretch")
        st.altair_chart(charts.head_matrix(head_frame, "good − bad after patching the head's output", diverging=True),
                        width="stretch")
