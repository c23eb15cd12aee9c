"""Reading images and videos from disk, the VILA-U pre-processing, and writing videos.

Video files are decoded with PyAV (FFmpeg); a folder of frame images works too. Frames are sampled
as the official loader does: ``round(linspace(0, n_frames - 1, N))``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from arvision.checkpoint import atomic_path
from arvision.errors import InputError
from arvision.imaging import load_image, make_grid, open_image, to_8bit

# What data folders (and folders of video frames) take as image files, by suffix in any case.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# An animated GIF is read as an image (its first frame); convert it to a video file to describe it as one.
# Other containers are found too: a file that PIL cannot read is tried with PyAV (see load_media).
VIDEO_SUFFIXES = {
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ts",
    ".ogv",
}

ImageInput = str | os.PathLike | PIL.Image.Image | np.ndarray


def preprocess_image(image: PIL.Image.Image, size: int, *, generation_crop: bool = False) -> torch.Tensor:
    """PIL image (any mode) -> [3, size, size] float32 in [-1, 1], as the release prepares images.

    Understanding resizes straight to a square (no aspect preservation) in the image's own mode, with
    PIL's default filter for it, and converts to RGB after: the release's ``process_image`` resizes what
    the user gave and its CLIP processor converts. So palette and 1-bit images are resized nearest, RGBA
    bicubic on premultiplied alpha; RGB and greyscale bicubic. Generation training data (RGB files in the
    release) is first cropped to a square: the top square of a portrait image, the centre of a landscape one.
    16-bit, 32-bit and float images are first reduced to 8-bit greyscale by :func:`~arvision.imaging.to_8bit`.
    """
    # PIL's convert("RGB") clamps wide integer pixels and does not scale floats: a 16-bit image would turn white.
    image = to_8bit(image)
    if generation_crop:
        image = image.convert("RGB")
        w, h = image.size
        side = min(w, h)
        left, top = (0, 0) if w < h else (int(round((w - side) / 2.0)), int(round((h - side) / 2.0)))
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), PIL.Image.Resampling.BICUBIC)
    else:
        image = image.resize((size, size)).convert("RGB")
    # The CLIP processor rescales and normalises in float64 before casting.
    array = (np.asarray(image, dtype=np.float64) / 255.0 - 0.5) / 0.5
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1).contiguous()


def sample_frame_indices(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread evenly over ``total`` frames, first and last included."""
    if num_frames < 1:
        raise InputError(f"the number of frames to sample must be at least 1, got {num_frames}")
    if total <= 0:
        raise InputError("the video has no frames")
    return [int(i) for i in np.round(np.linspace(0, total - 1, num_frames)).astype(int)]


def is_video_path(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


def read_image(source: ImageInput) -> PIL.Image.Image:
    """An image in its stored mode (palette, 1-bit, RGBA kept: :func:`preprocess_image` converts after
    resizing, as the release does), except that a file's 16-bit, 32-bit and float pixels are reduced to 8 bits
    here, where a bad value can be blamed on the file. A PIL image is returned as is; an array goes through
    ``load_image``."""
    if isinstance(source, PIL.Image.Image):
        return source
    if not isinstance(source, str | os.PathLike):
        return load_image(source)
    return to_8bit(open_image(source), str(source))


def load_media(source: str | os.PathLike, num_frames: int = 8) -> list[PIL.Image.Image]:
    """A path -> frames: an image file (one frame, as stored), or ``num_frames`` sampled from a video file
    or a folder of frames. A file PIL cannot read is tried as a video before giving up, so that containers
    missing from :data:`VIDEO_SUFFIXES` are read too."""
    if is_video_path(source):
        return load_video_frames(source, num_frames)
    try:
        return [read_image(source)]
    except InputError as image_error:
        # A file PIL knows as an image (a truncated JPEG, a decompression bomb) stays an image error: FFmpeg
        # would make frames of what it can decode, and has no bomb guard. PIL names MPEG streams, but reads no
        # frames from them: those are videos.
        if not Path(source).is_file() or _image_format(source) not in (None, "MPEG"):
            raise
        try:
            return load_video_frames(source, num_frames)
        except InputError:
            raise InputError(f"not a readable image or video: {source}") from image_error


def _image_format(path: str | os.PathLike) -> str | None:
    """The format PIL identifies the file as, from its header (None: not an image format PIL knows)."""
    try:
        with PIL.Image.open(path) as image:
            return image.format
    except PIL.Image.DecompressionBombError:
        return "too large"
    except (OSError, SyntaxError, ValueError):
        return None


def load_video_frames(source: str | os.PathLike, num_frames: int = 8) -> list[PIL.Image.Image]:
    """Sample ``num_frames`` frames from a video file (RGB) or from a folder of frame images (sorted by
    name, in their stored mode, as the release opens them; other files there, Thumbs.db or notes, are not
    frames)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise InputError(f"no frame images in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return [read_image(files[i]) for i in sample_frame_indices(len(files), num_frames)]
    if not path.is_file():
        raise InputError(f"video not found: {path}")
    check_pyav(f"reading video {path}")
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"no video stream in {path}")
            stream = container.streams.video[0]
            codec = stream.codec_context
            if codec is None:  # PyAV 18 opens some truncated files with no decoder for their stream
                raise InputError(f"cannot read video {path}: no decoder for its video stream (a truncated file?)")
            pixels = (codec.width or 0) * (codec.height or 0)
            if PIL.Image.MAX_IMAGE_PIXELS and pixels > PIL.Image.MAX_IMAGE_PIXELS:  # PIL's limit for one image
                raise InputError(f"video frames too large to decode safely: {path} ({codec.width}x{codec.height})")
            # The header's frame count can be wrong; count the packets that carry data instead.
            total = sum(1 for packet in container.demux(stream) if packet.size)
        wanted = sample_frame_indices(total, num_frames)
        frames: dict[int, PIL.Image.Image] = {}
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index > wanted[-1]:
                    break
                if index in wanted:
                    frames[index] = frame.to_image().convert("RGB")
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read video {path}: {exc}") from exc
    if not frames:
        raise InputError(f"no decodable frames in {path}")
    # A frame that fails to decode is skipped, as the release does; repeats keep the sampled order.
    return [frames[i] for i in wanted if i in frames]


def to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """[B, 3, H, W] pixels in [-1, 1] -> PIL images: ``clamp((x + 1) * 127.5)`` truncated to uint8, exactly
    as the release maps and saves them."""
    array = ((images.detach().float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return [PIL.Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]


def frame_strip(frames: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
    """The frames side by side, left to right (how the release saves a generated video)."""
    return make_grid(list(frames), columns=len(frames))


# A GIF frame lasts a whole number of centiseconds, at most 655.35 s, and players stretch ones under 2 cs; MP4
# and WebP time bases are exact to the millisecond.
FPS_RANGES = {".gif": (0.002, 50.0), ".webp": (0.002, 1000.0), ".mp4": (0.002, 1000.0)}
VIDEO_OUTPUTS = tuple(FPS_RANGES)


def save_video(frames: Sequence[PIL.Image.Image], path: str | os.PathLike, fps: float = 4.0) -> Path:
    """Write frames (of one size) as an animated GIF or WebP that loops forever, or an H.264 MP4 (by the
    suffix). The file is written beside ``path`` and renamed onto it when complete."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in VIDEO_OUTPUTS:
        raise InputError(f"a video must be written as {', '.join(VIDEO_OUTPUTS)}, got {path.name}")
    check_fps(fps, kind)
    check_video_writer(kind)
    if not frames:
        raise InputError("no frames to write")
    sizes = sorted({frame.size for frame in frames})
    if len(sizes) > 1:
        raise InputError(f"the frames of a video must share one size, got {', '.join(f'{w}x{h}' for w, h in sizes)}")
    with atomic_path(path) as partial:
        if kind == ".mp4":
            _write_mp4(frames, partial, fps)
        else:
            first, *rest = frames
            duration = _frame_duration_ms(fps, kind)
            first.save(partial, format=kind[1:].upper(), save_all=True, append_images=rest, duration=duration, loop=0)
    return path


def _frame_duration_ms(fps: float, suffix: str) -> int:
    """How long a frame lasts in a file of this kind, in whole milliseconds (what Pillow takes)."""
    if suffix == ".gif":
        # Pillow truncates a GIF's duration to centiseconds (67 ms at 15 fps became 6 cs, 16.7 fps): take the
        # nearest whole centisecond, a tie (40 fps, 2.5 cs) going to the longer frame, the nearer frame rate.
        return math.floor(100 / fps + 0.5) * 10
    return round(1000 / fps)


# The H.264 encoder MP4s are written with: PyAV's wheels bundle it, but an FFmpeg built without GPL parts lacks it.
H264_ENCODER = "libx264"


def check_pyav(what: str) -> None:
    """An :class:`InputError` saying that ``what`` needs PyAV when it cannot be imported: only video files need
    FFmpeg, so it is imported where they are read or written."""
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise InputError(f"{what} needs PyAV (FFmpeg), which cannot be imported ({exc}): pip install av") from exc


def check_video_writer(suffix: str) -> None:
    """An :class:`InputError` when this installation cannot write videos of this kind (a suffix of
    :data:`VIDEO_OUTPUTS`), naming what to install: run it before the frames are made, which can take long."""
    kind = suffix.lower()
    if kind == ".mp4":
        check_pyav("writing .mp4 files")
        import av

        try:
            av.codec.Codec(H264_ENCODER, "w")
        except av.codec.codec.UnknownCodecError as exc:
            raise InputError(
                f"cannot write .mp4 files: PyAV's FFmpeg has no {H264_ENCODER} (H.264) encoder; install PyAV's "
                f"wheel (pip install --force-reinstall av) or write .gif or .webp"
            ) from exc
        return
    # Pillow registers a format's writer only when it was built with the library for it (libwebp for WebP).
    PIL.Image.init()
    if kind[1:].upper() not in PIL.Image.SAVE_ALL:
        raise InputError(
            f"cannot write {kind} files: this Pillow was built without {kind[1:].upper()} support; install a "
            f"Pillow that has it (pip install --force-reinstall pillow) or write another format"
        )


def check_fps(fps: float, suffix: str) -> None:
    """A frame rate a video of this kind (``.gif``, ``.webp``, ``.mp4``) can carry (:data:`FPS_RANGES`)."""
    low, high = FPS_RANGES[suffix.lower()]
    if not low <= fps <= high:  # NaN fails both
        raise InputError(f"fps must be within {low:g}..{high:g} for {suffix.lower()} files, got {fps}")


def _write_mp4(frames: Sequence[PIL.Image.Image], path: Path, fps: float) -> None:
    import av  # check_video_writer made sure it imports and has the encoder

    width, height = frames[0].size
    # H.264's yuv420p needs even sides: an odd one is padded by repeating its last pixel (a black border would
    # bleed into the edge's subsampled colour).
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    with av.open(str(path), mode="w", format="mp4") as container:
        # 1001 keeps the NTSC rates exact (30000/1001 = 29.97...).
        stream = container.add_stream(H264_ENCODER, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        stream.options = {"crf": "17"}  # visually lossless for these small frames
        for frame in frames:
            pixels = np.pad(np.asarray(frame.convert("RGB")), pad, mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
