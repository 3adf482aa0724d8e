"""The build's progress on stderr: the harvest's bar (tokens done, tokens/s, ETA), then a line
per phase after it."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

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


class Steps:
    """The build's phases after the harvest, one line each on stderr as it starts ("mechscope:
    [3/9] analysis: head_composition"), with its seconds recorded under its name in `seconds`."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.done = 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, note: str = ""):
        self.done += 1
        if self.enabled:
            print(f"mechscope: [{self.done}/{self.total}] {name}{note}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
