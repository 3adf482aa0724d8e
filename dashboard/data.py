"""The dashboard's one caching layer: the opened store and every query result.

`st.cache_resource` holds one `Store` per (path, manifest mtime), so a store rebuilt in place
is reopened; `st.cache_data` holds query results keyed by store path and arguments (with a TTL
as the bound on staleness after such a rebuild). The SQL is in `store/queries.py`; user SQL
goes through `store/sqlguard.py`; turning rows into HTML/charts is `render.py`/`charts.py`.
Functions return plain Python or pandas, never Arrow, so pages stay simple; where a page would
redo the same per-row formatting on every rerun (the catalogue), it is done here, once, and cached.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import render
from store import open_store, queries
from store.sqlguard import QueryResult, run_user_query

_TTL_S = 900


@st.cache_resource(show_spinner=False, max_entries=16)
def _open(path: str, version: int):
    return open_store(Path(path))


def get_store(path: str):
    """The cached read-only store handle for `path`."""
    manifest = Path(path) / "manifest.json"
    version = manifest.stat().st_mtime_ns if manifest.exists() else 0
    return _open(path, version)


def manifest(path: str) -> dict:
    return dict(get_store(path).manifest or {})


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def row_counts(path: str) -> pd.DataFrame:
    return queries.row_counts(get_store(path)).to_pandas()


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def layer_summary(path: str) -> pd.DataFrame:
    return queries.layer_summary(get_store(path)).to_pandas()


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def layer_range(path: str) -> tuple[int, int] | None:
    row = queries.layer_range(get_store(path)).to_pylist()[0]
    return None if row["lo"] is None else (int(row["lo"]), int(row["hi"]))


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def notable_neurons(path: str, column: str, descending: bool, n: int = 5, artefacts: bool | None = False) -> list[dict]:
    """Neurons with the largest (smallest) `column`; by default only those that respond to text
    (not first-after-BOS artefacts); `artefacts=True` only the artefacts, None both."""
    return queries.notable_neurons(get_store(path), column, descending, n, artefacts).to_pylist()


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def artefact_count(path: str) -> int:
    return int(queries.artefact_count(get_store(path)).to_pylist()[0]["n_artefacts"])


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def score_bounds(path: str) -> dict[str, tuple[float, float]]:
    """column -> (smallest, largest value) for each of `queries.RANGE_COLUMNS` that has values."""
    row = queries.score_bounds(get_store(path)).to_pylist()[0]
    return {c: (float(row[f"{c}_lo"]), float(row[f"{c}_hi"])) for c in queries.RANGE_COLUMNS
            if row[f"{c}_lo"] is not None}


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def catalogue(path: str, layer_lo: int, layer_hi: int, promotes: str = "", fires_on: str = "",
              store_name: str | None = None, ranges: tuple[tuple[str, float, float], ...] = (),
              artefacts: bool | None = False, search: str = "") -> pd.DataFrame:
    """The catalogue rows, display-ready (cached with them: ~0.2 s per 50k neurons): an `open`
    column of neuron-page links first, the tokens it fires on and its first value tokens as text
    labels, and `artefact` (a label for first-after-BOS neurons, shown with `artefacts`).
    `ranges`: (column, lo, hi) score-range filters, applied in SQL."""
    frame = queries.neuron_catalogue(get_store(path), layer_lo, layer_hi, promotes, fires_on, ranges,
                                     artefacts, search).to_pandas()
    frame.insert(0, "open", [render.neuron_url(int(layer), int(neuron), store_name)
                             for layer, neuron in zip(frame["layer"], frame["neuron"], strict=True)])
    frame["top_value_tokens"] = [render.token_list_label(t, queries.N_VALUE_TOKENS) for t in frame["top_value_tokens"]]
    frame["fires_on_tokens"] = [render.token_list_label(t, queries.N_FIRES_ON) for t in frame["fires_on_tokens"]]
    frame.insert(3, "artefact", [render.artefact_label(x) for x in frame["after_bos_frac"]])
    return frame


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def token_selectivity(path: str, token: str, n: int = 10) -> list[dict]:
    return queries.token_selectivity(get_store(path), token, n).to_pylist()


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def related_tokens(path: str, token: str) -> list[str]:
    return queries.related_tokens(get_store(path), token)


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def neuron(path: str, layer: int, neuron: int) -> dict | None:
    rows = queries.neuron(get_store(path), layer, neuron).to_pylist()
    return rows[0] if rows else None


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def examples(path: str, layer: int, neuron: int, kind: str) -> list[dict]:
    return queries.neuron_examples(get_store(path), layer, neuron, kind).to_pylist()


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def window_tokens(path: str, seq_id: int) -> list[dict]:
    return queries.window_tokens(get_store(path), seq_id).to_pylist()


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def neuron_explanations(path: str, layer: int, neuron: int) -> list[dict]:
    return queries.neuron_explanations(get_store(path), layer, neuron).to_pylist()


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def neighbours(path: str, layer: int, neuron: int) -> dict[str, tuple[int, int]]:
    rows = queries.neighbours(get_store(path), layer, neuron).to_pylist()
    return {r["direction"]: (int(r["layer"]), int(r["neuron"])) for r in rows}


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def deletion_neurons(path: str, n: int, layer_lo: int, layer_hi: int, n_examples: int = 3) -> list[dict]:
    """The most deletion-like neurons, each with `examples` (its top examples, by rank)."""
    rows = queries.deletion_neurons(get_store(path), n, layer_lo, layer_hi, n_examples).to_pylist()
    return [{**r, "examples": r["examples"] or []} for r in rows]


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def deletion_counts(path: str, threshold: float) -> pd.DataFrame:
    return queries.deletion_counts(get_store(path), threshold).to_pandas()


def tables(path: str) -> list[str]:
    return list(get_store(path).tables())


def missing(path: str, table: str) -> str | None:
    """None when the store has `table` in a version this code reads; else the store's one-sentence
    notice saying so and how to get it (not cached: a lookup in the opened store's manifest)."""
    return get_store(path).missing(table)


# --- heads, composition, circuits ------------------------------------------------------------


@st.cache_data(show_spinner=False, ttl=_TTL_S)
def head_range(path: str) -> dict | None:
    """{'lo', 'hi': layers, 'max_head', 'n_heads'} of `heads`, or None when it has no rows."""
    row = queries.head_range(get_store(path)).to_pylist()[0]
    return None if row["lo"] is None else {k: int(v) for k, v in row.items()}


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def head_catalogue(path: str, layer_lo: int, layer_hi: int, sort_by: str = "layer",
                   store_name: str | None = None) -> pd.DataFrame:
    """The head catalogue, display-ready: an `open` column of head-page links first, the OV
    copy and suppress tokens as text labels."""
    frame = queries.head_catalogue(get_store(path), layer_lo, layer_hi, sort_by).to_pandas()
    frame.insert(0, "open", [render.head_url(int(layer), int(head), store_name)
                             for layer, head in zip(frame["layer"], frame["head"], strict=True)])
    for column in ("ov_copy_tokens", "ov_suppress_tokens"):
        frame[column] = [render.token_list_label(t, queries.N_VALUE_TOKENS) for t in frame[column]]
    return frame


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def head_matrix(path: str, column: str, store_name: str | None = None) -> pd.DataFrame:
    """(layer, head, value, url, label) of one score column for every head."""
    frame = queries.head_matrix(get_store(path), column).to_pandas()
    pairs = list(zip(frame["layer"], frame["head"], strict=True))
    frame["url"] = [render.head_url(int(layer), int(head), store_name) for layer, head in pairs]
    frame["label"] = [render.head_label(int(layer), int(head)) for layer, head in pairs]
    return frame


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def head(path: str, layer: int, head: int) -> dict | None:
    rows = queries.head(get_store(path), layer, head).to_pylist()
    return rows[0] if rows else None


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def head_examples(path: str, layer: int, head: int) -> list[dict]:
    return queries.head_examples(get_store(path), layer, head).to_pylist()


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def head_neighbours(path: str, layer: int, head: int) -> dict[str, tuple[int, int]]:
    rows = queries.head_neighbours(get_store(path), layer, head).to_pylist()
    return {r["direction"]: (int(r["layer"]), int(r["head"])) for r in rows}


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def head_partners(path: str, layer: int, head: int, n: int) -> dict[str, list[dict]]:
    """{'upstream': [...], 'downstream': [...]}: the top `n` composition partners each way."""
    out: dict[str, list[dict]] = {"upstream": [], "downstream": []}
    for r in queries.head_partners(get_store(path), layer, head, n).to_pylist():
        out[r["direction"]].append(r)
    return out


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=64)
def strongest_compositions(path: str, kinds: tuple[str, ...], min_margin: float, n: int,
                           store_name: str | None = None) -> pd.DataFrame:
    """The strongest compositions (`queries.strongest_compositions`), display-ready: `writes` and
    `reads` head labels with `writes_url` / `reads_url` links to their pages."""
    frame = queries.strongest_compositions(get_store(path), kinds, min_margin, n).to_pandas()
    for side, prefix in (("writes", "src"), ("reads", "dst")):
        pairs = list(zip(frame[f"{prefix}_layer"], frame[f"{prefix}_head"], strict=True))
        frame[side] = [render.head_label(int(a), int(b)) for a, b in pairs]
        frame[f"{side}_url"] = [render.head_url(int(a), int(b), store_name) for a, b in pairs]
    return frame


@st.cache_data(show_spinner=False, ttl=_TTL_S, max_entries=512)
def neuron_circuits(path: str, layer: int, neuron: int) -> dict[str, list[dict]]:
    """{relation: its rows by rank} for one neuron (relations without rows are absent)."""
    out: dict[str, list[dict]] = {}
    for r in queries.neuron_circuits(get_store(path), layer, neuron).to_pylist():
        out.setdefault(r["relation"], []).append(r)
    return out


def run_sql(path: str, sql: str, max_rows: int, timeout_s: float) -> QueryResult:
    """A user's SQL through the guard (not cached: a console re-runs what it is asked to)."""
    return run_user_query(get_store(path), sql, max_rows=max_rows, timeout_s=timeout_s)
