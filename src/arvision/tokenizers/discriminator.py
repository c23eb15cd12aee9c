"""PatchGAN discriminator (pix2pix "NLayer" layout), stored under ``disc.`` in HART's tokenizer checkpoint."""

from __future__ import annotations

import os

import torch
from torch import nn

from arvision import checkpoint

DISCRIMINATOR_PREFIX = "disc."


class PatchDiscriminator(nn.Module):
    """Images ``[B, 3, H, W]`` -> real/fake logits per patch ``[B, 1, h, w]``.

    Keys ``main.{i}`` match the official checkpoint: 4x4 convs, BatchNorm, LeakyReLU(0.2).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def load_discriminator(discriminator: PatchDiscriminator, folder: str | os.PathLike) -> bool:
    """Load the ``disc.`` weights of a tokenizer folder into ``discriminator``, shape-checked.
    Returns False, leaving it as it is, when the folder has none."""
    weights = checkpoint.find_weights_file(folder)
    state = checkpoint.select_prefix(checkpoint.load_state_dict(weights), DISCRIMINATOR_PREFIX)
    if not state:
        return False
    checkpoint.load_checked(discriminator, state, source=f"{weights} ({DISCRIMINATOR_PREFIX}*)")
    return True
