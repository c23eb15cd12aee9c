import numpy as np
import PIL.Image
import pytest
import torch

from arvision.data.media import (
    frame_strip,
    load_image,
    load_video_frames,
    preprocess_image,
    sample_frame_indices,
    save_animation,
    to_pil,
)
from arvision.errors import InputError
from media_common import write_video


def test_frame_indices_follow_the_official_rounding():
    assert sample_frame_indices(13, 8) == [0, 2, 3, 5, 7, 9, 10, 12]
    assert sample_frame_indices(3, 8) == [0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(InputError):
        sample_frame_indices(0, 8)


def test_video_file_frames_are_sampled_evenly(tmp_path):
    values = [i * 15 for i in range(13)]
    frames = load_video_frames(write_video(tmp_path / "v.mp4", values, size=32), 8)
    assert len(frames) == 8 and frames[0].size == (32, 32)
    got = [int(np.asarray(f).mean()) for f in frames]
    expected = [values[i] for i in sample_frame_indices(13, 8)]
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 4


def test_folder_of_frames(tmp_path):
    for i in range(5):
        PIL.Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i:03d}.png")
    frames = load_video_frames(tmp_path, 3)
    assert [f.getpixel((0, 0))[0] for f in frames] == [0, 80, 160]


def test_unreadable_inputs_raise_input_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 20)
    with pytest.raises(InputError, match="cannot read video"):
        load_video_frames(bad)
    with pytest.raises(InputError, match="not found"):
        load_video_frames(tmp_path / "missing.mp4")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(text)


def test_preprocess_resizes_to_a_square_in_minus_one_one_and_generation_crop():
    image = PIL.Image.new("RGBA", (40, 20), (255, 0, 0, 255))
    pixels = preprocess_image(image, 16)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    # Portrait generation data keeps the top square, landscape the centre.
    portrait = PIL.Image.new("RGB", (4, 8))
    portrait.paste((255, 255, 255), (0, 0, 4, 4))
    assert preprocess_image(portrait, 4, generation_crop=True).min() == 1.0
    landscape = PIL.Image.new("RGB", (12, 4))
    landscape.paste((255, 255, 255), (4, 0, 8, 4))
    assert preprocess_image(landscape, 4, generation_crop=True).min() == 1.0


def test_animation_and_strip(tmp_path):
    frames = to_pil(torch.linspace(-1, 1, 4)[:, None, None, None].expand(4, 3, 8, 8))
    assert frames[0].getpixel((0, 0)) == (0, 0, 0) and frames[-1].getpixel((0, 0)) == (255, 255, 255)
    for suffix in (".gif", ".webp"):
        path = save_animation(frames, tmp_path / f"a{suffix}")
        with PIL.Image.open(path) as anim:
            assert anim.n_frames == 4
    assert frame_strip(frames).size == (32, 8)
    with pytest.raises(InputError):
        save_animation(frames, tmp_path / "a.png")
