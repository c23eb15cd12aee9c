"""``arvision generate "PROMPT"``: text-to-image with a HART pipeline folder, or a VILA-U folder
(the folder decides which model runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from arvision.cli.common import add_device_arguments, numbered_paths, silence_library_progress, torch_dtype
from arvision.defaults import default_model_path
from arvision.errors import InputError
from arvision.imaging import make_grid

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate images from a text prompt (HART or VILA-U: the model folder decides)"
    )
    p.add_argument("prompt", help="what the image should show (a class name for a class-conditional HART)")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images to generate (default 1)")
    p.add_argument("--size", type=int, default=None, help="square image size in pixels (default: the model's)")
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's: HART 4.5 or its folder's, VILA-U 3)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same images")
    p.add_argument("--model", type=Path, default=None, help="HART or VILA-U folder (official release or saved)")
    p.add_argument("--text-encoder", type=Path, default=None, help="Qwen2 text-encoder folder (official models)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (replaces the empty prompt)")
    p.add_argument("--raw-weights", action="store_true", help="official layout: use the raw instead of EMA weights")
    p.add_argument("--discrete-only", action="store_true", help="skip the residual diffusion (ablation)")
    p.add_argument(
        "--diffusion-steps", type=int, default=None, help="HART's residual diffusion steps (default: the model's, 8)"
    )
    p.add_argument("--grid", action="store_true", help="with -n > 1, write one grid image instead of numbered files")
    add_device_arguments(p, "float32", "weights dtype (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", type=Path, required=True, help="output PNG path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from arvision.pipelines.vila_u import is_vila_u_folder

    if args.num_images < 1:
        raise InputError("-n must be at least 1")
    if args.output.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"--output must end in one of {', '.join(IMAGE_SUFFIXES)}, got {args.output.name}")
    if args.quiet:
        silence_library_progress()
    folder = args.model or default_model_path("hart")
    generate = _generate_vila_u if is_vila_u_folder(folder) else _generate_hart
    images = generate(folder, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.grid and len(images) > 1:
        make_grid(images).save(args.output)
        written = [args.output]
    else:
        written = numbered_paths(args.output, len(images))
        for image, path in zip(images, written):
            image.save(path)
    for path in written:
        print(f"wrote {path}")
    return 0


def _generate_hart(folder: Path, args: argparse.Namespace) -> list:
    from arvision.pipelines.hart import HartPipeline

    pipe = HartPipeline.from_pretrained(
        folder,
        use_ema=not args.raw_weights,
        text_encoder=args.text_encoder,
        torch_dtype=torch_dtype(args.dtype),
        device=args.device,
    )
    guidance = {} if args.cfg is None else {"guidance_scale": args.cfg}  # else the pipeline's default
    out = pipe(
        args.prompt,
        **guidance,
        height=args.size,
        width=args.size,
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        discrete_only=args.discrete_only,
        diffusion_steps=args.diffusion_steps,
        progress=not args.quiet,
    )
    return out.images


def _generate_vila_u(folder: Path, args: argparse.Namespace) -> list:
    from arvision.pipelines.vila_u import VilaUPipeline

    hart_only = [
        flag
        for flag, used in [
            ("--size", args.size),
            ("--negative-prompt", args.negative_prompt),
            ("--discrete-only", args.discrete_only),
            ("--diffusion-steps", args.diffusion_steps),
            ("--text-encoder", args.text_encoder),
        ]
        if used
    ]
    if hart_only:
        raise InputError(f"{', '.join(hart_only)} apply to HART models only; {folder} is a VILA-U model")
    pipe = VilaUPipeline.from_pretrained(folder, device=args.device, dtype=torch_dtype(args.dtype))
    pipe.progress = not args.quiet
    kwargs = {} if args.cfg is None else {"cfg": args.cfg}
    return pipe.generate_image(args.prompt, n=args.num_images, seed=args.seed, **kwargs)
