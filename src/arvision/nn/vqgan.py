"""VQGAN-style convolutional encoder and decoder (the LDM "vq-f16" layout used by VAR, HART and RQ-VAE).

Key names follow the taming/LDM convention (``conv_in``, ``down.{level}.block.{i}``, ``mid.attn_1``,
``up.{level}.upsample.conv`` ...), so official checkpoints load by name. ``up`` is indexed by
resolution level: ``up.0`` is the highest resolution, as in the official code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, channels), num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-SiLU-conv3x3 twice, plus a 1x1 shortcut when channels change. [B, Cin, H, W] -> [B, Cout, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1x1 qkv conv. [B, C, H, W] -> [B, C, H, W].

    Checkpoints that store separate ``q``/``k``/``v`` convs are converted by concatenation at load time.
    """

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv on an input padded by one pixel right and bottom (H, W -> H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResBlocks, optional attention after each, optional resampling."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _attn_levels(num_levels: int, attn_levels: Sequence[int] | None) -> set[int]:
    # The official default: attention only at the lowest resolution level.
    return {num_levels - 1} if attn_levels is None else set(attn_levels)


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] -> latent [B, z_channels, H/2^(L-1), W/2^(L-1)], L = len(ch_mult)."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        z_channels: int,
        num_res_blocks: int = 2,
        in_channels: int = 3,
        dropout: float = 0.0,
        attn_levels: Sequence[int] | None = None,
        mid_attention: bool = True,
        groups: int = 32,
    ):
        super().__init__()
        num_levels = len(ch_mult)
        with_attn = _attn_levels(num_levels, attn_levels)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks, attn = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout, groups))
                block_in = block_out
                if level in with_attn:
                    attn.append(AttnBlock(block_in, groups))
            stage = _Level(blocks, attn)
            if level != num_levels - 1:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = _Mid(block_in, dropout, groups, mid_attention)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z_channels, h, w] -> image [B, out_channels, h*2^(L-1), w*2^(L-1)] (not clamped)."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        z_channels: int,
        num_res_blocks: int = 2,
        out_channels: int = 3,
        dropout: float = 0.0,
        attn_levels: Sequence[int] | None = None,
        mid_attention: bool = True,
        groups: int = 32,
    ):
        super().__init__()
        num_levels = len(ch_mult)
        with_attn = _attn_levels(num_levels, attn_levels)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout, groups, mid_attention)
        levels: list[_Level] = []
        for level in reversed(range(num_levels)):
            block_out = ch * ch_mult[level]
            blocks, attn = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout, groups))
                block_in = block_out
                if level in with_attn:
                    attn.append(AttnBlock(block_in, groups))
            stage = _Level(blocks, attn)
            if level != 0:
                stage.upsample = Upsample(block_in)
            levels.insert(0, stage)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
