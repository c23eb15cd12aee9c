import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from arvision.cli import main
from vilau_common import FIXTURE as VILA_U


@pytest.fixture()
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_reconstruct_writes_image_and_reports_metrics(photo, tmp_path, hart_fixture_dir, capsys):
    out = tmp_path / "sub" / "recon.png"
    args = ["reconstruct", str(photo), "--size", "32", "--model", str(hart_fixture_dir / "tokenizer"), "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "SSIM" in printed
    assert Image.open(out).size == (32, 32)
    assert main([*args, "--mode", "discrete"]) == 0


def test_reconstruct_defaults_to_the_bundled_photo(tmp_path, hart_fixture_dir, capsys):
    out = tmp_path / "recon.png"
    assert main(["reconstruct", "--size", "32", "--model", str(hart_fixture_dir / "tokenizer"), "-o", str(out)]) == 0
    assert "astronaut.png" in capsys.readouterr().out and out.is_file()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, p, m: ["reconstruct", str(d / "missing.png"), "--model", m], "image file not found"),
        (lambda d, p, m: ["reconstruct", str(d / "notes.txt"), "--model", m], "not a readable image"),
        (lambda d, p, m: ["reconstruct", str(p), "--size", "30", "--model", m], "not a multiple"),
        (lambda d, p, m: ["reconstruct", str(p), "--size", "0", "--model", m], "--size must be within 8..256"),
        (lambda d, p, m: ["reconstruct", str(p), "--model", str(d)], "config.json"),
        (lambda d, p, m: ["reconstruct", str(p), "--model", str(VILA_U)], "is a VILA-U folder; reconstruct takes"),
    ],
)
def test_bad_inputs_give_one_clear_line(tmp_path, photo, hart_fixture_dir, capsys, make_args, message):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(make_args(tmp_path, photo, str(hart_fixture_dir / "tokenizer"))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_size_below_the_ssim_window_is_refused_before_anything_is_written(photo, tmp_path, hart_fixture_dir, capsys):
    out = tmp_path / "recon.png"
    model = str(hart_fixture_dir / "tokenizer")  # downsamples by 4: size 8 is a valid working size
    assert main(["reconstruct", str(photo), "--size", "8", "--model", model, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 11x11 pixels" in err and "8x8" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_console_entry_point_exits_nonzero_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "arvision", "reconstruct", str(tmp_path / "nope.png")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "image file not found" in result.stderr


def test_a_device_this_machine_lacks_is_named(photo, tmp_path, capsys):
    import torch

    missing = "mps" if torch.cuda.is_available() else "cuda"
    if missing == "mps" and torch.backends.mps.is_available():
        pytest.skip("both CUDA and MPS are available")
    for device, message in (
        (missing, "no CUDA device" if missing == "cuda" else "MPS is not available"),
        ("gpu0", "not a torch device"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["reconstruct", str(photo), "--device", device, "-o", str(tmp_path / "r.png")])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_unknown_arguments_are_named(photo, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reconstruct", str(photo), "--sizes", "32"])
    assert stop.value.code == 2 and "unrecognized arguments: --sizes 32" in capsys.readouterr().err


def test_an_output_it_cannot_write_is_refused_before_the_tokenizer_loads(photo, tmp_path, capsys):
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "afile").write_text("x")
    missing = str(tmp_path / "missing")  # reaching the loader would name this folder instead
    for output, message in (
        ("dir.png", "it is a folder"),
        ("afile/r.png", f"{tmp_path / 'afile'} is a file"),
        ("r", "'' is not an image format PIL writes"),
    ):
        assert main(["reconstruct", str(photo), "--model", missing, "-o", str(tmp_path / output)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"cannot write -o {tmp_path / output}: {message}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["reconstruct", "eval tokenizer"])
@pytest.mark.parametrize("size", [4, 260])
def test_a_size_outside_the_token_grids_is_named_before_any_image_is_resized(hart_fixture_dir, capsys, command, size):
    model = str(hart_fixture_dir / "tokenizer")  # downsamples by 4: token grids 2x2..64x64 are 8..256 px
    assert main([*command.split(), "--size", str(size), "--model", model]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        f"--size must be within 8..256 for this tokenizer (token grids of 2x2 to 64x64, 4px per token), got {size}"
        in err
    )
    assert len(err.splitlines()) == 1
