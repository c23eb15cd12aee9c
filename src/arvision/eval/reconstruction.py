"""Reconstruction quality of a hybrid tokenizer: PSNR/SSIM of hybrid vs discrete-only decoding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from arvision.eval.metrics import psnr, ssim
from arvision.tokenizers.hart_tokenizer import HybridTokenizer


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: HybridTokenizer, images: torch.Tensor, modes: Sequence[str] = ("hybrid", "discrete")
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over ``images`` ``[B, 3, H, W]`` in [-1, 1] for each decoding mode."""
    results = {}
    for mode in modes:
        recon = tokenizer.reconstruct(images, mode=mode)
        results[f"{mode}_psnr"] = psnr(recon, images).mean().item()
        results[f"{mode}_ssim"] = ssim(recon, images).mean().item()
    return results
