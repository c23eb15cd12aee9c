import io
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from arvision.data import media
from arvision.data.media import (
    frame_strip,
    is_video_path,
    load_image,
    load_media,
    load_video_frames,
    preprocess_image,
    sample_frame_indices,
    save_video,
    to_pil,
)
from arvision.errors import InputError
from media_common import write_video


def test_frame_indices_follow_the_official_rounding():
    assert sample_frame_indices(13, 8) == [0, 2, 3, 5, 7, 9, 10, 12]
    assert sample_frame_indices(3, 8) == [0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(InputError):
        sample_frame_indices(0, 8)
    for count in (0, -1):
        with pytest.raises(InputError, match=f"at least 1, got {count}"):
            sample_frame_indices(13, count)


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


def test_a_frame_folder_reads_only_its_images_and_an_empty_one_is_named(tmp_path):
    for i in range(3):
        PIL.Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i:03d}.PNG")
    (tmp_path / "Thumbs.db").write_bytes(b"\0" * 16)
    (tmp_path / "info.json").write_text("{}")
    assert [f.getpixel((0, 0))[0] for f in load_video_frames(tmp_path, 3)] == [0, 40, 80]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames")
    with pytest.raises(InputError, match=f"no frame images in {tmp_path / 'empty'}"):
        load_video_frames(tmp_path / "empty")


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


def test_a_video_file_cut_short_is_an_input_error(tmp_path):
    whole = write_video(tmp_path / "v.mp4", [20 * i for i in range(10)]).read_bytes()
    cut = tmp_path / "cut.mp4"
    # Cut halfway, PyAV 18 opens the file with no decoder for its video stream (codec_context None).
    for fraction in (0.25, 0.5, 0.75):
        cut.write_bytes(whole[: int(len(whole) * fraction)])
        with pytest.raises(InputError, match="cut.mp4"):
            load_video_frames(cut)


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
        path = save_video(frames, tmp_path / f"a{suffix}")
        with PIL.Image.open(path) as anim:
            assert anim.n_frames == 4
    assert frame_strip(frames).size == (32, 8)
    with pytest.raises(InputError, match="written as .gif, .webp, .mp4"):
        save_video(frames, tmp_path / "a.png")
    for fps in (0, float("inf"), float("nan"), 1e-3, 60):
        with pytest.raises(InputError, match="fps must be within 0.002..50 for .gif files"):
            save_video(frames, tmp_path / "a.gif", fps=fps)
    with pytest.raises(InputError, match="fps must be within 0.002..1000 for .mp4 files"):
        save_video(frames, tmp_path / "a.mp4", fps=1e12)
    assert save_video(frames, tmp_path / "fast.mp4", fps=60).is_file()
    with pytest.raises(InputError, match="share one size, got 8x8, 9x8"):
        save_video([*frames, PIL.Image.new("RGB", (9, 8))], tmp_path / "b.mp4")
    with pytest.raises(InputError, match="no frames"):
        save_video([], tmp_path / "b.mp4")
    assert not (tmp_path / "b.mp4").exists()


def test_gif_frames_last_the_nearest_whole_centisecond(tmp_path):
    frames = [PIL.Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    # 15 fps: 6.7 cs, 7 nearer than the 6 that truncating 67 ms gave; 40 fps: 2.5 cs, the longer 3 (33 fps, not 50).
    for fps, centiseconds in ((15, 7), (40, 3), (50, 2), (4, 25), (0.3, 333), (0.002, 50000)):
        with PIL.Image.open(save_video(frames, tmp_path / "a.gif", fps=fps)) as anim:
            durations = []
            for index in range(anim.n_frames):
                anim.seek(index)
                durations.append(anim.info["duration"])
        assert durations == [centiseconds * 10] * 3, fps


def test_a_missing_video_writer_or_reader_is_an_input_error_naming_what_to_install(tmp_path, monkeypatch):
    frames = [PIL.Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(2)]
    video = save_video(frames, tmp_path / "clip.mp4")
    PIL.Image.init()  # registers every writer this Pillow has
    with monkeypatch.context() as patch:
        patch.delitem(PIL.Image.SAVE_ALL, "WEBP")  # how Pillow built without libwebp stands (KeyError 'WEBP')
        for write in (lambda: media.check_video_writer(".WebP"), lambda: save_video(frames, tmp_path / "a.webp")):
            with pytest.raises(InputError, match="cannot write .webp files: this Pillow was built without WEBP"):
                write()
    with monkeypatch.context() as patch:
        patch.setattr(media, "H264_ENCODER", "libnope")  # an FFmpeg without the encoder (UnknownCodecError)
        with pytest.raises(InputError, match="cannot write .mp4 files: PyAV's FFmpeg has no libnope"):
            save_video(frames, tmp_path / "b.mp4")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "av", None)  # PyAV not installed (ModuleNotFoundError)
        with pytest.raises(InputError, match=r"writing .mp4 files needs PyAV \(FFmpeg\).*pip install av"):
            save_video(frames, tmp_path / "b.mp4")
        with pytest.raises(InputError, match="reading video .*clip.mp4 needs PyAV"):
            load_video_frames(video, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    media.check_video_writer(".gif")


def test_a_failed_write_keeps_the_previous_video(tmp_path):
    frames = [PIL.Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(4)]
    path = save_video(frames, tmp_path / "a.mp4")
    before = path.read_bytes()

    class Truncated(PIL.Image.Image):  # a frame whose pixels fail to load, as a truncated file's do
        size = (8, 8)

        def convert(self, mode):
            raise OSError("truncated frame file")

    with pytest.raises(OSError, match="truncated frame file"):
        save_video([*frames, Truncated()], path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_an_mp4_reads_back_as_its_frames(tmp_path):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (5, 3))
    frames = [PIL.Image.new("RGB", (17, 9), tuple(int(v) for v in c)) for c in colours]  # odd sides are padded
    path = save_video(frames, tmp_path / "clip.mp4", fps=2.5)
    back = load_video_frames(path, 5)
    assert len(back) == 5 and back[0].size == (18, 10)
    for frame, colour in zip(back, colours):
        mean = np.asarray(frame)[:9, :17].reshape(-1, 3).mean(0)
        assert np.abs(mean - colour).max() < 4, (mean, colour)  # lossy, but close on flat frames


def _normalised(array):
    return torch.from_numpy(((array.astype(np.float64) / 255.0 - 0.5) / 0.5).astype(np.float32)).permute(2, 0, 1)


def test_palette_and_one_bit_images_are_resized_nearest_before_the_rgb_conversion():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 4, (12, 10), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 10]], np.uint8)
    image = PIL.Image.fromarray(indices, mode="P")
    image.putpalette(palette.flatten().tolist())
    # Nearest neighbour by hand: output pixel i reads source pixel floor((i + 0.5) * in / out).
    rows = np.floor((np.arange(8) + 0.5) * 12 / 8).astype(int)
    cols = np.floor((np.arange(8) + 0.5) * 10 / 8).astype(int)
    expected = palette[indices[rows][:, cols]]
    assert torch.equal(preprocess_image(image, 8), _normalised(expected))
    bits = PIL.Image.fromarray(indices > 1).convert("1")
    expected_bits = np.repeat((indices[rows][:, cols] > 1)[..., None] * np.uint8(255), 3, axis=2)
    assert torch.equal(preprocess_image(bits, 8), _normalised(expected_bits))


def test_rgba_is_resized_with_premultiplied_alpha_and_rgb_and_grey_as_before():
    # Opaque blue beside fully transparent red: no red may bleed into the resized image.
    array = np.zeros((8, 8, 4), np.uint8)
    array[:, :4] = (0, 0, 255, 255)
    array[:, 4:] = (255, 0, 0, 0)
    pixels = preprocess_image(PIL.Image.fromarray(array, mode="RGBA"), 5)
    assert pixels[0].max() == -1.0 and pixels[2, :, 0].min() == 1.0
    rng = np.random.default_rng(1)
    for image in (
        PIL.Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)),
        PIL.Image.new("L", (7, 5), 90),
    ):
        before = image.convert("RGB").resize((6, 6), PIL.Image.Resampling.BICUBIC)
        assert torch.equal(preprocess_image(image, 6), _normalised(np.asarray(before)))


def test_media_paths_images_videos_and_other_containers(tmp_path):
    assert is_video_path("clip.FLV") and is_video_path("clip.3gp") and not is_video_path("photo.png")
    palette = PIL.Image.new("P", (6, 6))
    palette.save(tmp_path / "p.png")
    (frame,) = load_media(tmp_path / "p.png")
    assert frame.mode == "P"  # as stored: preprocess_image resizes before converting
    video = write_video(tmp_path / "v.mp4", [0, 100, 200])
    (tmp_path / "v.bin").write_bytes(video.read_bytes())  # a suffix nobody lists: found by content
    frames = load_media(tmp_path / "v.bin", 2)
    assert len(frames) == 2 and frames[0].mode == "RGB"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable image or video: .*notes.txt"):
        load_media(text)
    with pytest.raises(InputError, match="image file not found"):
        load_media(tmp_path / "missing.png")


def test_decompression_bombs_are_refused_as_images_and_as_videos(tmp_path, monkeypatch):
    from test_imaging import bomb_png

    tried_as_video = []
    monkeypatch.setattr(media, "load_video_frames", lambda *a: tried_as_video.append(a) or ["frame"])
    with pytest.raises(InputError, match="too large to decode safely"):
        load_media(bomb_png(tmp_path / "bomb.png"))
    assert not tried_as_video  # a bomb gets no second try through FFmpeg
    (tmp_path / "clip.m1v").write_bytes(b"\x00\x00\x01\xb3 not an image PIL can decode")
    assert load_media(tmp_path / "clip.m1v") == ["frame"]  # PIL names MPEG, reads no frames: a video
    jpeg = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    PIL.Image.fromarray(noise).save(jpeg, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # the header whole, the scan cut
    with pytest.raises(InputError, match="not a readable image"):
        load_media(tmp_path / "cut.jpg")  # a truncated JPEG is a broken image, not a one-frame video
    assert [path.name for path, _ in tried_as_video] == ["clip.m1v"]
    monkeypatch.undo()
    video = write_video(tmp_path / "clip.mp4", [0, 50, 100], size=32)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="video frames too large to decode safely: .*clip.mp4 \\(32x32\\)"):
        load_media(video, 2)


def test_wide_and_float_images_are_reduced_to_8_bits_before_resizing(tmp_path):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (9, 13), dtype=np.uint8)
    wide = PIL.Image.fromarray(grey.astype(np.uint16) * 257)  # the same picture in 16 bits (I;16)
    wide.save(tmp_path / "g16.png")
    floats = PIL.Image.fromarray(grey.astype(np.float32) / 255)  # F, in [0, 1]
    for image in (wide, wide.convert("I"), floats, media.read_image(tmp_path / "g16.png")):
        for crop in (False, True):
            reference = preprocess_image(PIL.Image.fromarray(grey), 6, generation_crop=crop)
            pixels = preprocess_image(image, 6, generation_crop=crop)
            torch.testing.assert_close(pixels, reference, atol=2 / 255, rtol=0)  # within a level (of 2 / 255)
    (tmp_path / "frames").mkdir()
    PIL.Image.fromarray(np.full((4, 4), 300, np.float32)).save(tmp_path / "frames" / "bad.tif")
    with pytest.raises(InputError, match=r"bad\.tif: float pixels must lie in \[0, 1\] or 0..255"):
        load_video_frames(tmp_path / "frames", 2)
