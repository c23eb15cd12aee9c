"""PIL <-> tensor conversion at the edges of the models (models only see float tensors in [-1, 1])."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arvision.errors import InputError


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """Open an image file (or take a PIL image, or an ``[H, W]`` / ``[H, W, 3]`` uint8 array) as RGB, with
    errors that name the file."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] not in (3, 4))
        ):
            raise InputError(f"an image array must be uint8 [H, W] or [H, W, 3|4], got {source.dtype} {source.shape}")
        return Image.fromarray(source).convert("RGB")
    if not isinstance(source, str | os.PathLike):
        raise InputError(f"an image is a file path, a PIL image or a uint8 array, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Image.DecompressionBombError as exc:  # not an OSError: PIL's guard against a huge declared size
        raise InputError(f"image too large to decode safely: {path} ({exc})") from exc
    # Besides OSError (truncated or unidentified data), PIL's decoders raise SyntaxError and ValueError on
    # malformed headers.
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"not a readable image: {path} ({exc})") from exc


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) and crop the centre square."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """RGB image(s) -> float tensor ``[B, 3, H, W]`` in [-1, 1]."""
    images = [images] if isinstance(images, Image.Image) else images
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] -> RGB PIL images (values truncated to uint8, as the official code does)."""
    array = ((images.detach().float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
    return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile equally sized images row by row into one image."""
    if not images:
        raise InputError("no images to tile")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    return grid
