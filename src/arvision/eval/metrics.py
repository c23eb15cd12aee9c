"""Full-reference image metrics on float tensors ``[B, C, H, W]``, and the uncertainty of a measured rate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arvision.errors import InputError


def psnr(images: torch.Tensor, targets: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image ``[B]`` (``data_range`` 2 for [-1, 1] images); ``inf`` for
    an image identical to its target, as in scikit-image."""
    mse = (images.float() - targets.float()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    images: torch.Tensor, targets: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity per image ``[B]`` (Wang et al. 2004: Gaussian window, K1=0.01, K2=0.03),
    averaged over channels and valid (unpadded) window positions. Like scikit-image, it refuses images
    smaller than the window (``window`` pixels a side) rather than shrink it, which would change the metric."""
    h, w = images.shape[-2:]
    if min(h, w) < window:
        raise InputError(f"SSIM needs images of at least {window}x{window} pixels (its window), got {h}x{w}")
    x, y = images.double(), targets.double()
    channels = x.shape[1]
    g = _gaussian_window(window, sigma).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(dim=1).float()


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (95% for ``z`` 1.96): where the true accuracy of a model
    plausibly lies when ``successes`` of ``trials`` items were right. Honest at small counts and near 0 or 1,
    where the normal approximation is not."""
    if trials < 1 or not 0 <= successes <= trials:
        raise InputError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    rate, spread = successes / trials, z * z / trials
    centre = (rate + spread / 2) / (1 + spread)
    half = z * math.sqrt(rate * (1 - rate) / trials + spread / (4 * trials)) / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)
