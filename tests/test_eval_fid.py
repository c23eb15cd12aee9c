import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

from arvision.cli import main
from arvision.errors import CheckpointError, InputError
from arvision.eval.fid import TorchScriptInception, clean_resize, distances, image_features


class TinyInception(nn.Module):
    """The TorchScript Inception's calling convention (0..255 floats in, ``return_features``) on a tiny network."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 5, stride=3)
        self.logits = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = torch.tanh(self.conv(x / 127.5 - 1)).mean(dim=(2, 3))
        return features if return_features else self.logits(features)


@pytest.fixture()
def inception_file(tmp_path):
    path = tmp_path / "inception.pt"
    with warnings.catch_warnings():  # the real file is TorchScript too
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(TinyInception()).save(str(path))
    return path


def _folder(path, seed, count, size=(40, 32), brightness=0):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.clip(rng.integers(0, 200, (size[1], size[0], 3)) + brightness, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path / f"{i:03d}.png")
    return path


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_fid_equals_the_formula_computed_with_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 12, generator=g, dtype=torch.float64)
    b = torch.randn(200, 12, generator=g, dtype=torch.float64) * 1.3 + 0.2
    got = distances(a, b, kid_subsets=10)
    assert got["fid"] == pytest.approx(_scipy_fid(a.numpy(), b.numpy()), rel=1e-6)
    assert distances(a, a, kid_subsets=2)["fid"] == pytest.approx(0, abs=1e-6)
    assert got["kid_subset_size"] == 200  # lowered to the smaller set


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(400, 8, generator=g, dtype=torch.float64) for _ in range(2))
    same = distances(a, b, kid_subset_size=100, kid_subsets=50)
    shifted = distances(a, b + 0.5, kid_subset_size=100, kid_subsets=50)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3 and shifted["kid"] > 10 * abs(same["kid"])
    assert shifted["fid"] > same["fid"]
    assert distances(a, b, kid_subset_size=100, kid_subsets=5) == distances(a, b, kid_subset_size=100, kid_subsets=5)


def test_clean_resize_squeezes_the_whole_image_and_keeps_fractions():
    wide = np.zeros((10, 40, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)  # a red left quarter, which a centre crop would cut away
    wide[:, 10:] = (0, 0, 255)
    pixels = clean_resize(Image.fromarray(wide), 16)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    assert pixels[0, :, 0].min() > 250 and pixels[2, :, -1].min() > 250  # both ends kept, squeezed to a square
    assert not torch.equal(pixels, pixels.round())  # not rounded back to 8 bits, as clean-fid feeds the network
    assert pixels.min() >= 0 and pixels.max() <= 255


def test_distances_refuse_sets_they_cannot_compare():
    with pytest.raises(InputError, match="same D"):
        distances(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(InputError, match="at least 2 images"):
        distances(torch.zeros(1, 3), torch.zeros(5, 3))


def test_image_features_read_every_file_resized_as_clean_fid_and_leave_out_unreadable_ones(tmp_path, inception_file):
    folder = _folder(tmp_path / "images", 0, 5)
    (folder / "broken.png").write_bytes(b"not a png")
    network = TorchScriptInception(inception_file)
    got = image_features(folder, network, size=24, batch_size=2, progress=False)
    assert got.skipped == [str(folder / "broken.png")] and got.features.shape == (5, 6)
    expected = []
    for path in sorted(folder.glob("0*.png")):
        # clean-fid's "clean" resize, written out: each channel as a float image, bicubic, clipped, not rounded
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        channels = [Image.fromarray(rgb[..., c], mode="F").resize((24, 24), Image.BICUBIC) for c in range(3)]
        pixels = np.stack([np.asarray(c) for c in channels]).clip(0, 255)
        expected.append(TinyInception()(torch.from_numpy(pixels)[None], True)[0])
    torch.testing.assert_close(got.features, torch.stack(expected).double(), rtol=1e-5, atol=1e-6)
    in_workers = image_features(folder, network, size=24, batch_size=2, num_workers=2, progress=False)
    assert in_workers.skipped == got.skipped and torch.equal(in_workers.features, got.features)


def test_eval_fid_reports_both_distances_of_two_folders(tmp_path, inception_file, capsys):
    images = _folder(tmp_path / "generated", 1, 6)
    reference = _folder(tmp_path / "real", 2, 8, size=(30, 30), brightness=40)
    args = ["eval", "fid", "--images", str(images), "--reference", str(reference), "--inception", str(inception_file)]
    assert main([*args, "--size", "24", "--kid-subsets", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    network = TorchScriptInception(inception_file)
    features = [image_features(path, network, size=24, progress=False).features for path in (images, reference)]
    expected = distances(*features, kid_subsets=10)
    assert report["fid"] == pytest.approx(expected["fid"]) and report["kid"] == pytest.approx(expected["kid"])
    assert report["images"]["count"] == 6 and report["reference"]["count"] == 8 and report["kid_subset_size"] == 6


def test_eval_fid_names_a_missing_or_wrong_inception_file_and_an_empty_folder(tmp_path, inception_file, capsys):
    images = _folder(tmp_path / "generated", 1, 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.pt").write_bytes(b"\x00" * 64)
    base = ["eval", "fid", "--images", str(images), "--reference", str(images)]
    for extra, message in (
        (["--inception", str(tmp_path / "missing.pt")], "Inception weights not found"),
        (["--inception", str(tmp_path / "weights.pt")], "is not a TorchScript file"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    empty = ["eval", "fid", "--images", str(tmp_path / "empty"), "--reference", str(images)]
    assert main([*empty, "--inception", str(inception_file)]) == 2
    assert "no images in" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        TorchScriptInception(tmp_path / "weights.pt")


def test_saved_reference_features_give_the_same_distances_and_only_for_the_same_network_and_size(
    tmp_path, inception_file, capsys
):
    images = _folder(tmp_path / "generated", 1, 5)
    reference = _folder(tmp_path / "real", 2, 6, brightness=30)
    saved = tmp_path / "real.safetensors"
    base = ["eval", "fid", "--images", str(images), "--inception", str(inception_file), "--size", "24"]
    assert main([*base, "--reference", str(reference), "--save-reference-features", str(saved)]) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert "features of generated" in captured.err  # the progress bar of the images' pass
    assert main([*base, "--reference", str(saved)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["fid"] == first["fid"] and again["kid"] == first["kid"] and again["reference"]["count"] == 6
    other = TinyInception()
    with torch.no_grad():
        other.conv.weight.mul_(2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(other).save(str(tmp_path / "other.pt"))
    for extra in (["--inception", str(tmp_path / "other.pt")], ["--size", "32"]):
        assert main([*base, "--reference", str(saved), *extra]) == 2
        captured = capsys.readouterr()
        assert "holds features of another network or image size" in captured.err
        assert "features of generated" not in captured.err  # refused before the images were read
    upper = saved.rename(tmp_path / "REAL.SAFETENSORS")
    assert main([*base, "--reference", str(upper)]) == 0 and json.loads(capsys.readouterr().out)["fid"] == first["fid"]
    assert main([*base, "--reference", str(reference), "--save-reference-features", str(tmp_path / "r.pt")]) == 2
    assert "--save-reference-features must end in .safetensors" in capsys.readouterr().err
    saved = upper
    assert main([*base, "--reference", str(saved), "--save-reference-features", str(tmp_path / "x.safetensors")]) == 2
    assert "already a features file" in capsys.readouterr().err


def test_a_features_file_it_cannot_write_is_refused_before_the_images_are_read(tmp_path, capsys):
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "afile").write_text("x")
    missing = str(tmp_path / "missing.pt")  # reaching the network would name it instead
    base = ["eval", "fid", "--images", str(tmp_path), "--reference", str(tmp_path), "--inception", missing]
    for output, message in (("dir.safetensors", "it is a folder"), ("afile/f.safetensors", "afile is a file")):
        assert main([*base, "--save-reference-features", str(tmp_path / output)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"cannot write --save-reference-features {tmp_path / output}: " in err and message in err
        assert len(err.splitlines()) == 1
