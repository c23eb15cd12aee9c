"""A programmatic checker for images of the procedural world: which coloured shapes does an image show?

Objects are the saturated pixels (the world's backgrounds are neutral), labelled by the nearest palette
colour and grouped into connected regions; each region's shape follows from its geometry: a hole makes a
ring, a non-convex outline a star, a full box with filled corners a square, a box filled to about pi/4 a
circle, and a half-filled box a triangle. A region counts only if enough of its pixels are close to its
palette colour: the anti-aliased edge where two objects meet, or an object meets the background, is
saturated in in-between colours and would otherwise read as a small object of a third colour. Objects
clipped by the image border, or touching another object of the same colour, may be misread (the outline is
not theirs). It needs scikit-image (``pip install 'arvision[train]'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from arvision.data.scenes import COLOURS, SceneGraph
from arvision.errors import InputError
from arvision.imaging import load_image

PALETTE_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[name] for name in PALETTE_NAMES], dtype=np.float32)
# RGB distance within which a pixel is its palette colour rather than a blend at an edge (the closest palette
# colours, orange and yellow, are 78 apart). Measured at 60: phantom objects in 300 four-object val scenes
# fell from 17 to 2 at 64 px (139 to 77 at 32 px), and none of the 120 single-object reference renders at
# 32, 64 or 128 px is read differently.
PALETTE_TOLERANCE = 60.0


@dataclass(frozen=True)
class DetectedObject:
    """An object read off an image: its palette colour, its shape, its area in pixels, and its centroid."""

    colour: str
    shape: str
    area: int
    centre: tuple[float, float]  # (x, y) as fractions of the image side


def classify_shape(extent: float, solidity: float, euler_number: int, corner_fill: float) -> str:
    """Shape from region geometry: ``extent`` = area / bbox area, ``solidity`` = area / convex-hull area,
    ``corner_fill`` = filled fraction of the bbox's corner patches (small circles and squares overlap in
    extent, never in corners: measured on rendered scenes, circles <= 0.13, squares >= 0.43)."""
    if euler_number <= 0:
        return "ring"
    if solidity < 0.8:
        return "star"
    if extent > 0.8 and corner_fill >= 0.3:
        return "square"
    if extent > 0.66:
        return "circle"
    return "triangle"


def corner_fill(mask: np.ndarray) -> float:
    """Mean fill of the four corner patches (side 15% of the box, at least 2 px) of a cropped mask."""
    k = max(2, round(0.15 * min(mask.shape)))
    return float(np.mean([mask[:k, :k].mean(), mask[:k, -k:].mean(), mask[-k:, :k].mean(), mask[-k:, -k:].mean()]))


def _opaque(image: Image.Image) -> bool:
    """Whether every pixel of ``image`` is fully opaque (alpha band or transparency key)."""
    if "transparency" in image.info:  # a palette or single-colour transparency key
        image = image.convert("RGBA")
    alpha = image.getbands()[-1]
    return alpha not in ("A", "a") or image.getchannel(alpha).getextrema()[0] == 255


def _rgb_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """An opaque PIL image (any mode, read as RGB) or an ``[H, W, 3]`` uint8 array -> float pixels
    ``[H, W, 3]`` in 0..255; anything else is an InputError naming the expected form."""
    if isinstance(image, Image.Image):
        if not _opaque(image):  # its transparent pixels would be read by their hidden colour
            raise InputError(f"the shape checker reads opaque images; this {image.mode} image has transparent pixels")
        rgb = np.asarray(load_image(image))
    elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        rgb = image
    else:
        got = f"a {image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"the shape checker takes a PIL image or an [H, W, 3] uint8 array (0..255), got {got}")
    if not rgb.shape[0] or not rgb.shape[1]:
        raise InputError(f"the shape checker needs a non-empty image, got {rgb.shape[1]}x{rgb.shape[0]} pixels")
    return rgb.astype(np.float32)


def detect_objects(image: Image.Image | np.ndarray, min_fraction: float = 0.004) -> list[DetectedObject]:
    """Coloured objects in ``image`` (an opaque PIL image of any mode, read as RGB, or an ``[H, W, 3]`` uint8
    array; anything else is an InputError), largest first. Regions under ``min_fraction`` of the image, or
    with fewer pixels than that within ``PALETTE_TOLERANCE`` of their palette colour, are noise."""
    try:
        from skimage.measure import label, regionprops
    except ModuleNotFoundError as exc:
        raise InputError("the shape checker needs scikit-image: pip install 'arvision[train]'") from exc
    rgb = _rgb_pixels(image)
    saturated = rgb.max(axis=-1) - rgb.min(axis=-1) > 60
    distance = np.linalg.norm(rgb[..., None, :] - PALETTE, axis=-1)
    nearest = distance.argmin(axis=-1)
    # Only the count of close pixels is gated: the region keeps its edge pixels, which draw its outline.
    close = distance.min(axis=-1) < PALETTE_TOLERANCE
    h, w = saturated.shape
    min_area = min_fraction * h * w
    found = []
    for index, name in enumerate(PALETTE_NAMES):
        for region in regionprops(label(saturated & (nearest == index), connectivity=2)):
            if region.area < min_area or close[region.slice][region.image].sum() < min_area:
                continue
            shape = classify_shape(region.extent, region.solidity, region.euler_number, corner_fill(region.image))
            cy, cx = region.centroid
            found.append(DetectedObject(name, shape, int(region.area), ((cx + 0.5) / w, (cy + 0.5) / h)))
    return sorted(found, key=lambda o: -o.area)


def main_object(image: Image.Image | np.ndarray) -> DetectedObject | None:
    """The largest coloured object, or None if the image shows none."""
    objects = detect_objects(image)
    return objects[0] if objects else None


def single_object_targets(graphs: Iterable[SceneGraph]) -> list[tuple[str, str]]:
    """The (colour, shape) of each single-object scene, the targets :func:`single_object_accuracy` takes."""
    return [(graph.objects[0].colour, graph.objects[0].shape) for graph in graphs]


def single_object_accuracy(images: Sequence[Image.Image], targets: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Fraction of images whose largest object has the target colour, shape, and both."""
    if len(images) != len(targets) or not images:
        raise InputError("need one (colour, shape) target per image, and at least one image")
    return detection_accuracy([main_object(image) for image in images], targets)


def detection_accuracy(
    detected: Sequence[DetectedObject | None], targets: Sequence[tuple[str, str]]
) -> dict[str, float]:
    """:func:`single_object_accuracy` of objects already read back (None: nothing found)."""
    colour = [d is not None and d.colour == c for d, (c, _) in zip(detected, targets)]
    shape = [d is not None and d.shape == s for d, (_, s) in zip(detected, targets)]
    return {
        "colour": float(np.mean(colour)),
        "shape": float(np.mean(shape)),
        "both": float(np.mean([a and b for a, b in zip(colour, shape)])),
    }
