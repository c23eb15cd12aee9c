"""``arvision generate "PROMPT"``: text-to-image with a HART pipeline folder, or a VILA-U folder
(the folder decides which model runs). ``--prompts-file FILE -o DIR`` draws for every line of a file, in batches,
into numbered files (what FID and prompt-set benchmarks take), and a rerun keeps the images already there."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from arvision.checkpoint import atomic_path
from arvision.cli.common import (
    add_device_arguments,
    check_output_file,
    check_output_folder,
    numbered_paths,
    per_image_seeds,
    silence_library_progress,
    torch_dtype,
)
from arvision.data.prompt_files import image_names, read_prompts
from arvision.defaults import default_model_path
from arvision.errors import InputError
from arvision.imaging import load_image, make_grid
from arvision.models.hart_sampler import GUIDANCE_SCHEDULES
from arvision.nn.sampling import check_guidance, check_sampling, seeded_generator
from arvision.text.base import check_prompts

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate images from a text prompt (HART or VILA-U: the model folder decides)"
    )
    p.add_argument("prompt", nargs="?", help="what the image should show (a class name for a class-conditional HART)")
    p.add_argument(
        "--prompts-file",
        type=Path,
        default=None,
        help="a text file of prompts, one per line (blank lines skipped): -n images for each, written to the "
        "folder -o as NNNNN.png (NNNNN_K.png with -n > 1), prompt i's image k from seed --seed + i * n + k; "
        "images already there are kept",
    )
    p.add_argument("--batch-size", type=int, default=8, help="with --prompts-file: prompts drawn together")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images to generate (default 1)")
    p.add_argument("--size", type=int, default=None, help="square image size in pixels (default: the model's)")
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's: HART 4.5 or its folder's, VILA-U 3)",
    )
    p.add_argument(
        "--guidance-schedule",
        choices=GUIDANCE_SCHEDULES,
        default=None,
        help="HART: guidance ramped over the scales (linear, the official) or the same at every scale "
        "(constant) (default: the model's: linear, or its folder's)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the first image; image i uses seed + i, so `--seed 7 -n 4` makes what `--seed 7` ... "
        "`--seed 10` make one by one (as the server does)",
    )
    p.add_argument("--model", type=Path, default=None, help="HART or VILA-U folder (official release or saved)")
    p.add_argument("--text-encoder", type=Path, default=None, help="Qwen2 text-encoder folder (official models)")
    p.add_argument(
        "--negative-prompt",
        default=None,
        help="HART: what to steer away from, a prompt (class name) guidance pushes against "
        "(default: the model's null condition, an all-zero context or the no-class label)",
    )
    p.add_argument(
        "--image",
        type=Path,
        default=None,
        help="HART image-to-image: keep this image's codes of the first scales and draw the rest (see --strength)",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="with --image: the share of the scales drawn anew, 0..1 (default 0.8; 1 ignores the image)",
    )
    p.add_argument("--raw-weights", action="store_true", help="official layout: use the raw instead of EMA weights")
    p.add_argument("--discrete-only", action="store_true", help="skip the residual diffusion (ablation)")
    p.add_argument(
        "--diffusion-steps", type=int, default=None, help="HART's residual diffusion steps (default: the model's, 8)"
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="sample among the k likeliest codes, 0 for all (default: the model's: HART 600 then 300 per scale "
        "or its folder's, VILA-U 900)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="nucleus sampling: keep the likeliest codes up to this mass, 0 for all (default: HART 0, VILA-U 0.96)",
    )
    p.add_argument("--temperature", type=float, default=None, help="code sampling temperature, 0 greedy (default 1)")
    p.add_argument(
        "--more-smooth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="HART: mix codebook vectors with a Gumbel-softmax, the official scripts' smoother look (default: the "
        "model folder's; on for an official release, off for arvision's folders, as for the paper's FID)",
    )
    p.add_argument("--grid", action="store_true", help="with -n > 1, write one grid image instead of numbered files")
    add_device_arguments(
        p,
        None,
        "weights dtype (default: float32 for HART, the folder's stored dtype for VILA-U, bfloat16 in the release)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", type=Path, required=True, help="output PNG path (a folder with --prompts-file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise InputError("-n must be at least 1")
    if (args.prompt is None) == (args.prompts_file is None):
        raise InputError("give a prompt or --prompts-file, one of them")
    # Before the (slow) model load: what the pipelines would refuse after it.
    prompts = check_prompts(args.prompt if args.prompts_file is None else read_prompts(args.prompts_file))
    if args.negative_prompt is not None and not args.negative_prompt.strip():
        raise InputError("--negative-prompt is empty; leave it out to use the model's null condition")
    check_sampling(1.0 if args.temperature is None else args.temperature, args.top_k, args.top_p or 0.0)
    if args.cfg is not None:
        check_guidance(args.cfg, "--cfg")
    seed = args.seed
    if args.prompts_file is not None:
        seed = 0 if seed is None else seed  # the numbered files are then reproducible, so a rerun can resume
        _check_prompts_file_output(args)
    if seed is not None:
        per_image_seeds(seed, len(prompts) * args.num_images)
    if args.strength is not None and (args.image is None or not 0 <= args.strength <= 1):
        raise InputError("--strength needs --image and a value within 0..1")
    if args.prompts_file is None:
        _check_output_files(args)
    init_image = None if args.image is None else load_image(args.image)
    if args.quiet:
        silence_library_progress()
    folder = args.model or default_model_path("hart")
    if args.prompts_file is not None:
        return _draw_prompts_file(lambda: _drawer(folder, args, init_image), prompts, seed, args)
    seeds = None if seed is None else per_image_seeds(seed, args.num_images)
    images = _drawer(folder, args, init_image)(prompts, seeds)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.grid and len(images) > 1:
        images = [make_grid(images)]
    written = _output_files(args)
    for image, path in zip(images, written, strict=True):
        image.save(path)
    for path in written:
        print(f"wrote {path}")
    return 0


# prompts (n images each, prompt-major) and their per-image seeds (None: unseeded) -> the images
Drawer = Callable[[list[str], list[int] | None], list[Image.Image]]


def _check_prompts_file_output(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.grid:
        raise InputError("--grid draws one prompt's images together; --prompts-file writes a file per image")
    if args.output.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"with --prompts-file, -o is the folder the images go to, got {args.output}")
    check_output_folder(args.output, "-o")


def _output_files(args: argparse.Namespace) -> list[Path]:
    """Where one prompt's images go: -o itself (one image, or --grid), else numbered files beside it."""
    return numbered_paths(args.output, 1 if args.grid else args.num_images)


def _check_output_files(args: argparse.Namespace) -> None:
    if args.output.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"--output must end in one of {', '.join(IMAGE_SUFFIXES)}, got {args.output.name}")
    for path in _output_files(args):
        check_output_file(path, "-o")


def _draw_prompts_file(load: Callable[[], Drawer], prompts: list[str], seed: int, args: argparse.Namespace) -> int:
    """Every prompt's images into ``args.output``, ``args.batch_size`` prompts per pipeline call, image k of
    prompt i from ``seed + i * n + k``; prompts whose images are all there already are skipped (each image is
    its seed's, so a rerun finishes an interrupted one), and the model is not loaded when none is left."""
    n = args.num_images
    done = [all((args.output / name).is_file() for name in image_names(i, n)) for i in range(len(prompts))]
    todo = [i for i, there in enumerate(done) if not there]
    for name in (name for i in todo for name in image_names(i, n)):
        check_output_file(args.output / name, "-o")  # a folder where an image goes would fail after drawing
    draw = load() if todo else None
    args.output.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="prompts", disable=args.quiet) as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            seeds = [seed + i * n + k for i in batch for k in range(n)]
            images = draw([prompts[i] for i in batch], seeds)
            names = [name for i in batch for name in image_names(i, n)]
            for image, name in zip(images, names, strict=True):
                with atomic_path(args.output / name) as tmp:  # a killed run leaves no half-written image
                    image.save(tmp, format="PNG")
            bar.update(len(batch))
    print(f"{len(prompts) * n} images in {args.output} ({len(todo) * n} drawn now)")
    return 0


def _drawer(folder: Path, args: argparse.Namespace, init_image: Image.Image | None) -> Drawer:
    from arvision.pipelines.vila_u import is_vila_u_folder

    return _vila_u_drawer(folder, args) if is_vila_u_folder(folder) else _hart_drawer(folder, args, init_image)


def _hart_drawer(folder: Path, args: argparse.Namespace, init_image: Image.Image | None) -> Drawer:
    from arvision.pipelines.hart import HartPipeline

    pipe = HartPipeline.from_pretrained(
        folder,
        use_ema=not args.raw_weights,
        text_encoder=args.text_encoder,
        torch_dtype=torch_dtype(args.dtype or "float32"),
        device=args.device,
    )
    # Options not given keep the pipeline's defaults (guidance_scale and top_k may come from the folder).
    given = _given(
        args,
        guidance_scale=args.cfg,
        guidance_schedule=args.guidance_schedule,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
    )

    def draw(prompts: list[str], seeds: list[int] | None) -> list[Image.Image]:
        out = pipe(
            prompts,
            **given,
            height=args.size,
            width=args.size,
            num_images_per_prompt=args.num_images,
            generator=[seeded_generator(seed, pipe.device) for seed in seeds or ()] or None,
            negative_prompt=args.negative_prompt,
            discrete_only=args.discrete_only,
            more_smooth=args.more_smooth,
            diffusion_steps=args.diffusion_steps,
            image=init_image,
            strength=args.strength,
            progress=not args.quiet,
        )
        return out.images

    return draw


def _given(args: argparse.Namespace, **options: object) -> dict[str, object]:
    """The sampling options the command line set (not None), for a pipeline call to use over its defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _vila_u_drawer(folder: Path, args: argparse.Namespace) -> Drawer:
    from arvision.pipelines.vila_u import VilaUPipeline, refuse_hart_options

    hart_only = [
        flag
        for flag, used in [
            ("--size", args.size),
            ("--guidance-schedule", args.guidance_schedule),
            ("--negative-prompt", args.negative_prompt),
            ("--discrete-only", args.discrete_only),
            ("--diffusion-steps", args.diffusion_steps),
            ("--more-smooth", args.more_smooth is not None),
            ("--image", args.image),
            ("--text-encoder", args.text_encoder),
        ]
        if used
    ]
    refuse_hart_options(hart_only, str(folder))
    pipe = VilaUPipeline.from_pretrained(folder, device=args.device, dtype=torch_dtype(args.dtype))
    pipe.progress = not args.quiet
    given = _given(args, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)

    def draw(prompts: list[str], seeds: list[int] | None) -> list[Image.Image]:
        return pipe.generate_image(prompts, n=args.num_images, seed=seeds, **given)

    return draw
