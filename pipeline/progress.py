"""The build's progress bar: tokens done, tokens/s and ETA, on stderr."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total_tokens: int | None, done_tokens: int = 0, enabled: bool = True):
        self._bar = tqdm(
            total=total_tokens,
            initial=done_tokens,
            unit="tok",
            unit_scale=True,
            dynamic_ncols=True,
            smoothing=0.02,  # the ETA follows the build's average speed, not the last few batches'
            file=sys.stderr,
            disable=not enabled,
            desc="harvest",
        )

    def update(self, n_tokens: int) -> None:
        self._bar.update(n_tokens)

    def close(self) -> None:
        self._bar.close()
