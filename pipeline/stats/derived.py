"""Columns derived from other columns once every statistic and weight analysis has finished and
the corpus's tokens are resolved: each needs parts that no single statistic owns.

`DERIVED` lists them; each takes the build's `{table: {column: values}}` and adds its column
when its inputs are there (a build without neuron statistics simply has no such columns).
"""

from __future__ import annotations

import numpy as np

from pipeline.stats import evidence


def kv_agreement(tables: dict[str, dict]) -> None:
    """neurons.kv_agreement_frac: the share of a neuron's top examples (those with a next token)
    whose next token is among its top value tokens; NaN when no example has a next token."""
    neurons = tables.get("neurons", {})
    if "_top_next_token_ids" not in neurons or "kv_top_token_ids" not in neurons:
        return
    neurons["kv_agreement_frac"] = agreement(neurons["_top_next_token_ids"], neurons["kv_top_token_ids"])


def agreement(next_token_ids: np.ndarray, top_value_ids) -> np.ndarray:
    flat_next = np.asarray(next_token_ids).reshape(len(next_token_ids), -1)  # [layer*neuron, k]
    values = np.asarray(top_value_ids)  # [layer*neuron, n_value_tokens]
    hits = (flat_next[:, :, None] == values[:, None, :]).any(-1) & (flat_next >= 0)
    has_next = (flat_next >= 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(has_next > 0, hits.sum(1) / has_next, np.nan).astype(np.float32)


DERIVED = (kv_agreement, *evidence.DERIVED)
