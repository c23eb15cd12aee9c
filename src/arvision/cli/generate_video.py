"""``arvision generate-video "prompt" -o out.mp4 --model FOLDER``: VILA-U text-to-video (8 frames), written as
an MP4, an animated GIF or WebP."""

from __future__ import annotations

import argparse
from pathlib import Path

from arvision.cli import at_least
from arvision.cli.common import (
    add_device_arguments,
    check_output_file,
    numbered_paths,
    per_image_seeds,
    silence_library_progress,
    torch_dtype,
)
from arvision.models.vila_u import CODE_TEMPERATURE, CODE_TOP_K, CODE_TOP_P, DEFAULT_CFG


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate-video", help="generate a short video from text (VILA-U)")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="video.gif", help=".mp4 (H.264), .gif or .webp (default video.gif)")
    p.add_argument("--model", required=True, help="VILA-U checkpoint folder (release layout)")
    p.add_argument(
        "-n", "--num-videos", type=at_least(1), default=1, help="videos to generate (files get -000, -001, ...)"
    )
    p.add_argument(
        "--cfg", type=float, default=DEFAULT_CFG, help="classifier-free guidance scale (default %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the first video; video i uses seed + i (as generate does)"
    )
    p.add_argument(
        "--temperature", type=float, default=CODE_TEMPERATURE, help="code sampling temperature (default %(default)s)"
    )
    p.add_argument("--top-k", type=int, default=CODE_TOP_K, help="code sampling top-k (default %(default)s)")
    p.add_argument("--top-p", type=float, default=CODE_TOP_P, help="code sampling top-p (default %(default)s)")
    p.add_argument("--fps", type=float, default=4.0, help="animation frame rate (default 4)")
    p.add_argument("--no-strip", action="store_true", help="do not also save the frames side by side as PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arguments(p, None, "weights dtype (default: as stored, bfloat16 for the release)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from arvision.data.media import VIDEO_OUTPUTS, check_fps, check_video_writer, frame_strip, save_video
    from arvision.errors import InputError
    from arvision.pipelines.vila_u import VilaUPipeline

    output = Path(args.output)
    if output.suffix.lower() not in VIDEO_OUTPUTS:
        raise InputError(f"--output must end in {', '.join(VIDEO_OUTPUTS)}, got {output.name}")
    # Before the (slow) generation.
    check_fps(args.fps, output.suffix)
    check_video_writer(output.suffix)
    paths = numbered_paths(output, args.num_videos)
    for path in paths:
        for written in (path,) if args.no_strip else (path, _strip_path(path)):
            check_output_file(written, "-o")
    seeds = None if args.seed is None else per_image_seeds(args.seed, args.num_videos)
    if args.quiet:
        silence_library_progress()
    pipe = VilaUPipeline.from_pretrained(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    pipe.progress = not args.quiet
    videos = pipe.generate_video(
        args.prompt,
        n=args.num_videos,
        cfg=args.cfg,
        seed=seeds,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    for frames, path in zip(videos, paths, strict=True):
        print(save_video(frames, path, fps=args.fps))
        if not args.no_strip:
            strip = _strip_path(path)
            frame_strip(frames).save(strip)
            print(strip)
    return 0


def _strip_path(video: Path) -> Path:
    """Where a video's frames side by side go: ``NAME.strip.png`` beside it."""
    return video.with_name(f"{video.stem}.strip.png")
