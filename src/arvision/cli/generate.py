"""``arvision generate "PROMPT"``: text-to-image with a HART pipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from arvision.defaults import DEFAULTS_DIR
from arvision.errors import CheckpointError, InputError
from arvision.imaging import make_grid

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_model_folder() -> Path:
    folder = DEFAULTS_DIR / "hart"
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"no default HART model is installed at {folder} yet; pass --model FOLDER")
    return folder


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate images from a text prompt (HART)")
    p.add_argument("prompt", help="what the image should show")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images to generate (default 1)")
    p.add_argument("--size", type=int, default=None, help="square image size in pixels (default: the model's)")
    p.add_argument("--cfg", type=float, default=4.5, help="classifier-free guidance scale (default 4.5, 0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same images")
    p.add_argument("--model", type=Path, default=None, help="HART folder (official release or saved pipeline)")
    p.add_argument("--text-encoder", type=Path, default=None, help="Qwen2 text-encoder folder (official models)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (replaces the empty prompt)")
    p.add_argument("--raw-weights", action="store_true", help="official layout: use the raw instead of EMA weights")
    p.add_argument("--discrete-only", action="store_true", help="skip the residual diffusion (ablation)")
    p.add_argument("--grid", action="store_true", help="with -n > 1, write one grid image instead of numbered files")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", type=Path, required=True, help="output PNG path")
    p.set_defaults(func=run)


def output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i:03d}{output.suffix or '.png'}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    from arvision.pipelines.hart import HartPipeline

    if args.num_images < 1:
        raise InputError("-n must be at least 1")
    pipe = HartPipeline.from_pretrained(
        args.model or default_model_folder(),
        use_ema=not args.raw_weights,
        text_encoder=args.text_encoder,
        torch_dtype=DTYPES[args.dtype],
        device=args.device,
    )
    out = pipe(
        args.prompt,
        height=args.size,
        width=args.size,
        guidance_scale=args.cfg,
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        discrete_only=args.discrete_only,
        progress=not args.quiet,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.grid and len(out.images) > 1:
        make_grid(out.images).save(args.output)
        written = [args.output]
    else:
        written = output_paths(args.output, len(out.images))
        for image, path in zip(out.images, written):
            image.save(path)
    for path in written:
        print(f"wrote {path}")
    return 0
