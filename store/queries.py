"""Every SQL question the dashboard asks of a store, one function per question.

Values are bound with `?`; the only identifiers spliced into SQL are table and column names
taken from `store.schema` (checked here, never from user input). Each function runs on its own
cursor through `Store.sql`, so it is safe from Streamlit's session threads. Caching is not here
(that is `dashboard/data.py`), nor is free-form user SQL (that is `store/sqlguard.py`).

`EXAMPLE_QUERIES` are the SQL console's starting points: real questions, written as SQL that a
user reads, edits and re-runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from store.schema import NEURONS, TABLES

if TYPE_CHECKING:
    from store.reader import Store

# Catalogue columns, in display order; the list columns are the first few value tokens.
CATALOGUE_COLUMNS = ("layer", "neuron", "max", "density_frac", "deletion_cos", "kv_agreement_frac")
# Numeric `neurons` columns the catalogue can filter by range (and `score_bounds` reports).
RANGE_COLUMNS = ("max", "density_frac", "deletion_cos", "kv_agreement_frac")
N_VALUE_TOKENS = 5


def _table_names(store: Store) -> list[str]:
    present = set(store.tables())
    return [t.name for t in TABLES if t.name in present]


def row_counts(store: Store) -> pa.Table:
    """(table_name, n_rows) for every schema table the store has, in schema order."""
    names = _table_names(store)
    if not names:
        return pa.table({"table_name": pa.array([], pa.string()), "n_rows": pa.array([], pa.int64())})
    parts = [f"SELECT '{n}' AS table_name, {i} AS ord, count(*) AS n_rows FROM {n}" for i, n in enumerate(names)]
    return store.sql(f"SELECT table_name, n_rows FROM ({' UNION ALL '.join(parts)}) ORDER BY ord", [])


def layer_summary(store: Store) -> pa.Table:
    """Per layer: neurons, mean density, mean of per-neuron max (activation scale), mean deletion_cos."""
    return store.sql(
        """
        SELECT layer, count(*) AS n_neurons,
               avg(density_frac) AS mean_density_frac,
               avg("max") AS mean_max,
               avg(deletion_cos) AS mean_deletion_cos
        FROM neurons GROUP BY layer ORDER BY layer
        """,
        [],
    )


def layer_range(store: Store) -> pa.Table:
    """One row: the smallest and largest layer in `neurons`."""
    return store.sql("SELECT min(layer) AS lo, max(layer) AS hi FROM neurons", [])


def notable_neurons(store: Store, column: str, descending: bool, n: int) -> pa.Table:
    """The `n` neurons with the largest (or smallest) value of a numeric `neurons` column."""
    NEURONS.column(column)  # raises KeyError: only schema identifiers reach the SQL text
    order = "DESC" if descending else "ASC"
    return store.sql(
        f'SELECT layer, neuron, "{column}" AS value FROM neurons WHERE "{column}" IS NOT NULL '
        f'ORDER BY "{column}" {order}, layer, neuron LIMIT ?',
        [n],
    )


def score_bounds(store: Store) -> pa.Table:
    """One row: `{column}_lo` and `{column}_hi` (smallest and largest value) per RANGE_COLUMNS."""
    parts = ", ".join(f'min("{c}") AS "{c}_lo", max("{c}") AS "{c}_hi"' for c in RANGE_COLUMNS)
    return store.sql(f"SELECT {parts} FROM neurons", [])


def _norm(text: str) -> str:
    return text.strip().lower()


def _range_filter(ranges: Sequence[tuple[str, float, float]]) -> tuple[str, list]:
    """SQL conditions `AND n."col" BETWEEN ? AND ?` for (column, lo, hi) triples, and their values.
    A null value (kv_agreement_frac without a next token) is outside every range."""
    sql, params = "", []
    for column, lo, hi in ranges:
        if column not in RANGE_COLUMNS:
            raise KeyError(f"no range filter on {column!r}")  # only schema identifiers reach the SQL
        sql += f' AND n."{column}" BETWEEN ? AND ?'
        params += [float(lo), float(hi)]
    return sql, params


def neuron_catalogue(store: Store, layer_lo: int, layer_hi: int, promotes: str = "", fires_on: str = "",
                     ranges: Sequence[tuple[str, float, float]] = ()) -> pa.Table:
    """Neurons in [layer_lo, layer_hi] with their headline numbers and first value tokens.

    `promotes`: keep neurons whose top value tokens include it. `fires_on`: keep neurons with
    activation records on it, adding `fires_on_records` (how many) and `fires_on_max`. Both
    compare token text with surrounding whitespace stripped, case-insensitively. `ranges`:
    (column, lo, hi) triples over RANGE_COLUMNS, inclusive, all of which must hold.
    """
    cols = ", ".join(f'n."{c}"' for c in CATALOGUE_COLUMNS)
    range_sql, range_params = _range_filter(ranges)
    params: list = [N_VALUE_TOKENS, layer_lo, layer_hi, *range_params]
    where = "n.layer BETWEEN ? AND ?" + range_sql
    if promotes.strip():
        where += " AND list_contains(list_transform(n.kv_top_tokens, lambda t: lower(trim(t))), ?)"
        params.append(_norm(promotes))
    if not fires_on.strip():
        return store.sql(
            f"SELECT {cols}, n.kv_top_tokens[1:?] AS top_value_tokens FROM neurons n "
            f"WHERE {where} ORDER BY n.layer, n.neuron",
            params,
        )
    params = [_norm(fires_on), *params]
    return store.sql(
        f"""
        WITH hits AS (
            SELECT a.layer, a.neuron, count(*) AS fires_on_records, max(a.activation) AS fires_on_max
            FROM activations a
            WHERE (a.seq_id, a.pos) IN (SELECT (t.seq_id, t.pos) FROM tokens t WHERE lower(trim(t.token)) = ?)
            GROUP BY a.layer, a.neuron
        )
        SELECT {cols}, n.kv_top_tokens[1:?] AS top_value_tokens, h.fires_on_records, h.fires_on_max
        FROM neurons n JOIN hits h ON h.layer = n.layer AND h.neuron = n.neuron
        WHERE {where} ORDER BY h.fires_on_max DESC, n.layer, n.neuron
        """,
        params,
    )


def neuron(store: Store, layer: int, neuron: int) -> pa.Table:
    """The `neurons` row of one neuron (zero rows if there is none)."""
    return store.sql("SELECT * FROM neurons WHERE layer = ? AND neuron = ?", [layer, neuron])


def neuron_examples(store: Store, layer: int, neuron: int, kind: str) -> pa.Table:
    """One neuron's examples of a kind ('top' or 'band') by rank, each with its context tokens:
    `context_tokens[i]` is the token at position ctx_start + i of the example's window. Read from
    the row itself (not `tokens`), so the cost does not grow with the corpus (bench/README.md)."""
    return store.sql(
        """
        SELECT rank, seq_id, pos, activation, ctx_start, context_acts, context_tokens
        FROM neuron_examples
        WHERE layer = ? AND neuron = ? AND kind = ?
        ORDER BY rank
        """,
        [layer, neuron, kind],
    )


def neighbours(store: Store, layer: int, neuron: int) -> pa.Table:
    """The neurons just before and after (layer, neuron) in catalogue order: columns
    (direction, layer, neuron), direction 'prev' or 'next'; a missing side has no row."""
    return store.sql(
        """
        (SELECT 'prev' AS direction, layer, neuron FROM neurons
          WHERE layer < ? OR (layer = ? AND neuron < ?) ORDER BY layer DESC, neuron DESC LIMIT 1)
        UNION ALL
        (SELECT 'next' AS direction, layer, neuron FROM neurons
          WHERE layer > ? OR (layer = ? AND neuron > ?) ORDER BY layer, neuron LIMIT 1)
        """,
        [layer, layer, neuron, layer, layer, neuron],
    )


def deletion_neurons(store: Store, n: int, layer_lo: int, layer_hi: int, n_examples: int = 3) -> pa.Table:
    """The `n` neurons of layers [layer_lo, layer_hi] with the most negative deletion_cos (ties:
    layer, neuron), each with its headline numbers, first value tokens and `examples`: its top
    `n_examples` activating examples by rank, shaped as `neuron_examples` rows (list of structs)."""
    return store.sql(
        """
        WITH d AS (
            SELECT layer, neuron, deletion_cos, "max", "min", density_frac, kv_top_tokens[1:?] AS top_value_tokens
            FROM neurons WHERE deletion_cos IS NOT NULL AND layer BETWEEN ? AND ?
            ORDER BY deletion_cos, layer, neuron LIMIT ?
        ), e AS (
            SELECT e.layer, e.neuron, e.rank, e.seq_id, e.pos, e.activation, e.ctx_start, e.context_acts,
                   e.context_tokens
            FROM neuron_examples e SEMI JOIN d ON d.layer = e.layer AND d.neuron = e.neuron
            WHERE e.kind = 'top' AND e.rank < ?
        ), g AS (
            SELECT layer, neuron,
                   list({'rank': rank, 'seq_id': seq_id, 'pos': pos, 'activation': activation,
                         'ctx_start': ctx_start, 'context_acts': context_acts,
                         'context_tokens': context_tokens} ORDER BY rank) AS examples
            FROM e GROUP BY layer, neuron
        )
        SELECT d.*, g.examples FROM d LEFT JOIN g USING (layer, neuron)
        ORDER BY d.deletion_cos, d.layer, d.neuron
        """,
        [N_VALUE_TOKENS, layer_lo, layer_hi, n, n_examples],
    )


def deletion_counts(store: Store, threshold: float) -> pa.Table:
    """Per layer: `n_neurons` and `n_below`, how many have deletion_cos < threshold."""
    return store.sql(
        """
        SELECT layer, count(*) AS n_neurons, count(*) FILTER (WHERE deletion_cos < ?) AS n_below
        FROM neurons GROUP BY layer ORDER BY layer
        """,
        [threshold],
    )


EXAMPLE_QUERIES: dict[str, str] = {
    "Neurons that fire hardest on a token (here ' the')": """\
-- activation records at the positions where the token is ' the'
-- (IN filters the large activations table; a JOIN gives the same rows, more slowly)
SELECT a.layer, a.neuron, max(a.activation) AS max_activation, count(*) AS n_records
FROM activations a
WHERE (a.seq_id, a.pos) IN (SELECT (seq_id, pos) FROM tokens WHERE lower(trim(token)) = 'the')
GROUP BY a.layer, a.neuron
ORDER BY max_activation DESC
LIMIT 25""",
    "Neurons that co-fire with layer 0, neuron 0": """\
-- positions where both neurons are among their strongest activation records
SELECT a.layer, a.neuron, count(*) AS shared_positions, avg(a.activation) AS mean_activation
FROM activations a
WHERE (a.seq_id, a.pos) IN (SELECT (seq_id, pos) FROM activations WHERE layer = 0 AND neuron = 0)
  AND NOT (a.layer = 0 AND a.neuron = 0)
GROUP BY a.layer, a.neuron
ORDER BY shared_positions DESC, mean_activation DESC
LIMIT 25""",
    "Tokens that layer 0's neurons promote most": """\
-- key-value view: how many neurons have each token among their top-5 value tokens
SELECT token, count(*) AS n_neurons
FROM (SELECT unnest(kv_top_tokens[1:5]) AS token FROM neurons WHERE layer = 0)
GROUP BY token
ORDER BY n_neurons DESC, token
LIMIT 25""",
    "Deletion neurons: most negative input/output cosine": """\
SELECT layer, neuron, deletion_cos, "max", kv_top_tokens[1:5] AS promotes
FROM neurons
ORDER BY deletion_cos
LIMIT 25""",
    "Documents behind a neuron's top examples (layer 0, neuron 0)": """\
SELECT e.rank, e.activation, t.token, d.doc_id, left(d.text, 120) AS document_start
FROM neuron_examples e
JOIN tokens t ON t.seq_id = e.seq_id AND t.pos = e.pos
JOIN documents d ON d.doc_id = t.doc_id
WHERE e.layer = 0 AND e.neuron = 0 AND e.kind = 'top'
ORDER BY e.rank""",
}
