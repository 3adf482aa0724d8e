"""Column values that need the corpus's tokens, resolved by the build after the harvest.

The harvest sees token ids only batch by batch and keeps none of them; the build re-reads the
corpus once at the end (`pipeline/corpus_tables.py`) and resolves every request of every table
on the way, whatever statistic made it:
- `TokenWindows(starts, width)`: per row, the texts of the tokens at flat corpus positions
  start .. start + width - 1 (a list<string> column; never crossing a corpus window); with
  `merged=True`, those texts as shown (`example_windows.merge_fragments`), null for rows that
  hold no byte-level fragment;
- `TokenIdsAt(positions)`: the token id at each flat position (any shape), -1 where the position
  is -1, a BOS, or outside the windows read.
A flat position is `seq_id * seq_len + pos`. Both are row-aligned with their table and follow
its rows when the build sorts them (`take`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenWindows:
    starts: np.ndarray  # [rows] int64
    width: int
    # resolve to the texts *as shown*: null for a row without byte-level fragments, else each
    # character split over several tokens whole on the token that completes it (`merge_fragments`)
    merged: bool = False

    def take(self, order: np.ndarray) -> TokenWindows:
        return TokenWindows(np.asarray(self.starts)[order], self.width, self.merged)

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(frozen=True)
class TokenIdsAt:
    positions: np.ndarray  # [rows, ...] int64, -1 for none

    def take(self, order: np.ndarray) -> TokenIdsAt:
        return TokenIdsAt(np.asarray(self.positions)[order])

    def __len__(self) -> int:
        return len(self.positions)


DEFERRED = (TokenWindows, TokenIdsAt)
