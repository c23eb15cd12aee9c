"""Residual vector quantisation (RQ-VAE style) over feature vectors in their native width.

A feature ``x`` is quantised in ``depth`` rounds: round ``d`` picks the codebook row nearest (L2) to the
residual left by rounds ``< d``. The quantised vector is the sum of the picked rows. Codebooks are
trained by exponential moving averages (not by gradient), with restarts of dead codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from arvision.errors import InputError


class VQCodebook(nn.Module):
    """One codebook with EMA statistics.

    ``weight``: [n_embed + 1, dim]; the last row is a zero padding row that lookups never return.
    ``cluster_size_ema``: [n_embed] and ``embed_ema``: [n_embed, dim] (persistent, as in the release).
    """

    def __init__(self, n_embed: int, dim: int, decay: float = 0.99, eps: float = 1e-5, restart_unused: bool = True):
        super().__init__()
        self.n_embed, self.dim = n_embed, dim
        self.decay, self.eps, self.restart_unused = decay, eps, restart_unused
        weight = torch.randn(n_embed + 1, dim)
        weight[-1] = 0.0
        # EMA-trained: never touched by an optimiser.
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("cluster_size_ema", torch.zeros(n_embed))
        self.register_buffer("embed_ema", weight[:-1].clone())

    @torch.no_grad()
    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Squared L2 distances ``|x|^2 + |e|^2 - 2 x.e``: [..., dim] -> [..., n_embed] (padding row excluded).

        ``x`` in another dtype than the codebook (bf16 features, fp32 codebook) is compared in the codebook's.
        """
        codebook = self.weight[:-1]
        flat = x.reshape(-1, self.dim).to(codebook.dtype)
        dist_sq = torch.addmm(
            flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None], flat, codebook.t(), alpha=-2.0
        )
        return dist_sq.reshape(*x.shape[:-1], self.n_embed)

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest row: [..., dim] -> [...] int64."""
        return self.distances(x).argmin(dim=-1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Rows of the codebook: [...] int64 -> [..., dim]."""
        return F.embedding(codes, self.weight)

    @torch.no_grad()
    def ema_update(self, vectors: torch.Tensor, codes: torch.Tensor) -> None:
        """Move the EMA statistics toward the assigned vectors; restart codes whose EMA count fell below 1.

        An empty batch changes nothing; under ``torch.distributed`` an empty rank still joins the collectives
        (contributing no vectors) so that the other ranks do not wait for it.
        """
        vectors = vectors.reshape(-1, self.dim).float()
        codes = codes.reshape(-1)
        distributed = dist.is_available() and dist.is_initialized()
        if not len(vectors) and not distributed:
            return
        one_hot = F.one_hot(codes, self.n_embed).to(vectors.dtype)  # [N, n_embed]
        counts = one_hot.sum(0)
        sums = one_hot.t() @ vectors
        if distributed:
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_ema.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        if self.restart_unused:
            if not len(vectors):  # an empty rank has nothing to restart from (rank 0's rows are broadcast)
                fresh = self.embed_ema.clone()
            else:
                candidates = vectors
                if len(candidates) < self.n_embed:
                    # Too few vectors in the batch: tile them with a little noise so every dead code gets one.
                    repeats = -(-self.n_embed // len(candidates))
                    candidates = candidates.repeat(repeats, 1)
                    candidates = candidates + torch.rand_like(candidates) * (0.01 / self.dim**0.5)
                fresh = candidates[torch.randperm(len(candidates), device=candidates.device)[: self.n_embed]]
            if distributed:
                dist.broadcast(fresh, 0)
            used = (self.cluster_size_ema >= 1).to(vectors.dtype)[:, None]
            self.embed_ema.mul_(used).add_(fresh * (1 - used))
            self.cluster_size_ema.mul_(used[:, 0]).add_(1 - used[:, 0])
        # Laplace-smoothed cluster sizes keep the division finite for empty clusters.
        total = self.cluster_size_ema.sum()
        sizes = total * (self.cluster_size_ema + self.eps) / (total + self.n_embed * self.eps)
        self.weight[:-1] = (self.embed_ema / sizes[:, None]).to(self.weight.dtype)


@dataclass
class QuantizerOutput:
    """``z_q``: [..., dim] straight-through quantised features; ``codes``: [..., depth] int64;
    ``commitment_loss``: scalar, mean over depths of MSE(x, partial sum up to that depth)."""

    z_q: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor


class ResidualQuantizer(nn.Module):
    """Residual VQ with ``depth`` rounds; one codebook per round, or one shared codebook.

    Works per vector: input [..., dim] -> codes [..., depth]. With ``shared=True`` the state dict holds
    ``codebooks.0`` only (the layout the release writes for a shared codebook).
    """

    def __init__(
        self,
        n_embed: int,
        dim: int,
        depth: int,
        shared: bool = False,
        decay: float = 0.99,
        restart_unused: bool = True,
    ):
        super().__init__()
        self.n_embed, self.dim, self.depth, self.shared = n_embed, dim, depth, shared
        count = 1 if shared else depth
        self.codebooks = nn.ModuleList(
            VQCodebook(n_embed, dim, decay, restart_unused=restart_unused) for _ in range(count)
        )

    def codebook(self, d: int) -> VQCodebook:
        return self.codebooks[0 if self.shared else d]

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Features [..., dim] -> codes [..., depth] and z_q [..., dim]; in training mode, EMA codebook updates."""
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise InputError(f"features must be [..., {self.dim}], got {tuple(x.shape)}")
        residual = x.detach().clone()
        total = torch.zeros_like(x)
        partial_sums, codes = [], []
        for d in range(self.depth):
            book = self.codebook(d)
            code = book.nearest(residual)
            quant = book.embed(code)
            if self.training:
                # The release embeds with the pre-update rows, then refreshes the codebook.
                book.ema_update(residual, code)
            residual = residual - quant
            total = total + quant
            partial_sums.append(total)
            codes.append(code)
        if x.numel():
            commitment = torch.stack([(x - p.detach()).pow(2).mean() for p in partial_sums]).mean()
        else:  # an empty batch: nothing to commit (a mean over nothing would be NaN)
            commitment = x.sum()
        z_q = x + (total - x).detach()
        return QuantizerOutput(z_q=z_q, codes=torch.stack(codes, dim=-1), commitment_loss=commitment)

    def check_codes(self, codes: torch.Tensor) -> None:
        """Codes must be integers in ``[0, n_embed)`` (never the padding row), shaped [..., D] with D <= depth."""
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise InputError(f"codes must be integers, got {codes.dtype}")
        if codes.ndim == 0 or not 1 <= codes.shape[-1] <= self.depth:
            raise InputError(f"codes must be [..., D] with 1 <= D <= depth {self.depth}, got {tuple(codes.shape)}")
        if codes.numel():
            low, high = torch.aminmax(codes)
            if bool((low < 0) | (high >= self.n_embed)):  # one device sync
                raise InputError(f"codes must be in [0, {self.n_embed}), got values in [{int(low)}, {int(high)}]")

    def embed_codes(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Per-depth code embeddings: [..., D] integers (D <= depth) -> [..., D, dim].

        ``check=False`` skips :meth:`check_codes` (and its device sync) for codes that are valid by
        construction, such as those a sampling loop has just drawn, one step at a time."""
        if check:
            self.check_codes(codes)
        codes = codes.long()
        return torch.stack([self.codebook(d).embed(codes[..., d]) for d in range(codes.shape[-1])], dim=-2)

    def decode_codes(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Quantised features, the sum of the code embeddings: [..., D] (D <= depth) -> [..., dim]
        (``check`` as in :meth:`embed_codes`)."""
        # A running sum, in depth order, as the release computes it (bitwise the same rounding).
        return self.embed_codes(codes, check).cumsum(dim=-2)[..., -1, :]
