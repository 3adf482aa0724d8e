"""The forward pass that feeds the statistics: one batch of windows at a time.

The harvest builds every statistic of `pipeline.stats.registry.STATISTICS`, registers one hook
per hook point that any of them asks for, and hands each point's tensor (as float32, contiguous,
on the model's device) to the statistics that asked, as soon as the model has computed it: at
most one point's tensor is alive at once. After the last point any statistic needs, the forward
pass is stopped (neuron statistics alone need nothing after the last MLP: the final norm and the
unembedding are skipped). No maths lives here; see `pipeline/stats/`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.hooks import HookPoint
from pipeline.stats import StatsConfig, registry
from pipeline.stats.batch import LayerActs, TokenBatch
from pipeline.stats.contract import StatContext, Statistic


class _LastPointDone(Exception):
    """Raised from the last hook point to skip the rest of the forward pass."""


def run_through(model, tokens: torch.Tensor, fwd_hooks: list, last: HookPoint | None) -> None:
    """Run the bridge with `fwd_hooks` and stop right after hook point `last` (its own hooks
    there run first: hooks fire in the order they were added); None runs the whole pass."""

    def stop(acts: torch.Tensor, hook=None) -> None:
        raise _LastPointDone

    stops = [] if last is None or last.kind == "unembed" else [(last.name, stop)]
    try:
        with model.bridge.hooks(fwd_hooks=[*fwd_hooks, *stops]):
            model.bridge(tokens, return_type=None)
    except _LastPointDone:
        pass


class Harvest:
    def __init__(self, model, config: StatsConfig, use_native: bool | None = None,
                 statistics: Sequence[Callable[[StatContext], Statistic]] | None = None):
        """statistics: the factories to run (default: the registry's, read now, so that a test
        can extend the registry). use_native: the fused CPU kernels (None: wherever available)."""
        self.model, self.config = model, config
        ctx = StatContext.of(model, config, use_native)
        factories = registry.STATISTICS if statistics is None else statistics
        self.stats: list[Statistic] = [make(ctx) for make in factories]
        names = [s.name for s in self.stats]
        if len(set(names)) != len(names):
            raise ValueError(f"statistic names must be unique: {names}")
        self._readers: dict[HookPoint, list[Statistic]] = {}
        for stat in self.stats:
            for p in stat.hook_points():
                self._readers.setdefault(p, []).append(stat)
        self.points = sorted(self._readers)
        self._batch: TokenBatch | None = None

    def _hook(self, point: HookPoint):
        readers = self._readers[point]

        def fn(acts: torch.Tensor, hook=None) -> None:
            batch = self._batch
            assert batch is not None
            # statistics accumulate in fp32 at least
            x = LayerActs(point.layer, acts.detach().to(torch.float32).contiguous(), batch, point)
            for stat in readers:
                stat.update(x)

        return fn

    def fwd_hooks(self) -> list:
        return [(p.name, self._hook(p)) for p in self.points]

    @torch.no_grad()
    def process(self, first_seq: int, token_ids: np.ndarray, is_bos: np.ndarray) -> None:
        """Run one batch of windows ([batch pos] token ids, BOS mask) through the model."""
        device = self.model.device
        tokens = torch.from_numpy(np.ascontiguousarray(token_ids)).to(device=device, dtype=torch.long)
        bos = torch.from_numpy(np.ascontiguousarray(is_bos))  # on the host: TokenBatch moves it
        self._batch = TokenBatch.build(first_seq, bos, self.config.hist_sample_shift, token_ids=tokens)
        try:
            run_through(self.model, tokens, self.fwd_hooks(), self.points[-1] if self.points else None)
        finally:
            self._batch = None

    def merge(self, other: Harvest) -> None:
        for mine, theirs in zip(self.stats, other.stats, strict=True):
            mine.merge(theirs)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {stat.name: stat.state_dict() for stat in self.stats}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        missing = [stat.name for stat in self.stats if stat.name not in state]
        if missing:
            raise ValueError(f"the checkpoint has no state for {', '.join(missing)} "
                             "(it was written by another mechscope or another statistics set)")
        for stat in self.stats:
            stat.load_state_dict(state[stat.name])

    def tables(self) -> dict[str, object]:
        """{table name: schema.Table} of every table the statistics fill."""
        return {t.name: t for stat in self.stats for t in stat.tables}

    def finalize(self) -> list[dict[str, dict]]:
        """Every statistic's table parts, in registry order (combined by `pipeline/assemble.py`)."""
        return [stat.finalize() for stat in self.stats]
