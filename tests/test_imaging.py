import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.errors import InputError
from arvision.imaging import load_image, make_grid, pil_to_tensor, resize_center_crop, tensor_to_pil


def test_pil_tensor_round_trip_is_exact_for_uint8():
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = pil_to_tensor(Image.fromarray(array))
    assert tensor.shape == (1, 3, 5, 7) and tensor.min() >= -1 and tensor.max() <= 1
    # +0.5/255 lands inside each uint8 bin, so the official truncation gives back the original values
    assert np.array_equal(np.asarray(tensor_to_pil(tensor + 1 / 255)[0]), array)


def test_tensor_to_pil_clamps_out_of_range_values():
    img = tensor_to_pil(torch.tensor([-3.0, 0.0, 3.0]).view(1, 3, 1, 1))[0]
    assert img.getpixel((0, 0)) == (0, 127, 255)


def test_resize_center_crop_and_grid():
    img = Image.new("RGB", (200, 100))
    assert resize_center_crop(img, 64).size == (64, 64)
    grid = make_grid([Image.new("RGB", (8, 8))] * 5, columns=3)
    assert grid.size == (24, 16)
    with pytest.raises(InputError):
        make_grid([])


def test_resize_center_crop_of_a_thin_strip_resizes_only_the_centre(monkeypatch):
    pixels = np.zeros((30000, 1, 3), dtype=np.uint8)
    pixels[10000:20000] = 200  # a grey middle third
    normal = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 100, 3), dtype=np.uint8))
    expected = np.asarray(normal.resize((64, 128), Image.BICUBIC).crop((0, 32, 64, 96)))
    sizes = []
    real_resize = Image.Image.resize

    def recording_resize(self, size, *args, **kwargs):
        sizes.append(size)
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    assert np.array_equal(np.asarray(resize_center_crop(normal, 64)), expected)  # normal images: the full resize
    centre = np.asarray(resize_center_crop(Image.fromarray(pixels), 64))
    assert sizes[-1] == (64, 64)  # not (64, 1920000), half a gigabyte
    assert centre.shape == (64, 64, 3) and (centre == 200).all()


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match=f"{tmp_path} is a folder, not an image file"):
        load_image(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.png"):
        load_image(bad)
    Image.new("L", (4, 4)).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"


def bomb_png(path):
    """A 1x1 PNG whose header claims 20000x20000 pixels (a few dozen bytes on disk)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    path.write_bytes(bytes(data))
    return path


def test_load_image_turns_decompression_bombs_into_named_input_errors(tmp_path):
    with pytest.raises(InputError, match="too large to decode safely: .*bomb.png"):
        load_image(bomb_png(tmp_path / "bomb.png"))


@pytest.mark.parametrize("error", [SyntaxError("broken header"), ValueError("bad mode")])
def test_load_image_turns_decoder_errors_into_named_input_errors(tmp_path, monkeypatch, error):
    path = tmp_path / "odd.png"
    Image.new("RGB", (2, 2)).save(path)

    def failing_open(*args, **kwargs):
        raise error

    monkeypatch.setattr(Image, "open", failing_open)
    with pytest.raises(InputError, match=f"odd.png.*{error}"):
        load_image(path)


def test_load_image_takes_uint8_arrays_and_names_other_inputs():
    import numpy as np

    grey = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert np.asarray(load_image(grey))[..., 0].tolist() == grey.tolist()
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    assert load_image(rgba).size == (3, 2) and load_image(rgba).mode == "RGB"
    with pytest.raises(InputError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(InputError, match="got int"):
        load_image(3)


def test_load_image_scales_16_bit_files_to_8_bit(tmp_path):
    ramp = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)  # 0..65520, mean ~32760
    Image.fromarray(ramp).save(tmp_path / "ramp.png")  # opens as I;16
    Image.fromarray(ramp).save(tmp_path / "ramp.ppm")  # a 16-bit PGM opens as I (int32)
    for name in ("ramp.png", "ramp.ppm"):
        rgb = np.asarray(load_image(tmp_path / name))
        assert np.array_equal(rgb[..., 0], ramp >> 8) and np.array_equal(rgb[..., 0], rgb[..., 2])
        assert rgb.mean() == pytest.approx(127.5)  # PIL's own conversion clamps: 254.5, almost white
    big_endian = Image.frombytes("I;16B", (64, 64), ramp.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(load_image(big_endian))[..., 1], ramp >> 8)
    assert pil_to_tensor(big_endian).mean().item() == pytest.approx(0.0, abs=1e-6)  # mid-grey: 127.5 of 255


def test_load_image_takes_float_images_in_0_1_or_0_255_and_refuses_other_ranges(tmp_path):
    floats = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32))
    assert np.asarray(load_image(floats))[..., 0].tolist() == [[0, 128], [255, 64]]  # PIL's own: 0, 0, 1, 0
    eight_bit = Image.fromarray(np.array([[0.0, 2.0], [200.0, 255.0]], dtype=np.float32))
    assert np.asarray(load_image(eight_bit))[..., 0].tolist() == [[0, 2], [200, 255]]
    Image.fromarray(np.full((2, 2), 300.0, dtype=np.float32)).save(tmp_path / "hdr.tiff")
    with pytest.raises(InputError, match=r"hdr.tiff: float pixels must lie in \[0, 1\] or 0..255, got 300.0"):
        load_image(tmp_path / "hdr.tiff")
    with pytest.raises(InputError, match="0..65535"):
        load_image(Image.fromarray(np.full((2, 2), 70000, dtype=np.int32)))
