"""The weight-only and model-only analyses a build runs, listed explicitly.

Each `Analysis` is a function of the loaded model (and the build's statistics config), run once
after the harvest: `run(model, config) -> {table: {column: values}}`, in the same shape as a
statistic's `finalize` (see `pipeline/stats/contract.py`); the key "manifest", if present, holds
facts for the store's manifest (filed under the analysis's name). Adding one is a new module
plus an entry here.

`run_analyses` remembers the last model's outputs in this process, keyed by the state of its
weights (`pipeline.weights.weights_state`): writing another store from the same loaded model (a
merge of shards, the tests' repeated builds) does not redo minutes of matrix products; any
changed weight misses.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
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


def _random_repeats(model, config) -> dict:
    import numpy as np

    from pipeline.analysis.induction_probe import LENGTH, N_SEQS, random_repeat_scores

    keys = {"layer": np.repeat(np.arange(model.n_layers, dtype=np.int16), model.n_heads),
            "head": np.tile(np.arange(model.n_heads, dtype=np.int16), model.n_layers)}
    n_ctx = model.facts.get("n_ctx") or 2 * LENGTH + 1
    length = min(LENGTH, (n_ctx - 1) // 2)  # BOS + R + R must fit the model's context
    return {"heads": {**keys, **random_repeat_scores(model, length=length)},
            "manifest": {"n_seqs": N_SEQS, "length": length, "seed": 0}}


def _head_weights(model, config) -> dict:
    from pipeline.analysis.ov_qk import head_weight_columns

    return {"heads": head_weight_columns(model)}


def _composition(model, config) -> dict:
    from pipeline.analysis.composition import composition_tables

    return composition_tables(model)


def _neuron_circuits(model, config) -> dict:
    from pipeline.analysis.circuits import neuron_circuit_tables

    return neuron_circuit_tables(model)


_memo: dict[tuple, dict] = {}


def run_analyses(model, config, step: Callable[..., AbstractContextManager] | None = None):
    """Yield (analysis, its output) for every entry of ANALYSES; outputs for the weights seen last
    are remembered (the caller may add to or pop from the returned dict, never change the
    columns inside: each call gets a shallow copy). `step(name, note)`, if given, wraps each
    analysis (`pipeline.progress.Steps`: a line and a timing)."""
    from pipeline.weights import weights_state

    fingerprint = weights_state(model)
    if not any(k[1] == fingerprint for k in _memo):
        _memo.clear()  # other weights: keep one model's outputs at most
    for analysis in ANALYSES:
        key = (analysis.name, fingerprint, repr(config))
        remembered = key in _memo
        with (step or _no_step)(f"analysis: {analysis.name}", " (remembered from this model)" if remembered else ""):
            if not remembered:
                _memo[key] = analysis.run(model, config)
        yield analysis, dict(_memo[key])


@contextmanager
def _no_step(name: str, note: str = ""):
    yield


ANALYSES: tuple[Analysis, ...] = (
    Analysis("neuron_weights", (schema.NEURONS,), _neuron_weights),
    Analysis("random_repeats", (schema.HEADS,), _random_repeats),
    Analysis("head_weights", (schema.HEADS,), _head_weights),
    Analysis("head_composition", (schema.HEAD_COMPOSITION,), _composition),
    Analysis("neuron_circuits", (schema.NEURON_CIRCUITS,), _neuron_circuits),
)
