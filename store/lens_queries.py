"""The questions the logit-lens and residual-stream pages ask of a store (`logit_lens`,
`lens_positions`, `layer_stats`), one function per question, values bound with `?`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from store.reader import Store

# Published GPT-2 figures for the PCA experiment (one position's residual states across layers):
# share of variance on the first component, and how often it decodes to the final prediction.
PUBLISHED_PCA = {"share": 0.88, "match": 0.77}


def lens_windows(store: Store) -> pa.Table:
    """Windows with sampled positions: seq_id, how many, the first sampled position, and the text
    of the 8 tokens from there (a label)."""
    return store.sql(
        """
        WITH w AS (SELECT seq_id, count(*) AS n_positions, min(pos) AS first_pos FROM lens_positions GROUP BY seq_id)
        SELECT w.seq_id, w.n_positions, w.first_pos, string_agg(t.token, '' ORDER BY t.pos) AS preview
        FROM w JOIN tokens t ON t.seq_id = w.seq_id AND t.pos BETWEEN w.first_pos AND w.first_pos + 7
        GROUP BY ALL ORDER BY w.seq_id
        """,
        [],
    )


def window_tokens(store: Store, seq_id: int) -> pa.Table:
    """(pos, token) of one window."""
    return store.sql("SELECT pos, token FROM tokens WHERE seq_id = ? ORDER BY pos", [seq_id])


def lens_grid(store: Store, seq_id: int) -> pa.Table:
    """Every lens row of one window, with the position's token and the true next token as text."""
    return store.sql(
        """
        SELECT l.pos, l.depth, l.layer, l.site, l.top_tokens, l.top_probs, l.true_prob, l.true_rank,
               l.kl_to_final, l.entropy_nats, l.top1_agrees, t.token, n.token AS next_token
        FROM logit_lens l
        JOIN tokens t ON t.seq_id = l.seq_id AND t.pos = l.pos
        LEFT JOIN tokens n ON n.seq_id = l.seq_id AND n.pos = l.pos + 1
        WHERE l.seq_id = ?
        ORDER BY l.pos, l.depth
        """,
        [seq_id],
    )


def layer_stats(store: Store) -> pa.Table:
    return store.sql("SELECT * FROM layer_stats ORDER BY depth", [])


def pca_summary(store: Store) -> pa.Table:
    """One row: positions, mean share and match rate of the PCA experiment, raw and normalised."""
    return store.sql(
        """
        SELECT count(*) AS n_positions,
               avg(pca_share) AS share, median(pca_share) AS share_median, avg(pca_match::DOUBLE) AS match,
               avg(pca_share_normalized) AS share_normalized,
               avg(pca_match_normalized::DOUBLE) AS match_normalized
        FROM lens_positions
        """,
        [],
    )
