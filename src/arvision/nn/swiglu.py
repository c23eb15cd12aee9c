"""SwiGLU feed-forward (Llama): ``down(silu(gate(x)) * up(x))``, no biases."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Llama/VAR hidden size: 2/3 of ``dim*mlp_ratio``, rounded up to a multiple of 256."""
    return int(dim * mlp_ratio * 2 / 3 + 255) // 256 * 256


class SwiGLU(nn.Module):
    """[..., dim] -> [..., dim] with hidden size ``hidden``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
