"""PIL <-> tensor conversion at the edges of the models (models only see float tensors in [-1, 1])."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arvision.errors import InputError

# PIL modes whose pixels lie beyond 0..255: PIL's own convert("RGB") clamps them (a 16-bit ramp turns white).
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` with pixels PIL keeps in 0..255: integer modes wider than 8 bits (I;16*, and I, which 16-bit
    PGM files and older Pillows' 16-bit PNGs decode to) must hold 16-bit values, 0..65535, and keep their top
    8 bits (as OpenCV and scikit-image reduce 16-bit images). Float images (F) in [0, 1] (scikit-image's and
    torchvision's float range) are scaled by 255; ones with values above 1 are read in PIL's own float
    convention, 0..255. Both become greyscale (L); other modes are returned as they are. Values outside those
    ranges (or NaN) have no agreed meaning and are refused (``name`` names the image in the error)."""
    if image.mode == "F":
        values = np.asarray(image)
        if not np.all((values >= 0) & (values <= 255)):  # NaN fails both comparisons
            raise InputError(f"{name}: float pixels must lie in [0, 1] or 0..255, got {values.min()}..{values.max()}")
        scale = 255 if values.max(initial=0) <= 1 else 1
        return Image.fromarray(np.round(values * scale).astype(np.uint8))
    if image.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image).astype(np.int64)
        if not np.all((values >= 0) & (values <= 65535)):
            raise InputError(
                f"{name}: integer pixels must lie in 0..65535 (16 bit), got {values.min()}..{values.max()}"
            )
        return Image.fromarray((values >> 8).astype(np.uint8))
    return image


def _to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` as 8-bit RGB, wide modes reduced by :func:`to_8bit` first."""
    image = to_8bit(image, name)
    try:
        return image.convert("RGB")
    except ValueError as exc:  # a mode PIL cannot convert (La)
        raise InputError(f"{name}: cannot convert PIL mode {image.mode} to RGB ({exc})") from exc


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """Open an image file (or take a PIL image, or an ``[H, W]`` / ``[H, W, 3]`` uint8 array) as RGB, with
    errors that name the file; 16-bit, 32-bit and float images are reduced to 8 bits by :func:`_to_rgb`."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
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
    return _to_rgb(open_image(source), str(source))


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file in its stored mode (palette, 16-bit, RGBA kept), with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
    except Image.DecompressionBombError as exc:  # not an OSError: PIL's guard against a huge declared size
        raise InputError(f"image too large to decode safely: {path} ({exc})") from exc
    # Besides OSError (truncated or unidentified data), PIL's decoders raise SyntaxError and ValueError on
    # malformed headers.
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"not a readable image: {path} ({exc})") from exc
    return img


# Beyond this many output squares in the resized image (its aspect ratio), only the centre square is resized.
_FULL_RESIZE_ASPECT = 16


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) and crop the centre square."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if max(new_w, new_h) > _FULL_RESIZE_ASPECT * size:
        # Resizing all of a 1x30000 strip to 256 wide would take ~10 GB (an OOM kill, not a skippable error), so
        # resize only the source box that becomes the centre square. PIL may then run its two passes in the
        # other order, a few levels off the full resize: normal images keep the full resize's exact pixels.
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return image.resize((size, size), Image.BICUBIC, box=box)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """Image(s) of any mode (read as by :func:`load_image`) -> float tensor ``[B, 3, H, W]`` in [-1, 1]."""
    images = [images] if isinstance(images, Image.Image) else images
    arrays = [np.asarray(_to_rgb(img), dtype=np.float32) for img in images]
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
