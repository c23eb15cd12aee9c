"""Turning a user's PIL image into the square tensor a model trains on, with the official crop policies.

- ``"center"``: shorter side to ``size`` (bicubic), centre square. HART/VAR images.
- ``"resize"``: straight to ``size`` x ``size``, aspect not kept. VILA-U understanding (``"resize"`` aspect mode).
- ``"top"``: top square of a portrait image, centre square of a landscape one, then resize. VILA-U generation data.
"""

from __future__ import annotations

import torch
from PIL import Image

from arvision.data.media import preprocess_image
from arvision.errors import InputError
from arvision.imaging import load_image, pil_to_tensor, resize_center_crop

CROP_POLICIES = ("center", "resize", "top")


def check_policy(policy: str) -> str:
    if policy not in CROP_POLICIES:
        raise InputError(f"unknown crop policy {policy!r}; choose one of {', '.join(CROP_POLICIES)}")
    return policy


def prepare_image(image: Image.Image, size: int, policy: str = "center") -> torch.Tensor:
    """PIL image -> float32 ``[3, size, size]`` in [-1, 1]. No random flips: they would break "left of"."""
    if check_policy(policy) == "center":
        return pil_to_tensor(resize_center_crop(load_image(image), size))[0]  # 16-bit and float modes reduced
    return preprocess_image(image, size, generation_crop=policy == "top")
