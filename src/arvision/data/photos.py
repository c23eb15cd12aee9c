"""Random crops of the photos bundled with scikit-image: a small real-image set that needs no download.

Every item is a deterministic function of ``(seed, index)``, so data order and content survive resumes
and sharding. The astronaut photo is held out by default: it is the reconstruction benchmark.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from arvision.errors import InputError
from arvision.imaging import pil_to_tensor

PHOTO_NAMES = [
    "camera",
    "brick",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "cell",
    "astronaut",
]


@cache
def bundled_photo(name: str) -> Image.Image:
    """One scikit-image sample as an 8-bit RGB PIL image."""
    try:
        from skimage import data
    except ModuleNotFoundError as exc:
        raise InputError("the bundled photos come from scikit-image: pip install 'arvision[train]'") from exc

    array = getattr(data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = (255 * (array.astype(np.float64) / max(float(array.max()), 1.0))).astype(np.uint8)
    return Image.fromarray(array)


class BundledPhotoCrops(Dataset):
    """``length`` random square crops (random scale, flip) -> ``[3, resolution, resolution]`` in [-1, 1]."""

    def __init__(self, resolution: int, length: int = 100_000, seed: int = 0, exclude: Sequence[str] = ("astronaut",)):
        self.names = [n for n in PHOTO_NAMES if n not in set(exclude)]
        self.resolution, self.length, self.seed = resolution, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = random.Random(self.seed * 1_000_003 + index)
        photo = bundled_photo(rng.choice(self.names))
        size = self.resolution
        shorter = min(photo.size)
        scale = rng.uniform(size / shorter, 1.0) if shorter > size else size / shorter
        w, h = max(size, round(photo.width * scale)), max(size, round(photo.height * scale))
        photo = photo.resize((w, h), Image.BICUBIC)
        left, top = rng.randint(0, w - size), rng.randint(0, h - size)
        crop = photo.crop((left, top, left + size, top + size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_tensor(crop)[0]
