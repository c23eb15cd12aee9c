import pytest
import torch

from arvision.errors import InputError
from arvision.eval.feature_probe import (
    COLOUR_NAMES,
    NO_COLOUR,
    attribute_probe,
    centred,
    pixel_patches,
    single_object_features,
)


def test_pixel_patches_tile_the_image():
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = pixel_patches(4)(pixels)
    assert patches.shape == (2, 4, 48)
    # Token 1 is the top-right 4x4 patch; its features run over rows, then columns, then channels.
    assert torch.equal(patches[1, 1, :3], pixels[1, :, 0, 4])
    assert torch.equal(patches[0, 3, -3:], pixels[0, :, 7, 7])


def test_centred_features_have_zero_mean_per_image_and_keep_the_differences():
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain, centred_patches = pixel_patches(8)(pixels), centred(pixel_patches(8))(pixels)
    assert centred_patches.shape == plain.shape == (3, 4, 192)
    assert torch.allclose(centred_patches.mean(dim=1), torch.zeros(3, 192), atol=1e-6)
    assert torch.allclose(centred_patches[:, 1] - centred_patches[:, 0], plain[:, 1] - plain[:, 0], atol=1e-6)


def test_features_come_with_the_scene_labels():
    data = single_object_features(pixel_patches(8), 32, "heldout", 12, batch=5)
    assert data.features.shape == (12, 16, 192)
    assert data.colours.shape == data.shapes.shape == (12,)
    assert int(data.colours.max()) < len(COLOUR_NAMES)
    unnamed = single_object_features(pixel_patches(8), 32, "train", 6, unnamed=True)
    assert (unnamed.colours == NO_COLOUR).all() and unnamed.shapes.shape == (6,)
    both = data + unnamed
    assert both.features.shape == (18, 16, 192) and torch.equal(both.shapes[12:], unnamed.shapes)


def test_probe_reads_colour_from_pixels_and_nothing_from_noise():
    kwargs = dict(image_size=32, train_scenes=300, eval_scenes=80, steps=200, batch_size=32)
    readable = attribute_probe(pixel_patches(8), **kwargs)
    assert readable["val"]["colour"] > 0.6 and readable["held_out"]["colour"] > 0.6  # chance: 1/8

    def noise(pixels: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(pixels), 16, 192, generator=torch.Generator().manual_seed(len(pixels)))

    # Scenes in unnamed colours teach shape only: colour is still learnt from the named ones.
    mixed = attribute_probe(pixel_patches(8), unnamed_scenes=300, **kwargs)
    assert mixed["val"]["colour"] > 0.6 and mixed["held_out"]["colour"] > 0.6

    blind = attribute_probe(noise, **kwargs)
    assert blind["val"]["colour"] < 0.4 and blind["held_out"]["colour"] < 0.4


def test_probe_rejects_empty_budgets():
    with pytest.raises(InputError, match="steps"):
        attribute_probe(pixel_patches(8), 32, steps=0)
