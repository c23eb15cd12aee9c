"""Reconstruction quality of a hybrid tokenizer: PSNR/SSIM of hybrid vs discrete-only decoding, and what
the first scales of its codes carry of an object."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from arvision.eval.metrics import psnr, ssim
from arvision.eval.shapes import single_object_accuracy
from arvision.imaging import pil_to_tensor, tensor_to_pil
from arvision.tokenizers.hart_tokenizer import HybridTokenizer


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: HybridTokenizer, images: torch.Tensor, modes: Sequence[str] = ("hybrid", "discrete")
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over ``images`` ``[B, 3, H, W]`` in [-1, 1] for each decoding mode; the
    tokenizer runs on its own device, the metrics where ``images`` are."""
    device = next(tokenizer.parameters()).device
    results = {}
    for mode in modes:
        recon = tokenizer.reconstruct(images.to(device), mode=mode).to(images.device)
        results[f"{mode}_psnr"] = psnr(recon, images).mean().item()
        results[f"{mode}_ssim"] = ssim(recon, images).mean().item()
    return results


@torch.no_grad()
def readback_by_scales(
    tokenizer: HybridTokenizer, images: Sequence[Image.Image], targets: Sequence[tuple[str, str]]
) -> dict[str, dict[str, float]]:
    """Where in the scale schedule an object's colour and shape are carried: single-object images
    (with their (colour, shape) targets) are decoded from the codes of the first K scales for every K
    (``"scales_K"``) and in hybrid mode (``"hybrid"``), and read back by
    :func:`~arvision.eval.shapes.single_object_accuracy`."""
    encoded = tokenizer.encode(pil_to_tensor(list(images)).to(next(tokenizer.parameters()).device))
    report = {}
    for scales in range(1, len(encoded.patch_nums) + 1):
        decoded = tensor_to_pil(tokenizer.decode_first_scales(encoded, scales))
        report[f"scales_{scales}"] = single_object_accuracy(decoded, targets)
    report["hybrid"] = single_object_accuracy(tensor_to_pil(tokenizer.decode(encoded.latent)), targets)
    return report
