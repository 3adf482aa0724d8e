"""Count, mean, std, min, max and density of every neuron's activation.

Per-batch column sums are taken in float32 (torch) or float64 (native kernel) and added into
float64 totals, so the totals do not drift over millions of tokens and merging shards changes
them by float64 rounding only.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import hooks
from pipeline.stats import native
from pipeline.stats.batch import LayerActs
from pipeline.stats.contract import StatContext
from store import schema


class Moments:
    name = "moments"
    tables = (schema.NEURONS,)

    @classmethod
    def create(cls, ctx: StatContext) -> Moments:
        return cls(ctx.n_layers, ctx.d_mlp, ctx.device, ctx.use_native)

    def hook_points(self) -> tuple[hooks.HookPoint, ...]:
        return tuple(hooks.point("mlp_post", layer) for layer in range(self.count.shape[0]))

    def __init__(self, n_layers: int, d_mlp: int, device: str | torch.device = "cpu", use_native: bool | None = None):
        self.native = native.enabled(device) if use_native is None else use_native
        z64 = torch.zeros((n_layers, d_mlp), dtype=torch.float64, device=device)
        self.count = torch.zeros(n_layers, dtype=torch.int64, device=device)
        self.total = z64.clone()
        self.total_sq = z64.clone()
        self.positive = torch.zeros((n_layers, d_mlp), dtype=torch.int64, device=device)
        self.min = torch.full((n_layers, d_mlp), float("inf"), device=device)
        self.max = torch.full((n_layers, d_mlp), float("-inf"), device=device)

    def update(self, x: LayerActs) -> None:
        layer = x.layer
        if x.batch.n_valid == 0:
            return
        self.count[layer] += x.batch.n_valid
        if self.native:
            native.moments(x.rows, x.batch.skip, self.total[layer], self.total_sq[layer], self.positive[layer],
                           self.min[layer], self.max[layer])
            return
        flat = x.flat
        self.total[layer] += flat.sum(0)
        self.total_sq[layer] += (flat * flat).sum(0)
        # sign of max(x, 0) is 1 exactly where x > 0; summed in float32, exact below 2^24 rows.
        self.positive[layer] += flat.clamp(min=0).sign_().sum(0).to(torch.int64)
        torch.minimum(self.min[layer], flat.amin(0), out=self.min[layer])
        torch.maximum(self.max[layer], flat.amax(0), out=self.max[layer])

    def merge(self, other: Moments) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.positive += other.positive
        torch.minimum(self.min, other.min, out=self.min)
        torch.maximum(self.max, other.max, out=self.max)

    _FIELDS = ("count", "total", "total_sq", "positive", "min", "max")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in self._FIELDS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for f in self._FIELDS:
            setattr(self, f, state[f].to(getattr(self, f).device))

    def finalize(self) -> dict[str, dict[str, np.ndarray]]:
        """Columns of the `neurons` table, in (layer, neuron) order."""
        n_layers, d_mlp = self.total.shape
        count = self.count.unsqueeze(1).expand(n_layers, d_mlp).to(torch.float64)
        safe = count.clamp(min=1)
        mean = self.total / safe
        var = (self.total_sq / safe - mean * mean).clamp(min=0)
        empty = count == 0
        nan = float("nan")

        def col(t: torch.Tensor) -> np.ndarray:
            return t.masked_fill(empty, nan).reshape(-1).to(torch.float32).cpu().numpy()

        return {
            "neurons": {
                "layer": np.repeat(np.arange(n_layers, dtype=np.int16), d_mlp),
                "neuron": np.tile(np.arange(d_mlp, dtype=np.int32), n_layers),
                "count": count.reshape(-1).to(torch.int64).cpu().numpy(),
                "mean": col(mean),
                "std": col(var.sqrt()),
                "min": col(self.min.to(torch.float64)),
                "max": col(self.max.to(torch.float64)),
                "density_frac": col(self.positive / safe),
            }
        }
