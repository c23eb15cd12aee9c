"""Sinusoidal timestep embedding ([cos, sin] order, as in GLIDE/DiT) followed by a two-layer MLP."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[N] (possibly fractional) timesteps -> [N, dim] fp32 features ``[cos(t f_i), sin(t f_i)]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    if dim % 2:
        emb = torch.cat((emb, torch.zeros_like(emb[:, :1])), dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """[N] timesteps -> [N, hidden]: sinusoid(256) -> Linear -> SiLU -> Linear. HART also embeds the
    scale index ("level") of each token with it."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_sinusoid(t, self.frequency_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))
