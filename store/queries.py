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

from store.schema import HEAD_COMPOSITION, HEADS, NEURON_CIRCUITS, NEURONS, TABLES

if TYPE_CHECKING:
    from store.reader import Store

# Catalogue columns, in display order; the list columns are the first few value tokens.
CATALOGUE_COLUMNS = ("layer", "neuron", "max", "density_frac", "deletion_cos", "kv_agreement_frac")
# Numeric `neurons` columns the catalogue can filter by range (and `score_bounds` reports).
RANGE_COLUMNS = ("max", "density_frac", "deletion_cos", "kv_agreement_frac")
N_VALUE_TOKENS = 5
# Scalar float columns of `heads`: what the head matrix and the head catalogue can show and sort by.
HEAD_SCORE_COLUMNS = tuple(c.name for c in HEADS.columns if pa.types.is_floating(c.type))
COMPOSITION_KINDS = ("q", "k", "v")
CIRCUIT_RELATIONS = ("input_token", "upstream_neuron", "upstream_head", "downstream_neuron", "downstream_head")


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


# --- heads, their composition, neuron circuits ---------------------------------------------


def _head_score(column: str) -> str:
    if column not in HEAD_SCORE_COLUMNS:
        raise KeyError(f"heads has no score column {column!r}")  # only schema identifiers reach the SQL
    return column


def head_range(store: Store) -> pa.Table:
    """One row: smallest and largest layer, largest head index and the number of heads in `heads`."""
    return store.sql("SELECT min(layer) AS lo, max(layer) AS hi, max(head) AS max_head, count(*) AS n_heads "
                     "FROM heads", [])


def head_catalogue(store: Store, layer_lo: int, layer_hi: int, sort_by: str = "layer") -> pa.Table:
    """Heads of layers [layer_lo, layer_hi] with every score and their first OV copy and suppress
    tokens; ordered by `sort_by` (a score column, largest first, nulls last) or by layer, head."""
    scores = ", ".join(f'"{c}"' for c in HEAD_SCORE_COLUMNS)
    order = "layer, head" if sort_by == "layer" else f'"{_head_score(sort_by)}" DESC NULLS LAST, layer, head'
    return store.sql(
        f"SELECT layer, head, {scores}, ov_copy_tokens[1:?] AS ov_copy_tokens, "
        f"ov_suppress_tokens[1:?] AS ov_suppress_tokens FROM heads WHERE layer BETWEEN ? AND ? ORDER BY {order}",
        [N_VALUE_TOKENS, N_VALUE_TOKENS, layer_lo, layer_hi],
    )


def head_matrix(store: Store, column: str) -> pa.Table:
    """(layer, head, value) of one score column for every head: the layer x head heatmap."""
    return store.sql(f'SELECT layer, head, "{_head_score(column)}" AS value FROM heads ORDER BY layer, head', [])


def head(store: Store, layer: int, head: int) -> pa.Table:
    """The `heads` row of one head (zero rows if there is none)."""
    return store.sql("SELECT * FROM heads WHERE layer = ? AND head = ?", [layer, head])


def head_examples(store: Store, layer: int, head: int) -> pa.Table:
    """One head's top examples by rank, each with its attention row, block and window tokens."""
    return store.sql(
        """
        SELECT rank, seq_id, pos, src_pos, attention, pattern, block_start, block, context_tokens
        FROM head_examples WHERE layer = ? AND head = ? ORDER BY rank
        """,
        [layer, head],
    )


def head_neighbours(store: Store, layer: int, head: int) -> pa.Table:
    """The heads just before and after (layer, head) in (layer, head) order: columns (direction,
    layer, head), direction 'prev' or 'next'; a missing side has no row."""
    return store.sql(
        """
        (SELECT 'prev' AS direction, layer, head FROM heads
          WHERE layer < ? OR (layer = ? AND head < ?) ORDER BY layer DESC, head DESC LIMIT 1)
        UNION ALL
        (SELECT 'next' AS direction, layer, head FROM heads
          WHERE layer > ? OR (layer = ? AND head > ?) ORDER BY layer, head LIMIT 1)
        """,
        [layer, layer, head, layer, layer, head],
    )


def head_partners(store: Store, layer: int, head: int, n: int) -> pa.Table:
    """A head's strongest composition partners both ways: direction 'upstream' (earlier heads whose
    output this head's q/k/v reads) and 'downstream' (later heads reading its output), the top `n`
    of each by score (any kind), with (other_layer, other_head, kind, score, baseline)."""
    return store.sql(
        """
        WITH up AS (
            SELECT 'upstream' AS direction, src_layer AS other_layer, src_head AS other_head, kind, score, baseline
            FROM head_composition WHERE dst_layer = ? AND dst_head = ?
            ORDER BY score DESC, src_layer, src_head, kind LIMIT ?
        ), down AS (
            SELECT 'downstream' AS direction, dst_layer AS other_layer, dst_head AS other_head, kind, score, baseline
            FROM head_composition WHERE src_layer = ? AND src_head = ?
            ORDER BY score DESC, dst_layer, dst_head, kind LIMIT ?
        )
        SELECT * FROM (SELECT * FROM up UNION ALL SELECT * FROM down)
        ORDER BY direction DESC, score DESC, other_layer, other_head, kind
        """,
        [layer, head, n, layer, head, n],
    )


def strongest_compositions(store: Store, kinds: Sequence[str], min_margin: float, n: int,
                           min_score: float = 0.0) -> pa.Table:
    """The `n` strongest compositions across the model of the given kinds whose score is at least
    `min_score` and exceeds its baseline by at least `min_margin`: `head_composition` rows plus
    `margin` (score - baseline), strongest first."""
    cols = ", ".join(HEAD_COMPOSITION.column_names)
    return store.sql(
        f"""
        SELECT {cols}, score - baseline AS margin FROM head_composition
        WHERE list_contains(?::VARCHAR[], kind) AND score >= ? AND score - baseline >= ?
        ORDER BY score DESC, src_layer, src_head, dst_layer, dst_head, kind LIMIT ?
        """,
        [[str(k) for k in kinds], float(min_score), float(min_margin), n],
    )


def neuron_circuits(store: Store, layer: int, neuron: int) -> pa.Table:
    """One neuron's `neuron_circuits` rows, by relation (in CIRCUIT_RELATIONS order) and rank."""
    cols = ", ".join(c for c in NEURON_CIRCUITS.column_names if c not in ("layer", "neuron"))
    return store.sql(
        f"SELECT {cols} FROM neuron_circuits WHERE layer = ? AND neuron = ? "
        "ORDER BY list_position(?::VARCHAR[], relation), relation, rank",
        [layer, neuron, list(CIRCUIT_RELATIONS)],
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
    "Induction heads: attention to the token after an earlier copy": """\
-- rand_induction_score: on repeated random tokens; induction_score: on the corpus
SELECT layer, head, rand_induction_score, induction_score, prev_token_score, ov_copying_score
FROM heads
ORDER BY rand_induction_score DESC
LIMIT 10""",
    "Previous-token heads feeding induction heads (K-composition)": """\
SELECT c.src_layer, c.src_head, p.prev_token_score, c.dst_layer, c.dst_head,
       i.rand_induction_score, c.score, c.baseline
FROM head_composition c
JOIN heads p ON p.layer = c.src_layer AND p.head = c.src_head
JOIN heads i ON i.layer = c.dst_layer AND i.head = c.dst_head
WHERE c.kind = 'k'
ORDER BY c.score * p.prev_token_score * i.rand_induction_score DESC
LIMIT 20""",
}
