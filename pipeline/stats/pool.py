"""A per-neuron top list over a stream: the R largest keys of each neuron, kept exactly.

Candidates are offered as flat (neuron, key[, payload]) arrays and parked in a pending pool;
the pool is compacted (one padded `topk` over int64 keys, which are unique, so the result is
exact and order-independent) only when it has grown past the size of the kept lists. Offers
are filtered by the threshold of the last compaction, so after the first few batches only a
handful of candidates per neuron arrive and compactions happen O(log tokens) times: the cost
per batch is one comparison and one `nonzero` over the activations, not a sort.

Keys come from `keys.encode_top`. Payloads (context activations) travel with their keys.
"""

from __future__ import annotations

import torch

from pipeline.stats.keys import KEY_EMPTY, value_threshold


class TopPool:
    def __init__(self, n_neurons: int, capacity: int, payload_width: int = 0, device: str | torch.device = "cpu",
                 payload_dtype: torch.dtype = torch.float16):
        self.n_neurons = n_neurons
        self.capacity = capacity
        self.payload_width = payload_width
        self.keys = torch.full((n_neurons, capacity), KEY_EMPTY, dtype=torch.int64, device=device)
        self.payload = (
            torch.zeros((n_neurons, capacity, payload_width), dtype=payload_dtype, device=device)
            if payload_width
            else None
        )
        self.threshold = torch.full((n_neurons,), float("-inf"), device=device)
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._n_pending = 0

    def offer(self, neurons: torch.Tensor, keys: torch.Tensor, payload: torch.Tensor | None = None) -> None:
        """Park candidates; compact when the pool has grown past the kept lists."""
        if neurons.numel() == 0:
            return
        if self.payload is not None:
            assert payload is not None and payload.shape == (neurons.numel(), self.payload_width)
            payload = payload.to(self.payload.dtype)
        self._pending.append((neurons, keys, payload))
        self._n_pending += neurons.numel()
        if self._n_pending >= self.keys.numel():
            self.compact()

    def compact(self) -> None:
        """Fold the pending candidates into the kept lists (exact top-R per neuron)."""
        if not self._pending:
            return
        neurons = torch.cat([p[0] for p in self._pending])
        keys = torch.cat([p[1] for p in self._pending])
        payload = torch.cat([p[2] for p in self._pending]) if self.payload is not None else None
        self._pending, self._n_pending = [], 0

        # Lay the candidates out as a padded [neuron, slot] matrix: group by neuron (stable), then
        # number the candidates inside each group.
        order = torch.argsort(neurons, stable=True)
        neurons, keys = neurons[order], keys[order]
        counts = torch.bincount(neurons, minlength=self.n_neurons)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(neurons.numel(), device=neurons.device) - starts[neurons]
        width = int(counts.max())
        padded = torch.full((self.n_neurons, width), KEY_EMPTY, dtype=torch.int64, device=keys.device)
        padded[neurons, slot] = keys

        both = torch.cat([self.keys, padded], dim=1)
        self.keys, pick = both.topk(self.capacity, dim=1)  # keys are unique: exact
        if self.payload is not None:
            assert payload is not None
            pad_payload = torch.zeros(
                (self.n_neurons, width, self.payload_width), dtype=self.payload.dtype, device=keys.device
            )
            pad_payload[neurons, slot] = payload[order]
            both_payload = torch.cat([self.payload, pad_payload], dim=1)
            self.payload = torch.gather(
                both_payload, 1, pick.unsqueeze(-1).expand(-1, -1, self.payload_width)
            )
        self.threshold = value_threshold(self.keys[:, -1])

    def merge_dense(self, keys: torch.Tensor, payload: torch.Tensor | None = None) -> None:
        """Fold one batch's candidates, a fixed number per neuron, into the kept lists at once:
        keys [n_neurons, w] (KEY_EMPTY where none), payload [n_neurons, w, payload_width]. One
        `topk` over the kept and the new keys, no host sync (see `sync.py`); exact, as
        `compact` (real keys are unique)."""
        self.compact()  # sparse offers parked before, if any
        self.keys, pick = torch.cat([self.keys, keys], dim=1).topk(self.capacity, dim=1)
        if self.payload is not None:
            assert payload is not None and payload.shape == (*keys.shape, self.payload_width)
            both = torch.cat([self.payload, payload.to(self.payload.dtype)], dim=1)
            self.payload = both.gather(1, pick.unsqueeze(-1).expand(-1, -1, self.payload_width))
        self.threshold = value_threshold(self.keys[:, -1])

    def merge(self, other) -> None:
        """Fold another top list (another shard's; a `TopPool` or a `heap.HeapTop`) into this one."""
        state = other.state_dict()
        keys = state["keys"].to(self.keys.device)
        n = torch.arange(self.n_neurons, device=keys.device).repeat_interleave(keys.shape[1])
        keys = keys.reshape(-1)
        keep = keys != KEY_EMPTY
        payload = (state["payload"].to(keys.device).reshape(-1, self.payload_width)[keep]
                   if self.payload is not None else None)
        self.offer(n[keep], keys[keep], payload)
        self.compact()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.compact()
        state = {"keys": self.keys}
        if self.payload is not None:
            state["payload"] = self.payload
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._pending, self._n_pending = [], 0
        self.keys = state["keys"].to(self.keys.device)
        if self.payload is not None:
            self.payload = state["payload"].to(self.payload.device)
        self.threshold = value_threshold(self.keys[:, -1])
