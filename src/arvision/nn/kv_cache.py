"""Key/value cache for incremental attention: one growing [B, H, L, d] pair per layer."""

from __future__ import annotations

import torch


class KVCache:
    """Holds the keys and values each attention layer has seen so far.

    ``update(layer, k, v)`` appends the new [B, H, l, d] keys/values along the sequence and returns
    everything cached for that layer, so a chunk attends to all earlier chunks plus itself.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat((self.keys[layer], k), dim=2)
            v = torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
