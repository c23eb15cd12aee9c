"""``arvision describe IMAGE_OR_VIDEO "question" ["another question" ...] [--model FOLDER]``: VILA-U visual
question answering (the embedded default VILA-U when no folder is given): the answers in the order of the
questions, separated by blank lines."""

from __future__ import annotations

import argparse
from pathlib import Path

from arvision.cli.common import add_device_arguments, per_image_seeds, torch_dtype
from arvision.defaults import default_model_path
from arvision.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("describe", help="answer a question about an image or a video (VILA-U)")
    p.add_argument("media", help="image file, video file, or folder of video frames")
    p.add_argument("questions", nargs="+", metavar="question", help="what to ask about it (several: answered together)")
    p.add_argument("--model", default=None, help="VILA-U folder (release layout; default: the embedded one)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the model's sampling")
    p.add_argument("--temperature", type=float, default=None, help="text temperature (default: the model's, 0.9)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus mass (default: the model's, 0.6)")
    p.add_argument("--top-k", type=int, default=None, help="top-k (default: the model's, 50)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit (default 512)")
    p.add_argument("--frames", type=int, default=None, help="frames sampled from a video (default: config, 8)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the first answer; answer i uses seed + i (each on its own)"
    )
    add_device_arguments(p, None, "weights dtype (default: as stored, bfloat16 for the release)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from arvision.data.media import load_media
    from arvision.pipelines import vila_u_checkpoint as ckpt
    from arvision.pipelines.vila_u import VilaUPipeline

    seeds = None if args.seed is None else per_image_seeds(args.seed, len(args.questions))
    folder = Path(args.model or default_model_path("vila-u"))
    ckpt.check_vila_u_folder(folder)
    if args.frames is not None and args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    # The media is read before the model loads (a release's takes minutes): a missing or unreadable file is
    # named at once. The config says how many frames a video gives.
    frames = load_media(args.media, args.frames or ckpt.read_config(folder)[0].num_video_frames)
    pipe = VilaUPipeline.from_pretrained(folder, device=args.device, dtype=torch_dtype(args.dtype))
    answers = pipe.describe_batch(
        [frames] * len(args.questions),
        args.questions,
        temperature=0.0 if args.greedy else args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=seeds,
        num_frames=args.frames,
    )
    print("\n\n".join(answers))
    return 0
