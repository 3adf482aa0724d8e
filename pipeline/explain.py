"""LLM explanations of neurons, simulate-and-score (Bills et al. 2023, the OpenAI neuron viewer),
through an OpenAI-compatible endpoint that the user configures; cached in the store.

    python -m pipeline.explain STORE --endpoint http://localhost:8000/v1 --model NAME --top 20
    python -m pipeline.explain STORE --endpoint ... --model NAME --neuron 22/984 --neuron 26/1194

For each neuron: the explainer model reads half of its top examples (even ranks; each token with
its activation scaled to 0-10 by the neuron's max) and writes one sentence; the simulator model
(the same one unless `--simulator` names another) reads only that sentence and predicts the
activation (0-10) of every token of held-out examples: the other top examples (odd ranks) and
band samples from lower down the distribution; the score is the correlation between predicted
and real activations over those tokens (null when either is constant). Results go to the
store's `neuron_explanations` table (`store/annotate.py`: a new file and an atomic manifest
update); a neuron already explained there by the same explainer is skipped unless `--force`.

Requests use only the standard library (`urllib`): POST {endpoint}/chat/completions with
{"model", "messages", "temperature": 0}; the key, if any, comes from the environment variable
that `--api-key-env` names (default OPENAI_API_KEY) and is sent as a Bearer token. Nothing here
runs unless the user calls it: the build and the dashboard never reach the network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from store import StoreError, open_store, queries
from store.annotate import replace_table
from store.schema import NEURON_EXPLANATIONS

TABLE = NEURON_EXPLANATIONS.name
EXPLAIN_EXAMPLES = 10  # top examples shown to the explainer (even ranks)
HELD_OUT_TOP, HELD_OUT_BAND = 5, 5  # held-out examples the simulator is scored on

EXPLAINER_SYSTEM = (
    "We are studying neurons of a language model. Each neuron looks for something particular in "
    "text. You see text excerpts, one token per line as `token<TAB>activation`, where the activation "
    "is scaled from 0 (none) to 10 (the neuron's strongest). Say in one short sentence what the "
    "neuron fires on. Reply with the sentence only."
)
SIMULATOR_SYSTEM = (
    "We are studying neurons of a language model. You are given an explanation of what one neuron "
    "fires on, and text excerpts, one token per line as `index<TAB>token`. Predict the neuron's "
    "activation on every token, from 0 (none) to 10 (strongest), using the explanation only. Reply "
    "with one line per token, in order, as `index<TAB>activation`, and nothing else."
)


class EndpointError(RuntimeError):
    """The endpoint failed or answered in a form this code cannot read (one line)."""


def chat(endpoint: str, model: str, messages: list[dict], api_key: str | None = None, timeout_s: float = 120.0) -> str:
    """One chat completion's text from an OpenAI-compatible endpoint."""
    body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(endpoint.rstrip("/") + "/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read().decode("utf-8"))
        return str(answer["choices"][0]["message"]["content"])
    except urllib.error.HTTPError as e:
        raise EndpointError(f"{endpoint}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise EndpointError(f"{endpoint}: {getattr(e, 'reason', e)}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise EndpointError(f"{endpoint}: the answer is not an OpenAI chat completion") from None


def scaled(value: float | None, vmax: float) -> int | None:
    """An activation on the 0-10 scale of the neuron's max (negative: 0); None for BOS (NaN)."""
    if value is None or math.isnan(value):
        return None
    return int(round(10 * min(max(value / vmax, 0.0), 1.0))) if vmax > 0 else 0


def _tokens(example: dict) -> list[str]:
    return list(example.get("context_display") or example.get("context_tokens") or [])


def explainer_messages(examples: Sequence[dict], vmax: float) -> list[dict]:
    blocks = []
    for i, ex in enumerate(examples):
        lines = [f"{json.dumps(t, ensure_ascii=False)}\t{s}" for t, a in zip(_tokens(ex), ex["context_acts"],
                                                                             strict=False)
                 if (s := scaled(a, vmax)) is not None]
        blocks.append(f"Excerpt {i + 1}:\n" + "\n".join(lines))
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": "\n\n".join(blocks)}]


def simulator_messages(explanation: str, tokens: Sequence[str]) -> list[dict]:
    lines = "\n".join(f"{i}\t{json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(tokens))
    return [{"role": "system", "content": SIMULATOR_SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\n\nTokens:\n{lines}"}]


_LINE = re.compile(r"^\s*(\d+)\s*[\t:,|]\s*(-?\d+(?:\.\d+)?)")


def parse_simulation(text: str, n: int) -> list[float]:
    """Predicted activations of tokens 0 .. n-1 from `index<TAB>value` lines; a token the
    answer leaves out is predicted 0; values are clipped to 0-10."""
    out = [0.0] * n
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and int(m.group(1)) < n:
            out[int(m.group(1))] = min(max(float(m.group(2)), 0.0), 10.0)
    return out


def correlation(predicted: Sequence[float], real: Sequence[float]) -> float | None:
    p, r = np.asarray(predicted, float), np.asarray(real, float)
    if len(p) < 2 or p.std() == 0 or r.std() == 0:
        return None
    return float(np.corrcoef(p, r)[0, 1])


def explain_neuron(store, layer: int, neuron: int, endpoint: str, explainer: str, simulator: str,
                   api_key: str | None = None) -> dict:
    """Explain one neuron and score the explanation; a `neuron_explanations` row."""
    row = queries.neuron(store, layer, neuron).to_pylist()
    if not row:
        raise StoreError(f"this store has no neuron {layer}/{neuron}")
    vmax = float(row[0]["max"] or 0.0)
    tops = queries.neuron_examples(store, layer, neuron, "top").to_pylist()
    bands = queries.neuron_examples(store, layer, neuron, "band").to_pylist()
    shown = [e for e in tops if e["rank"] % 2 == 0][:EXPLAIN_EXAMPLES]
    held = [e for e in tops if e["rank"] % 2 == 1][:HELD_OUT_TOP]
    held += bands[:: max(1, len(bands) // HELD_OUT_BAND)][:HELD_OUT_BAND]
    explanation = chat(endpoint, explainer, explainer_messages(shown, vmax), api_key).strip().splitlines()
    explanation = explanation[0].strip() if explanation else ""
    tokens, real = [], []
    for ex in held:
        for t, a in zip(_tokens(ex), ex["context_acts"], strict=False):
            if scaled(a, vmax) is not None:
                tokens.append(t)
                real.append(a / vmax if vmax > 0 else 0.0)
    predicted = parse_simulation(chat(endpoint, simulator, simulator_messages(explanation, tokens), api_key),
                                 len(tokens)) if tokens else []
    return {"layer": layer, "neuron": neuron, "explainer": explainer, "explanation": explanation,
            "score": correlation(predicted, real), "simulator": simulator, "scored_tokens": len(tokens),
            "endpoint": endpoint, "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def explain_store(path: str | Path, endpoint: str, explainer: str, neurons: Sequence[tuple[int, int]],
                  simulator: str | None = None, api_key: str | None = None, force: bool = False,
                  say=lambda msg: None) -> pa.Table:
    """Explain `neurons` of the store at `path` (skipping those it already holds from the same
    explainer unless `force`) and write the store's `neuron_explanations`; returns that table."""
    store = open_store(path)
    old = store.sql(f"SELECT * FROM {TABLE}").to_pylist() if store.has(TABLE) else []
    done = {(r["layer"], r["neuron"]) for r in old if r["explainer"] == explainer}
    new = []
    for layer, neuron in neurons:
        if (layer, neuron) in done and not force:
            say(f"L{layer}/N{neuron}: cached")
            continue
        r = explain_neuron(store, layer, neuron, endpoint, explainer, simulator or explainer, api_key)
        say(f"L{layer}/N{neuron}: {r['explanation']!r} (score {r['score']})")
        new.append(r)
    store.close()
    if not new:
        return pa.Table.from_pylist(old, schema=NEURON_EXPLANATIONS.arrow_schema())
    replaced = {(r["layer"], r["neuron"]) for r in new}
    rows = [r for r in old if not (r["explainer"] == explainer and (r["layer"], r["neuron"]) in replaced)] + new
    table = pa.Table.from_pylist(rows, schema=NEURON_EXPLANATIONS.arrow_schema())
    replace_table(path, TABLE, table)
    return table


def _neuron_arg(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*L?(\d+)\s*/\s*N?(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not LAYER/NEURON (e.g. 22/984)")
    return int(m.group(1)), int(m.group(2))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.explain", description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="the store folder")
    ap.add_argument("--endpoint", required=True, help="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    ap.add_argument("--model", required=True, help="the explainer model, as the endpoint names it")
    ap.add_argument("--simulator", default=None, help="the simulator model (default: the explainer)")
    ap.add_argument("--neuron", action="append", type=_neuron_arg, default=[], metavar="LAYER/NEURON",
                    help="a neuron to explain (repeatable)")
    ap.add_argument("--top", type=int, default=0, metavar="N",
                    help="also the N neurons with the largest max that respond to text (default: 0)")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY",
                    help="environment variable holding the API key, if any (default: OPENAI_API_KEY)")
    ap.add_argument("--force", action="store_true", help="explain again neurons already in the store")
    args = ap.parse_args(argv)
    try:
        neurons = list(args.neuron)
        if args.top:
            with open_store(args.store) as s:
                neurons += [(r["layer"], r["neuron"]) for r in queries.notable_neurons(s, "max", True, args.top)
                            .to_pylist()]
        if not neurons:
            ap.error("name neurons with --neuron LAYER/NEURON or --top N")
        table = explain_store(args.store, args.endpoint, args.model, list(dict.fromkeys(neurons)), args.simulator,
                              os.environ.get(args.api_key_env), args.force, lambda m: print(m, file=sys.stderr))
    except (StoreError, EndpointError) as e:
        print(f"mechscope explain: error: {e}", file=sys.stderr)
        return 2
    print(f"{table.num_rows} explanations in {Path(args.store) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
