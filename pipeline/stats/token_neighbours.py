"""Which tokens the corpus holds, and each one's nearest tokens in the model's embedding: the
`token_neighbours` table.

Token search ("which neurons fire on ' Paris'?") counts a neuron's top examples on the token and
on tokens the model itself places near it. In smollm2-135m the nearest corpus tokens to " Paris" by
cosine of their `W_E` rows are " London", " France", " Berlin", " Barcelona", " Amsterdam", ...
(0.61 down to 0.51 for the 32nd), so a neuron that fires on European capitals is found as
Paris-related without a word list. Neighbours are taken among the tokens the corpus holds (BOS
excluded), the only ones a search can match; a model with random embeddings gets small cosines
(gpt2-random: at most 0.20), which the search's floor (`store.queries.RELATED_MIN_COSINE`, 0.3)
leaves out.

Streaming part: a [d_vocab] count of each token id's non-BOS occurrences, read at block 0's
`resid_pre` (a point the logit lens reads anyway); merging adds counts, so shards and batch size
never change it. The neighbours are computed once in `finalize`, from the embedding as the model
holds it (no norm folded), in fixed row chunks: D seen tokens cost D^2 x d_model multiply-adds
(1.4 s for the 15,152 distinct tokens of the demo's 131k-token corpus on 2 cores).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import hooks
from pipeline.analysis.neighbours import nearest_rows
from pipeline.stats.batch import LayerActs
from pipeline.stats.contract import StatContext
from pipeline.windows import decode_tokens
from store import schema

N_NEIGHBOURS = 32
CHUNK = 2048  # rows of the similarity matrix computed at once (fixed: same floats however built)


class TokenNeighbours:
    name = "token_neighbours"
    tables = (schema.TOKEN_NEIGHBOURS,)

    @classmethod
    def create(cls, ctx: StatContext) -> TokenNeighbours:
        if ctx.model is None:
            raise ValueError("token neighbours need the model's embedding (StatContext.model)")
        return cls(ctx.model, ctx.d_vocab, ctx.device)

    def __init__(self, model, d_vocab: int, device: str | torch.device = "cpu"):
        self.model = model
        self.count = torch.zeros(d_vocab, dtype=torch.int64, device=device)  # non-BOS occurrences per id

    def hook_points(self) -> tuple[hooks.HookPoint, ...]:
        return (hooks.point("resid_pre", 0),)

    def update(self, x: LayerActs) -> None:
        batch = x.batch  # an index_add, not a boolean index: no host sync on a GPU
        self.count.index_add_(0, batch.token_ids.reshape(-1), (~batch.is_bos).reshape(-1).to(torch.int64))

    def merge(self, other: TokenNeighbours) -> None:
        self.count += other.count.to(self.count.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.count = state["count"].to(self.count.device)

    def finalize(self) -> dict[str, dict[str, object]]:
        ids = (self.count > 0).nonzero().squeeze(1)
        neighbours, cosines = nearest_tokens(self.model.bridge.W_E, ids, N_NEIGHBOURS)
        k = neighbours.shape[1]
        token_ids = np.repeat(ids.cpu().numpy().astype(np.int32), k)
        neighbour_ids = neighbours.reshape(-1)
        text = decode_tokens(self.model.tokenizer, ids.tolist())
        return {
            "token_neighbours": {
                "token_id": token_ids,
                "token": [text[int(i)] for i in token_ids],
                "rank": np.tile(np.arange(k, dtype=np.int16), len(ids)),
                "neighbour_id": neighbour_ids,
                "neighbour": [text[int(i)] for i in neighbour_ids],
                "cosine": cosines.reshape(-1),
            }
        }


def nearest_tokens(W_E: torch.Tensor, ids: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `ids`, its `n` nearest others of `ids` by cosine of the `W_E` rows (a copy is
    read; the model's weights are not touched): ([len(ids), n] token ids, [len(ids), n] cosines),
    nearest first. Fewer than n columns when fewer other tokens exist."""
    ids = ids.to(W_E.device)
    rows, cosines = nearest_rows(W_E.detach().index_select(0, ids), n, CHUNK)
    return ids[rows].cpu().numpy().astype(np.int32), cosines.cpu().numpy().astype(np.float32)
