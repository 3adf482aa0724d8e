"""Windows of context activations around chosen (position, neuron) pairs of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ContextWindow:
    before: int = 16
    after: int = 4

    def width(self, seq_len: int) -> int:
        return min(self.before + 1 + self.after, seq_len)

    def start(self, pos: torch.Tensor, seq_len: int) -> torch.Tensor:
        """First position of the window around `pos`, shifted to stay inside the sequence."""
        return (pos - self.before).clamp(min=0).clamp(max=seq_len - self.width(seq_len))

    def gather(self, acts: torch.Tensor, flat_rows: torch.Tensor, neurons: torch.Tensor,
               is_bos: torch.Tensor) -> torch.Tensor:
        """Activations of `neurons` in a window around `flat_rows` (b * seq_len + pos).

        acts [batch pos d_mlp]; is_bos [batch pos]. Returns [n, width], NaN at BOS positions.
        """
        _, seq_len, d_mlp = acts.shape
        width = self.width(seq_len)
        seq, pos = flat_rows // seq_len, flat_rows % seq_len
        cols = self.start(pos, seq_len).unsqueeze(1) + torch.arange(width, device=acts.device)
        rows = seq.unsqueeze(1) * seq_len + cols  # [n, width] flat (b, pos)
        values = acts.reshape(-1).take(rows * d_mlp + neurons.unsqueeze(1))
        return values.masked_fill_(is_bos.reshape(-1).take(rows), float("nan"))
