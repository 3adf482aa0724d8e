"""Per-neuron top lists kept as min-heaps of keys, updated in place by the native kernel.

The state a `HeapTop` shows the rest of the pipeline (`state_dict`, checkpoints, merging) is the
same as `pool.TopPool`'s: keys sorted descending, payload rows aligned with them. Inside, each
neuron's row of `keys` is a 4-ary min-heap (see native.c) (the root, index 0, is the weakest key kept, so it
is the admission threshold), and payloads stay where they were written: `slot` names the
payload row of each heap entry and moves with it; `row` is the batch row of an entry that
entered during the current batch, so its context can be gathered after the kernel ran.
"""

from __future__ import annotations

import torch

from pipeline.stats.keys import KEY_EMPTY, value_threshold
from pipeline.stats.pool import TopPool


class HeapTop:
    def __init__(self, n_neurons: int, capacity: int, payload_width: int = 0, device: str | torch.device = "cpu",
                 payload_dtype: torch.dtype = torch.float16):
        self.n_neurons, self.capacity, self.payload_width = n_neurons, capacity, payload_width
        self.payload_dtype = payload_dtype
        self.keys = torch.full((n_neurons, capacity), KEY_EMPTY, dtype=torch.int64, device=device)
        self.thr = torch.full((n_neurons,), float("-inf"), device=device)
        self.payload = self.slot = self.row = None  # only lists with a payload track where it is
        if payload_width:
            self.payload = torch.zeros((n_neurons, capacity, payload_width), dtype=payload_dtype, device=device)
            self.slot = torch.arange(capacity, dtype=torch.int32, device=device).repeat(n_neurons, 1)
            self.row = torch.zeros((n_neurons, capacity), dtype=torch.int32, device=device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        keys, order = self.keys.sort(dim=1, descending=True)
        state = {"keys": keys}
        if self.payload is not None:
            slots = self.slot.gather(1, order).long()
            state["payload"] = self.payload.gather(1, slots.unsqueeze(-1).expand(-1, -1, self.payload_width))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.keys.device
        self.keys = state["keys"].to(device).flip(1).contiguous()  # ascending: a valid min-heap
        self.thr = value_threshold(self.keys[:, 0]).contiguous()
        if self.payload is not None:
            self.payload = state["payload"].to(device).flip(1).contiguous()
            self.slot = torch.arange(self.capacity, dtype=torch.int32, device=device).repeat(self.n_neurons, 1)

    def merge(self, other) -> None:
        """Fold another top list (a `HeapTop` or a `TopPool`) into this one."""
        pool = TopPool(self.n_neurons, self.capacity, self.payload_width, self.keys.device, self.payload_dtype)
        pool.load_state_dict(self.state_dict())
        pool.merge(other)
        self.load_state_dict(pool.state_dict())
