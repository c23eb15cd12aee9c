"""Rotary position embeddings: 1-D (Llama) and HART's 2-D variant on resolution-normalised grids.

Both return ``(cos, sin)`` of shape ``[B, L, head_dim]`` to be applied with :func:`apply_rope`, which
pairs element ``m`` with ``m + head_dim/2`` (Llama's ``rotate_half``).

HART's 2-D layout is ``[row, row, col, col]`` (blocks of ``head_dim/4``) with frequencies
``theta^(-4j/d)``. Combined with ``rotate_half`` this pairs a "row" element with a "column" element,
each rotated by its own angle: not a textbook axial RoPE, but what the released checkpoint was
trained with, so it is reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, L, d] with ``cos``/``sin`` [B, L, d]."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def rope_1d(position_ids: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard 1-D RoPE for integer positions [B, L] -> cos, sin [B, L, head_dim]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rope_2d(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """HART 2-D RoPE for float (row, col) positions [B, L, 2] -> cos, sin [B, L, head_dim]."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 4, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, L, 2, d/4]
    emb = torch.cat((angles, angles), dim=-1).flatten(-2)  # [row, row, col, col]
    return emb.cos(), emb.sin()


def grid_positions(patch_nums: Sequence[int], final: int, device: torch.device | None = None) -> torch.Tensor:
    """Top-left-aligned (row, col) coordinates of every token of the given scales, on the ``final``
    grid: token (i, j) of a pn x pn map sits at (i/pn*final, j/pn*final). Returns [sum pn^2, 2] fp32."""
    coords = []
    for pn in patch_nums:
        axis = torch.arange(pn, device=device) / pn * final
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        coords.append(torch.stack((rows, cols), dim=-1).reshape(-1, 2))
    return torch.cat(coords, dim=0) if coords else torch.zeros(0, 2, device=device)
