"""RMSNorm with a learned weight, numerically matching the fused kernels of Llama-style code."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dim. [..., D] -> [..., D].

    The statistics are computed in fp32 and the normalised value is cast back to the input dtype
    before the weight is applied, so half-precision inputs give the same numbers as the fused CUDA
    kernels that HART was trained with.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)
