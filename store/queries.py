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
CATALOGUE_COLUMNS = ("layer", "neuron", "max", "after_bos_frac", "density_frac", "strong_frac", "deletion_cos",
                     "kv_agreement_frac")
# Numeric `neurons` columns the catalogue can filter by range (and `score_bounds` reports).
RANGE_COLUMNS = ("max", "density_frac", "strong_frac", "deletion_cos", "kv_agreement_frac")
N_VALUE_TOKENS = 5
# A neuron whose top examples sit mostly (more than this share) on the first token after a BOS
# is a position artefact (massive activations / attention sink), not a response to text.
ARTEFACT_FRAC = 0.5
_TEXT_NEURON = f"coalesce(after_bos_frac, 0) <= {ARTEFACT_FRAC}"
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
    """Per layer: neurons, mean density, mean strong_frac, mean of per-neuron max (activation
    scale) over all neurons and over those that respond to text (`mean_max_text`: first-after-BOS
    artefacts left out), the number of artefacts, mean deletion_cos."""
    return store.sql(
        f"""
        SELECT layer, count(*) AS n_neurons,
               avg(density_frac) AS mean_density_frac,
               avg(strong_frac) AS mean_strong_frac,
               avg("max") AS mean_max,
               avg("max") FILTER (WHERE {_TEXT_NEURON}) AS mean_max_text,
               count(*) FILTER (WHERE NOT ({_TEXT_NEURON})) AS n_artefacts,
               avg(deletion_cos) AS mean_deletion_cos
        FROM neurons GROUP BY layer ORDER BY layer
        """,
        [],
    )


def layer_range(store: Store) -> pa.Table:
    """One row: the smallest and largest layer in `neurons`."""
    return store.sql("SELECT min(layer) AS lo, max(layer) AS hi FROM neurons", [])


def notable_neurons(store: Store, column: str, descending: bool, n: int, artefacts: bool | None = False) -> pa.Table:
    """The `n` neurons with the largest (or smallest) value of a numeric `neurons` column, with
    their `after_bos_frac`. `artefacts`: False (default) keeps neurons that respond to text
    (after_bos_frac <= ARTEFACT_FRAC), True only the first-after-BOS artefacts, None both."""
    NEURONS.column(column)  # raises KeyError: only schema identifiers reach the SQL text
    order = "DESC" if descending else "ASC"
    keep = "" if artefacts is None else f" AND {'NOT ' if artefacts else ''}({_TEXT_NEURON})"
    return store.sql(
        f'SELECT layer, neuron, "{column}" AS value, after_bos_frac FROM neurons WHERE "{column}" IS NOT NULL{keep} '
        f'ORDER BY "{column}" {order}, layer, neuron LIMIT ?',
        [n],
    )


def artefact_count(store: Store) -> pa.Table:
    """One row: `n_artefacts`, the neurons whose top examples sit mostly right after a BOS."""
    return store.sql(f"SELECT count(*) FILTER (WHERE NOT ({_TEXT_NEURON})) AS n_artefacts FROM neurons", [])


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
                     ranges: Sequence[tuple[str, float, float]] = (), artefacts: bool | None = False,
                     search: str = "") -> pa.Table:
    """Neurons in [layer_lo, layer_hi] with their headline numbers, the tokens they fire on
    (`fires_on_tokens`) and their first value tokens.

    `promotes`: keep neurons whose top value tokens include it. `fires_on`: keep neurons with
    activation records on it, ranked by `selectivity` (see `token_selectivity`), with
    `fires_on_records` and `fires_on_max`. Both compare token text with surrounding whitespace
    stripped, case-insensitively. `ranges`: (column, lo, hi) triples over RANGE_COLUMNS,
    inclusive, all of which must hold. `artefacts`: False (default) leaves out the neurons whose
    top examples sit mostly on the first token after a BOS, True keeps only those, None keeps
    both. `search`: keep neurons whose explanation contains this text, case-insensitively.
    """
    cols = ", ".join(f'n."{c}"' for c in CATALOGUE_COLUMNS)
    range_sql, range_params = _range_filter(ranges)
    params: list = [N_FIRES_ON, N_VALUE_TOKENS, layer_lo, layer_hi, *range_params]
    where = "n.layer BETWEEN ? AND ?" + range_sql
    if artefacts is not None:
        where += f" AND {'NOT ' if artefacts else ''}(coalesce(n.after_bos_frac, 0) <= {ARTEFACT_FRAC})"
    if promotes.strip():
        where += " AND list_contains(list_transform(n.kv_top_tokens, lambda t: lower(trim(t))), ?)"
        params.append(_norm(promotes))
    if search.strip():
        where += " AND contains(lower(n.explanation), ?)"
        params.append(search.strip().lower())
    select = (f"SELECT {cols}, n.fires_on_tokens[1:?] AS fires_on_tokens, n.kv_top_tokens[1:?] AS top_value_tokens, "
              "n.explanation")
    if not fires_on.strip():
        return store.sql(f"{select} FROM neurons n WHERE {where} ORDER BY n.layer, n.neuron", params)
    return store.sql(
        f"""
        WITH {_selectivity_ctes(store)}
        {select}, h.selectivity, h.token_recall, h.related_share, h.fires_on_records, h.fires_on_max
        FROM neurons n JOIN scored h ON h.layer = n.layer AND h.neuron = n.neuron
        WHERE {where} ORDER BY h.selectivity DESC, n.layer, n.neuron
        """,
        [_norm(fires_on), *params],
    )


N_FIRES_ON = 5
# below it a neighbour is noise: gpt2-random's random embeddings reach at most 0.20 (12,565 tokens
# checked); smollm2's " Paris" -> " London" is 0.61
RELATED_MIN_COSINE = 0.3


# A corpus position holds the searched token (bound: its text, normalised by `_norm`).
_IS_THE_TOKEN = "doc_id >= 0 AND lower(trim(token)) = ?"


def _selectivity_ctes(store: Store) -> str:
    """The CTEs of token search (one parameter, bound first: the token's text, normalised), ending
    in `scored`: per neuron with activation records on the token, how many (`fires_on_records`),
    the largest (`fires_on_max`), and

    - `token_recall`: the share of the token's occurrences among the neuron's activation records
      (its strongest activations over the corpus): does it fire on the token, most times;
    - `related_share`: the share of its top-example activation (positive parts) that sits on the
      token or on a related token, one of the token's nearest corpus tokens in the model's
      embedding (`token_neighbours`, cosine >= RELATED_MIN_COSINE; the token alone when the store
      has no such table): is the token what the neuron is about;
    - `selectivity` = token_recall x related_share, in [0, 1]. A neuron that fires on every
      occurrence and on nothing unrelated scores 1; a neuron with the strongest single activation
      on the token but other business in its top examples, or one that fires on it once, scores low.
    """
    related = "SELECT token_id FROM ids"
    if store.has("token_neighbours"):
        related += (" UNION SELECT neighbour_id FROM token_neighbours WHERE token_id IN (SELECT token_id FROM ids)"
                    f" AND cosine >= {RELATED_MIN_COSINE}")
    return f"""
    occ AS (SELECT seq_id, pos, token_id FROM tokens WHERE {_IS_THE_TOKEN}),
    ids AS (SELECT DISTINCT token_id FROM occ),
    related AS ({related}),
    hits AS (
        SELECT a.layer, a.neuron, count(*) AS fires_on_records, max(a.activation) AS fires_on_max
        FROM activations a
        WHERE (a.seq_id, a.pos) IN (SELECT (seq_id, pos) FROM occ)
        GROUP BY a.layer, a.neuron
    ),
    tops AS (
        SELECT e.layer, e.neuron,
               coalesce(sum(greatest(e.activation, 0))
                        FILTER (WHERE t.token_id IN (SELECT token_id FROM related)), 0)
                 / nullif(sum(greatest(e.activation, 0)), 0) AS related_share
        FROM neuron_examples e
        SEMI JOIN hits h ON h.layer = e.layer AND h.neuron = e.neuron
        JOIN tokens t ON t.seq_id = e.seq_id AND t.pos = e.pos
        WHERE e.kind = 'top'
        GROUP BY e.layer, e.neuron
    ),
    scored AS (
        SELECT h.*, h.fires_on_records / (SELECT count(*) FROM occ) AS token_recall,
               coalesce(t.related_share, 0) AS related_share,
               h.fires_on_records / (SELECT count(*) FROM occ) * coalesce(t.related_share, 0) AS selectivity
        FROM hits h LEFT JOIN tops t ON t.layer = h.layer AND t.neuron = h.neuron
    )"""


def token_selectivity(store: Store, token: str, n: int) -> pa.Table:
    """The `n` neurons most selective for a token (text compared stripped, case-insensitively):
    (layer, neuron, selectivity, token_recall, related_share, fires_on_records, fires_on_max,
    after_bos_frac), most selective first; see `_selectivity_ctes` for the measure."""
    return store.sql(
        f"""
        WITH {_selectivity_ctes(store)}
        SELECT h.layer, h.neuron, h.selectivity, h.token_recall, h.related_share, h.fires_on_records,
               h.fires_on_max, n.after_bos_frac
        FROM scored h JOIN neurons n USING (layer, neuron)
        ORDER BY h.selectivity DESC NULLS LAST, h.layer, h.neuron LIMIT ?
        """,
        [_norm(token), n],
    )


def related_tokens(store: Store, token: str, n: int = 12) -> list[str]:
    """The texts of a token's nearest corpus tokens that token search counts as related (see
    `_selectivity_ctes`), nearest first, at most `n`; [] when the store has no token_neighbours."""
    if not store.has("token_neighbours"):
        return []
    rows = store.sql(
        f"""
        SELECT neighbour, max(cosine) AS c FROM token_neighbours
        WHERE token_id IN (SELECT DISTINCT token_id FROM tokens WHERE {_IS_THE_TOKEN})
          AND cosine >= {RELATED_MIN_COSINE} AND lower(trim(neighbour)) <> ?
        GROUP BY neighbour ORDER BY c DESC, neighbour LIMIT ?
        """,
        [_norm(token), _norm(token), n],
    ).column("neighbour").to_pylist()
    return rows


def neuron(store: Store, layer: int, neuron: int) -> pa.Table:
    """The `neurons` row of one neuron (zero rows if there is none)."""
    return store.sql("SELECT * FROM neurons WHERE layer = ? AND neuron = ?", [layer, neuron])


def neuron_examples(store: Store, layer: int, neuron: int, kind: str) -> pa.Table:
    """One neuron's examples of a kind ('top' or 'band') by rank, each with its context tokens:
    `context_tokens[i]` is the token at position ctx_start + i of the example's window. Read from
    the row itself (not `tokens`), so the cost does not grow with the corpus (bench/README.md)."""
    return store.sql(
        """
        SELECT rank, seq_id, pos, activation, ctx_start, context_acts, context_tokens, context_display
        FROM neuron_examples
        WHERE layer = ? AND neuron = ? AND kind = ?
        ORDER BY rank
        """,
        [layer, neuron, kind],
    )


def window_tokens(store: Store, seq_id: int) -> pa.Table:
    """Every token of one window: (pos, token, is_bos), by position."""
    return store.sql("SELECT pos, token, doc_id < 0 AS is_bos FROM tokens WHERE seq_id = ? ORDER BY pos", [seq_id])


def neuron_explanations(store: Store, layer: int, neuron: int) -> pa.Table:
    """One neuron's LLM explanations (`neuron_explanations`), best score first."""
    return store.sql(
        "SELECT explainer, explanation, score, simulator, scored_tokens, created_at FROM neuron_explanations "
        "WHERE layer = ? AND neuron = ? ORDER BY score DESC NULLS LAST, explainer",
        [layer, neuron],
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
                   e.context_tokens, e.context_display
            FROM neuron_examples e SEMI JOIN d ON d.layer = e.layer AND d.neuron = e.neuron
            WHERE e.kind = 'top' AND e.rank < ?
        ), g AS (
            SELECT layer, neuron,
                   list({'rank': rank, 'seq_id': seq_id, 'pos': pos, 'activation': activation,
                         'ctx_start': ctx_start, 'context_acts': context_acts,
                         'context_tokens': context_tokens, 'context_display': context_display}
                         ORDER BY rank) AS examples
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
    "Logit lens: from which layer on does the prediction settle?": """\
-- per residual state: how close its decoded distribution is to the output, and how often its
-- top-1 already is the model's (top1_agreement) or the true next token (next_token_accuracy)
SELECT depth, layer, site, kl_to_final_mean, top1_agreement, next_token_accuracy, resid_norm_mean
FROM layer_stats
ORDER BY depth""",
    "Attention against MLP: who writes more, who moves the next-token logit": """\
SELECT writer_layer AS layer, writer, write_norm_mean, write_share, write_dla_mean
FROM layer_stats
WHERE writer <> 'embedding'
ORDER BY layer, writer""",
    "Heads that push the true next token most (direct logit attribution)": """\
SELECT layer, head, dla_mean, ov_copying_score, rand_induction_score
FROM heads
ORDER BY dla_mean DESC
LIMIT 10""",
}
