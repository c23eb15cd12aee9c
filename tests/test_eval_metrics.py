import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from arvision.eval.metrics import psnr, ssim


@pytest.fixture(scope="module")
def pair():
    clean = data.astronaut()[:96, :96].astype(np.float64) / 255
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.05, clean.shape), 0, 1)
    return clean, noisy


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def test_psnr_matches_scikit_image(pair):
    clean, noisy = pair
    expected = peak_signal_noise_ratio(clean, noisy, data_range=1.0)
    assert psnr(to_tensor(noisy), to_tensor(clean), data_range=1.0).item() == pytest.approx(expected, abs=1e-4)


def test_ssim_matches_scikit_image_gaussian_variant(pair):
    clean, noisy = pair
    expected = structural_similarity(
        clean, noisy, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(to_tensor(noisy), to_tensor(clean), data_range=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_identical_images_are_perfect(pair):
    clean = to_tensor(pair[0])
    assert ssim(clean, clean, data_range=1.0).item() == pytest.approx(1.0)
    assert psnr(clean, clean, data_range=1.0).item() > 100
