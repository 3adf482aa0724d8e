"""The weight-only and model-only analyses a build runs, listed explicitly.

Each `Analysis` is a function of the loaded model (and the build's statistics config), run once
after the harvest: `run(model, config) -> {table: {column: values}}`, in the same shape as a
statistic's `finalize` (see `pipeline/stats/contract.py`); the key "manifest", if present, holds
facts for the store's manifest (filed under the analysis's name). Adding one is a new module
plus an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from store import schema
from store.schema import Table

MANIFEST_KEY = "manifest"


@dataclass(frozen=True)
class Analysis:
    name: str
    tables: tuple[Table, ...]
    run: Callable[..., dict]


def _neuron_weights(model, config) -> dict:
    from pipeline.analysis import neuron_weight_columns

    return {"neurons": neuron_weight_columns(model)}


ANALYSES: tuple[Analysis, ...] = (
    Analysis("neuron_weights", (schema.NEURONS,), _neuron_weights),
)
