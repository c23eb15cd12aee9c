import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from arvision.errors import InputError
from arvision.eval.metrics import psnr, ssim, wilson_interval


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
    assert psnr(clean, clean, data_range=1.0).item() == float("inf")  # scikit-image's value too


def test_ssim_refuses_images_smaller_than_its_window():
    small = torch.zeros(1, 3, 10, 32)
    with pytest.raises(InputError, match="at least 11x11 pixels .*got 10x32"):
        ssim(small, small)
    assert ssim(small, small, window=7).item() == pytest.approx(1.0)


def test_wilson_interval_matches_hand_computed_values():
    # 5 of 10 at z 1.96: centre 0.5, half-width 1.96 * sqrt(0.025 + 0.0096) / 1.3842 = 0.2634
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    # none right: the interval still reaches 0.2775, where a normal approximation would give [0, 0]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # more trials, narrower: the 50-scene VILA-U eval (188 questions) against the 300-scene one (1112)
    narrow, wide = wilson_interval(418, 1112), wilson_interval(60, 188)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2
    with pytest.raises(InputError, match="successes"):
        wilson_interval(3, 2)
