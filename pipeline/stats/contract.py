"""The statistic contract: what every streaming statistic of a harvest provides.

A statistic declares the hook points it reads (`hook_points`), takes one captured tensor at a
time (`update`), merges with a copy of itself that saw other windows (`merge`: shards), saves and
restores its state (`state_dict` / `load_state_dict`: checkpoints) and turns its state into table
columns (`finalize`). It is built from a `StatContext` (model shape, build parameters, device, and
the loaded model for a statistic that needs copies of weights, e.g. the logit lens) by
the factory listed in `pipeline/stats/registry.py`; the harvest and the build read that registry
and never name a statistic or a table.

`finalize` returns `{table name: {column: values}}`. Values are numpy arrays (2-D for
fixed-length list columns), Python lists, Arrow arrays, or a `deferred` request that the build
resolves with the corpus's tokens after the pass (`TokenWindows`, `TokenIdsAt`); columns whose
names start with "_" are intermediate (for a derived column, see `pipeline/stats/derived.py`) and
are not written. Two statistics may fill the same table: parts that carry the table's whole
sort key and the same columns are appended as rows; other parts add columns to the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from pipeline.hooks import HookPoint
    from pipeline.stats import StatsConfig
    from pipeline.stats.batch import LayerActs
    from store.schema import Table


@dataclass(frozen=True)
class StatContext:
    """What a statistic is sized and configured by."""

    config: StatsConfig
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    d_vocab: int
    device: str | torch.device = "cpu"
    use_native: bool | None = None  # the fused CPU kernels (None: wherever available)
    model: object | None = field(default=None, compare=False, repr=False)  # for statistics that read weights


    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @staticmethod
    def of(model, config: StatsConfig, use_native: bool | None = None) -> StatContext:
        return StatContext(config, model.n_layers, model.n_heads, model.d_model, model.d_mlp, model.d_vocab,
                           model.device, use_native, model)


@runtime_checkable
class Statistic(Protocol):
    name: str  # unique within a harvest: the key of its state in checkpoints
    tables: tuple[Table, ...]  # the tables its finalize fills (columns of them)

    def hook_points(self) -> tuple[HookPoint, ...]: ...

    def update(self, x: LayerActs) -> None:
        """One hook point's tensor on one batch; `x.point` says which."""

    def merge(self, other: Statistic) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def finalize(self) -> dict[str, dict[str, object]]: ...
