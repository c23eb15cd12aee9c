import pytest
import torch
from einops import rearrange

from arvision.errors import InputError
from arvision.eval.feature_probe import COLOUR_NAMES, attribute_probe, single_object_features


def pixel_patches(pixels: torch.Tensor) -> torch.Tensor:
    """The image itself as 8x8 patch tokens: everything a reader could want."""
    return rearrange(pixels, "b c (h p) (w q) -> b (h w) (p q c)", p=8, q=8)


def test_features_come_with_the_scene_labels():
    data = single_object_features(pixel_patches, 32, "heldout", 12, batch=5)
    assert data.features.shape == (12, 16, 192)
    assert data.colours.shape == data.shapes.shape == (12,)
    assert int(data.colours.max()) < len(COLOUR_NAMES)


def test_probe_reads_colour_from_pixels_and_nothing_from_noise():
    kwargs = dict(image_size=32, train_scenes=300, eval_scenes=80, steps=200, batch_size=32)
    readable = attribute_probe(pixel_patches, **kwargs)
    assert readable["val"]["colour"] > 0.6 and readable["held_out"]["colour"] > 0.6  # chance: 1/8

    def noise(pixels: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(pixels), 16, 192, generator=torch.Generator().manual_seed(len(pixels)))

    blind = attribute_probe(noise, **kwargs)
    assert blind["val"]["colour"] < 0.4 and blind["held_out"]["colour"] < 0.4


def test_probe_rejects_empty_budgets():
    with pytest.raises(InputError, match="steps"):
        attribute_probe(pixel_patches, 32, steps=0)
