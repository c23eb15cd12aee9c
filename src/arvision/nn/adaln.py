"""Adaptive layer-norm helpers (DiT/VAR style): a SiLU-Linear table producing per-sample modulation."""

from __future__ import annotations

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def ada_linear(cond_dim: int, dim: int, chunks: int) -> nn.Sequential:
    """SiLU -> Linear(cond_dim, chunks*dim); index 1 holds the weights (``ada_lin.1.*`` in checkpoints)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, chunks * dim))
