"""Multi-scale residual vector quantizer (VAR's scheme, with HART's hybrid last scale).

A latent ``f`` of shape ``[B, C, H, W]`` (H == W == last scale) is quantized coarse to fine. For each
scale ``si`` with grid ``pn``: area-downsample the remaining residual to ``pn x pn``, pick the nearest
codebook entry per cell (squared L2), bicubic-upsample the chosen codes back to ``H x W``, refine them
with a shared 3x3 conv ``phi`` and subtract them from the residual. What the discrete scales cannot
represent is HART's continuous residual.

Three code paths differ only on the last scale (reference hart.md section 3.4):

* decoder training (``forward`` / :meth:`latent_to_fhats`): ``phi`` on every scale, the last included;
* AR training targets (:meth:`latent_to_indices`): the residual *before* the last scale, no ``phi`` on it;
* inference assembly (:meth:`indices_to_latent`, :meth:`next_ar_input`): no ``phi`` on the last scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Phi(nn.Conv2d):
    """``phi(h) = (1 - r) * h + r * conv3x3(h)``, shape preserving ``[B, C, H, W]``."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


def phi_ticks(num_phi: int) -> np.ndarray:
    """Positions in [0, 1] that the shared convs sit at (float64, as the official code computes them)."""
    margin = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    return np.linspace(margin, 1 - margin, num_phi)


class PhiBank(nn.Module):
    """``num_phi`` convs shared across scales: scale ``si`` of ``SN`` uses the one nearest ``si / (SN - 1)``."""

    def __init__(self, channels: int, ratio: float, num_phi: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(channels, ratio) for _ in range(num_phi)])
        self.ticks = phi_ticks(num_phi)

    def index(self, si: int, num_scales: int) -> int:
        # float64 numpy arithmetic on purpose: it decides exact ties the way the checkpoint was trained.
        return int(np.argmin(np.abs(self.ticks - si / (num_scales - 1))))

    def forward(self, h: torch.Tensor, si: int, num_scales: int) -> torch.Tensor:
        return self.qresi_ls[self.index(si, num_scales)](h)


@dataclass
class QuantizerOutput:
    """Decoder-training output: the latent the decoder sees, the VQ loss and per-scale indices."""

    latent: torch.Tensor
    vq_loss: torch.Tensor
    indices: list[torch.Tensor]


class MultiScaleQuantizer(nn.Module):
    """Residual quantizer over a ``vocab_size x channels`` codebook with a shared ``phi`` bank.

    Indices are ``[B, pn * pn]`` int64 tensors in row-major order, one per scale.
    """

    def __init__(
        self,
        vocab_size: int,
        channels: int,
        *,
        beta: float = 0.25,
        quant_resi: float = 0.5,
        num_phi: int = 4,
        num_tracked_scales: int = 14,
        using_znorm: bool = False,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.channels = channels
        self.beta = beta
        self.using_znorm = using_znorm
        self.embedding = nn.Embedding(vocab_size, channels)
        self.quant_resi = PhiBank(channels, quant_resi, num_phi)
        # EMA of per-scale code hits, for codebook-usage monitoring during training.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(num_tracked_scales, vocab_size))

    # -- primitives ---------------------------------------------------------------------------------
    def phi_index(self, si: int, num_scales: int) -> int:
        return self.quant_resi.index(si, num_scales)

    def apply_phi(self, h: torch.Tensor, si: int, num_scales: int) -> torch.Tensor:
        return self.quant_resi(h, si, num_scales)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index nearest to each row of ``z`` ``[N, C]`` -> ``[N]``."""
        # fp32 as in the official code: reduced-precision distances change which code wins.
        z, codebook = z.float(), self.embedding.weight.float()
        if self.using_znorm:
            return (F.normalize(z, dim=1) @ F.normalize(codebook, dim=1).T).argmax(dim=1)
        dist = z.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1)
        dist.addmm_(z, codebook.T, alpha=-2, beta=1)
        return dist.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, pn * pn]`` indices -> code vectors ``[B, C, pn, pn]``."""
        b, n = indices.shape
        pn = int(round(n**0.5))
        return self.embedding(indices).transpose(1, 2).reshape(b, self.channels, pn, pn)

    # -- encoding -----------------------------------------------------------------------------------
    def _residual_quantize(
        self, f: torch.Tensor, patch_nums: Sequence[int], phi_on_last: bool, rests: list | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Returns (indices per scale, cumulative f_hat per scale, residual before the last scale).
        ``rests``, when given, collects the ``[N, C]`` vectors quantized at each scale."""
        b, c, h, w = f.shape
        num_scales = len(patch_nums)
        f_rest = f.detach()
        f_hat = torch.zeros_like(f_rest)
        indices, f_hats = [], []
        rest_before_last = f_rest
        for si, pn in enumerate(patch_nums):
            last = si == num_scales - 1
            rest = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")
            vectors = rest.permute(0, 2, 3, 1).reshape(-1, c)
            if rests is not None:
                rests.append(vectors)
            idx = self.nearest(vectors).view(b, pn * pn)
            codes = self.lookup(idx)
            if last:
                rest_before_last = f_rest
            else:
                codes = F.interpolate(codes, size=(h, w), mode="bicubic")
            if not last or phi_on_last:
                codes = self.apply_phi(codes, si, num_scales)
            f_hat = f_hat + codes
            f_rest = f_rest - codes.detach()
            indices.append(idx)
            f_hats.append(f_hat)
        return indices, f_hats, rest_before_last

    @torch.no_grad()
    def latent_to_indices(self, f: torch.Tensor, patch_nums: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latent ``[B, C, H, W]`` -> (indices per scale, residual before the last scale ``[B, C, H, W]``).

        The residual is HART's AR-training target ``r_pre = f - sum_{k < K-1} phi_k(up(e[idx_k]))``.
        """
        indices, _, r_pre = self._residual_quantize(f, patch_nums, phi_on_last=False)
        return indices, r_pre

    @torch.no_grad()
    def latent_to_fhats(self, f: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
        """Cumulative discrete latents after each scale, ``phi`` on every scale (VAR/decoder-training path)."""
        return self._residual_quantize(f, patch_nums, phi_on_last=True)[1]

    def forward(
        self, f: torch.Tensor, patch_nums: Sequence[int], continuous: bool, restart_below: float = 0.0
    ) -> QuantizerOutput:
        """Decoder-training pass: ``continuous`` feeds the decoder ``f`` itself (discrete + residual),
        otherwise the discrete sum with a straight-through gradient to the encoder.

        In training mode, ``restart_below > 0`` moves every code hit less than that fraction of a uniform
        share (usage EMA) onto a random vector quantized in this batch: a from-scratch codebook otherwise
        collapses onto a handful of codes (observed: 10 of 512 in use on the procedural world).
        """
        restart = self.training and restart_below > 0
        rests: list[torch.Tensor] | None = [] if restart else None
        indices, f_hats, _ = self._residual_quantize(f, patch_nums, phi_on_last=True, rests=rests)
        vq_loss = sum(self.beta * F.mse_loss(fh.detach(), f) + F.mse_loss(fh, f.detach()) for fh in f_hats) / len(
            f_hats
        )
        if self.training:
            self._track_usage(indices)
            if restart:
                self._restart_dead_codes(torch.cat(rests), restart_below)
        latent = f if continuous else f_hats[-1].detach() - f.detach() + f
        return QuantizerOutput(latent=latent, vq_loss=vq_loss, indices=indices)

    @torch.no_grad()
    def _track_usage(self, indices: list[torch.Tensor], decay: float = 0.99) -> None:
        if len(indices) != self.ema_vocab_hit_SV.shape[0]:
            return
        hits = torch.stack([torch.bincount(idx.flatten(), minlength=self.vocab_size).float() for idx in indices])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(hits)  # identical statistics on every rank, so restarts pick the same codes
        first = self.ema_vocab_hit_SV.sum() == 0
        self.ema_vocab_hit_SV.copy_(hits if first else self.ema_vocab_hit_SV * decay + hits * (1 - decay))

    @torch.no_grad()
    def _restart_dead_codes(self, candidates: torch.Tensor, below: float) -> None:
        hits = self.ema_vocab_hit_SV.sum(dim=0)
        dead = (hits < below * hits.sum() / self.vocab_size).nonzero().flatten()
        if hits.sum() == 0 or dead.numel() == 0:
            return
        picks = torch.randint(len(candidates), (dead.numel(),), device=candidates.device)
        fresh = candidates[picks].to(self.embedding.weight.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(fresh, 0)
        self.embedding.weight[dead] = fresh
        # A grace period: a restarted code counts as used at a uniform share until the EMA says otherwise.
        self.ema_vocab_hit_SV[:, dead] = self.ema_vocab_hit_SV.sum(dim=1, keepdim=True) / self.vocab_size

    @torch.no_grad()
    def codebook_usage(self, threshold: float = 0.08) -> float:
        """Fraction of codes hit at least ``threshold`` x a uniform share (EMA over training steps)."""
        hits = self.ema_vocab_hit_SV.sum(dim=0)
        if hits.sum() == 0:
            return 0.0
        return (hits >= threshold * hits.sum() / self.vocab_size).float().mean().item()

    # -- decoding / AR assembly -----------------------------------------------------------------------
    def next_ar_input(
        self, si: int, patch_nums: Sequence[int], f_hat: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale ``si``'s codes ``[B, C, pn, pn]`` to ``f_hat`` ``[B, C, H, W]``.

        Returns ``(f_hat, next_map)``; ``next_map`` is ``f_hat`` area-downsampled to the next scale
        (the next AR step's input), or ``f_hat`` itself after the last scale, which gets no ``phi``.
        """
        num_scales = len(patch_nums)
        side = patch_nums[-1]
        if si == num_scales - 1:
            f_hat = f_hat + codes
            return f_hat, f_hat
        up = F.interpolate(codes, size=(side, side), mode="bicubic")
        f_hat = f_hat + self.apply_phi(up, si, num_scales)
        nxt = patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")

    def indices_to_latent(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int]) -> torch.Tensor:
        """Discrete latent of the hybrid inference path ``[B, C, H, W]`` (no ``phi`` on the last scale)."""
        b, side = indices[0].shape[0], patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(b, self.channels, side, side)
        for si, idx in enumerate(indices):
            f_hat, _ = self.next_ar_input(si, patch_nums, f_hat, self.lookup(idx))
        return f_hat

    def indices_to_ar_input(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int]) -> torch.Tensor:
        """Teacher-forcing input of the AR transformer: ``[B, sum_{s>=1} pn_s^2, C]``.

        Entry ``s - 1`` holds the running latent of scales ``< s`` area-downsampled to ``pn_s``.
        """
        b, side = indices[0].shape[0], patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(b, self.channels, side, side)
        maps = []
        for si in range(len(patch_nums) - 1):
            f_hat, nxt = self.next_ar_input(si, patch_nums, f_hat, self.lookup(indices[si]))
            maps.append(nxt.flatten(2).transpose(1, 2))
        return torch.cat(maps, dim=1)
