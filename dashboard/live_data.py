"""The live page's model and what it computes on a prompt, as plain data for the page.

This is the only part of the dashboard that loads torch, and only when the live page runs: the
model is loaded once per server and name (`st.cache_resource`), shared by the sessions through
`pipeline.live.LiveModel` (its lock keeps their hooks apart). A prompt's analysis is cached by
(model, token ids, interventions, chosen head and neuron), so that moving a slider elsewhere on
the page does not rerun the model.
"""

from __future__ import annotations

import json

import streamlit as st

from dashboard import render
from dashboard.lens_data import depth_label

MAX_GRID_POSITIONS = 48  # positions of the live lens grid


@st.cache_resource(show_spinner="loading the model (once per server)…", max_entries=2)
def live_model(name: str):
    from pipeline.live import LiveModel
    from pipeline.models import load_model

    return LiveModel(load_model(name))


def interventions_of(raw: str | None) -> list:
    """The interventions of a URL's `iv` value (a JSON list of `Intervention.to_dict`s)."""
    from pipeline.live import Intervention

    if not raw:
        return []
    data = json.loads(raw)
    if not isinstance(data, list):
        raise ValueError("not a list")
    return [Intervention.from_dict(d) for d in data]


def interventions_json(interventions) -> str:
    return json.dumps([iv.to_dict() for iv in interventions], separators=(",", ":"))


def token_texts(live, ids) -> list[str]:
    from pipeline.windows import decode_tokens

    text = decode_tokens(live.model.tokenizer, sorted(set(ids)))
    return [text[i] for i in ids]


@st.cache_data(show_spinner=False, max_entries=32)
def analyse(name: str, ids: tuple[int, ...], ivs: str, head: tuple[int, int], neuron: tuple[int, int],
            target: int | None = None) -> dict:
    """Everything the page shows of one run: next-token top 10, per-token loss, the lens grid over
    block boundaries, per-layer write sizes, DLA per head and per sublayer to `target` (default the
    run's top-1) at the last position, one head's pattern and one neuron's activations."""
    import torch

    from pipeline import hooks
    from pipeline.stats.lens_maths import Unembed, decode_states, lens_positions

    live = live_model(name)
    m = live.model
    L = m.n_layers
    names = [hooks.resid_pre(layer) for layer in range(L)] + [hooks.resid_mid(layer) for layer in range(L)]
    names += [hooks.attn_z(layer) for layer in range(L)] + [hooks.resid_post(L - 1)]
    names += [hooks.attn_pattern(head[0]), hooks.mlp_post(neuron[0])]
    run = live.run(list(ids), interventions_of(ivs), capture=list(dict.fromkeys(names)))
    c = run.cache
    states = torch.stack([c[hooks.resid_pre(layer)] if d == 0 else c[hooks.resid_mid(layer)]
                          for layer in range(L) for d in (0, 1)] + [c[hooks.resid_post(L - 1)]], dim=1)  # [pos D d]
    z = torch.stack([c[hooks.attn_z(layer)] for layer in range(L)], dim=1)  # [pos layer head d_head]
    texts = token_texts(live, list(ids))
    probs = torch.softmax(run.logits, -1)
    top = probs[-1].topk(10)
    top_text = token_texts(live, top.indices.tolist())
    n = len(ids)
    next_ids = torch.tensor(list(ids[1:]) + [-1])
    loss = (-torch.log(probs[torch.arange(n - 1), next_ids[:-1]])).tolist()
    U = Unembed.of(m)
    # the lens grid over block boundaries (the embedding, every block's output) of the last positions
    first = max(1, n - MAX_GRID_POSITIONS)
    boundary = states[first:, 0::2]
    grid = decode_states(U, boundary, next_ids[first:], 5)
    labels = [depth_label(min(d, L - 1), "resid_post" if d == L else "resid_pre") for d in range(L + 1)]
    tok_text = token_texts(live, grid["top_ids"].reshape(-1).tolist())
    rows, k = [], 0
    for i, pos in enumerate(range(first, n)):
        for d in range(L + 1):
            tops = [render.visible_token(t) for t in tok_text[k * 5:(k + 1) * 5]]
            pr = grid["top_probs"][i, d].tolist()
            rank = int(grid["true_rank"][i, d])
            rows.append({"pos": pos, "depth": 2 * d, "depth_label": labels[d], "top1_prob": pr[0],
                         "cell": tops[0] if len(tops[0]) <= 8 else tops[0][:7] + "…",
                         "top5": "  ".join(f"{t} {p:.2f}" for t, p in zip(tops, pr, strict=True)),
                         "column": f"{pos:>3} {render.visible_token(texts[pos])}",
                         "next": render.visible_token(texts[pos + 1]) if pos + 1 < n else "(next: predicted)",
                         "kl_to_final": float(grid["kl"][i, d]), "entropy_nats": float(grid["entropy"][i, d]),
                         "rank": None if rank < 0 else rank,
                         "true_prob": None if rank < 0 else float(grid["true_prob"][i, d])})
            k += 1
    # writes per sublayer, mean over the prompt's positions after the BOS
    writes = torch.cat([states[:, :1], states[:, 1:] - states[:, :-1]], dim=1)[1:].norm(dim=-1).mean(0)
    layer_rows = [{"writer_layer": layer, "writer": w, "write_norm_mean": float(writes[2 * layer + 1 + j])}
                  for layer in range(L) for j, w in enumerate(("attention", "mlp"))]
    target = int(top.indices[0]) if target is None else target
    last = lens_positions(U, states[-1:], z[-1:], torch.tensor([target]), 1)
    head_dla = last.head_dla[0]  # [layer head]
    sub = last.write_dla[0]
    dla_rows = [{"writer_layer": layer, "writer": w, "dla": float(sub[2 * layer + 1 + j])}
                for layer in range(L) for j, w in enumerate(("attention", "mlp"))]
    pattern = c[hooks.attn_pattern(head[0])][head[1]]  # [q k]
    return {
        "tokens": texts, "top": [{"token": render.visible_token(t), "token_id": int(i), "prob": float(p)}
                                 for t, i, p in zip(top_text, top.indices.tolist(), top.values.tolist(), strict=True)],
        "loss": loss, "grid": rows, "grid_first": first, "writes": layer_rows, "dla": dla_rows,
        "target": target, "target_text": token_texts(live, [target])[0],
        "head_dla": [{"layer": layer, "head": h, "value": float(head_dla[layer, h])}
                     for layer in range(L) for h in range(m.n_heads)],
        "pattern": pattern.tolist(), "neuron": c[hooks.mlp_post(neuron[0])][:, neuron[1]].tolist(),
    }
