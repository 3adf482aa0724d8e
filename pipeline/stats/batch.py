"""What every statistic sees of one batch: the token layout and token ids (once per batch) and
one hook point's tensor at a time.

Neuron activations arrive per layer as `LayerActs`: `acts [batch pos d_mlp]` (float32, on the model's
device) and, computed on first use, `flat [valid d_mlp]`, the same rows with BOS positions
removed. BOS positions (position 0 and the separators between packed documents) are excluded
from every neuron statistic, as Neuronpedia excludes position 0: the model's activations on BOS
are attention-sink artefacts, not responses to text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from pipeline.hooks import HookPoint
from pipeline.stats.keys import encode_sample, position_hash


@dataclass(frozen=True)
class TokenBatch:
    first_seq: int  # seq_id of the batch's first window (windows are consecutive)
    n_seqs: int
    seq_len: int
    is_bos: torch.Tensor  # [batch pos] bool
    skip: torch.Tensor  # [batch * pos] uint8: 1 at BOS rows (what the native kernels read)
    valid_rows: torch.Tensor  # [valid] int64: flat indices (b * seq_len + pos) of non-BOS positions
    positions: torch.Tensor  # [valid] int64: global positions seq_id * seq_len + pos, ascending
    sample_rows: torch.Tensor  # [sampled] int64: indices into the valid rows used by histograms
    sample_keys: torch.Tensor  # [sampled] int64: min-hash keys of those rows' positions
    token_ids: torch.Tensor | None = None  # [batch pos] int64 on the model's device
    host_bos: torch.Tensor | None = None  # [batch pos] bool on the CPU, set by `build`: row sets come from it

    @staticmethod
    def build(first_seq: int, is_bos: torch.Tensor, sample_shift: int = 0,
              token_ids: torch.Tensor | None = None) -> TokenBatch:
        """`is_bos [batch pos]` bool; histograms see positions whose hash has its low
        `sample_shift` bits zero (1 / 2^sample_shift of them), chosen by position so that the
        sample does not depend on batching. The row sets are computed on the host (from
        `is_bos`, wherever it is; the harvest passes it on the CPU) and then moved to the model's
        device (`token_ids`'s, else `is_bos`'s): a GPU is never asked how many rows there are."""
        n_seqs, seq_len = is_bos.shape
        device = token_ids.device if token_ids is not None else is_bos.device
        host = is_bos.cpu()
        valid_rows = (~host).reshape(-1).nonzero().squeeze(1)
        positions = valid_rows + first_seq * seq_len
        if sample_shift:
            keep = (position_hash(positions) & ((1 << sample_shift) - 1)) == 0
            sample_rows = keep.nonzero().squeeze(1)
        else:
            sample_rows = torch.arange(positions.numel())
        sample_keys = encode_sample(positions[sample_rows])

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return TokenBatch(
            first_seq=first_seq,
            n_seqs=n_seqs,
            seq_len=seq_len,
            is_bos=move(is_bos),
            skip=move(host.reshape(-1).to(torch.uint8).contiguous()),
            valid_rows=move(valid_rows),
            positions=move(positions),
            sample_rows=move(sample_rows),
            sample_keys=move(sample_keys),
            token_ids=token_ids,
            host_bos=host,
        )

    @property
    def n_valid(self) -> int:
        return self.valid_rows.numel()  # a shape: no sync

    @property
    def first_pos(self) -> int:
        """Global position of the batch's first row (row r is position first_pos + r)."""
        return self.first_seq * self.seq_len


@dataclass
class LayerActs:
    """One hook point's tensor on one batch, as the statistics receive it: float32, contiguous,
    on the model's device. For `mlp_post` it is `[batch pos d_mlp]`; for `attn_pattern`
    `[batch head query_pos key_pos]` (see `pipeline/hooks.py` for the others)."""

    layer: int
    acts: torch.Tensor
    batch: TokenBatch
    point: HookPoint | None = None

    @cached_property
    def flat(self) -> torch.Tensor:
        """[valid d_mlp]: the non-BOS rows (a copy, made once, only if an accumulator asks)."""
        return self.rows.index_select(0, self.batch.valid_rows)

    @property
    def rows(self) -> torch.Tensor:
        """[batch * pos, d_mlp], a view of acts."""
        return self.acts.view(-1, self.acts.shape[-1])
