"""``arvision reconstruct``: encode an image with the hybrid tokenizer, decode it, report PSNR/SSIM."""

from __future__ import annotations

import argparse
from pathlib import Path

from arvision.cli.common import add_device_argument, check_image_output, check_tokenizer_size
from arvision.defaults import DEFAULTS_DIR, default_model_path
from arvision.errors import InputError
from arvision.eval.metrics import psnr, ssim
from arvision.imaging import load_image, pil_to_tensor, resize_center_crop, tensor_to_pil
from arvision.tokenizers.hart_tokenizer import HybridTokenizer

SAMPLE_PHOTO = DEFAULTS_DIR / "samples" / "astronaut.png"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("reconstruct", help="tokenize and reconstruct an image; print PSNR and SSIM")
    p.add_argument(
        "image", type=Path, nargs="?", default=SAMPLE_PHOTO, help="input image (default: a bundled NASA photo)"
    )
    p.add_argument("--mode", choices=("hybrid", "discrete"), default="hybrid")
    p.add_argument("--size", type=int, default=256, help="square working resolution (default 256)")
    p.add_argument("--model", type=Path, default=None, help="tokenizer folder (default: the embedded one)")
    add_device_argument(p)
    p.add_argument("-o", "--output", type=Path, default=Path("reconstruction.png"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from arvision.pipelines.vila_u_checkpoint import is_vila_u_folder

    check_image_output(args.output, "-o")  # before the work, which a bad output would waste
    image = load_image(args.image)
    if args.model is not None and is_vila_u_folder(args.model):
        raise InputError(f"{args.model} is a VILA-U folder; reconstruct takes a HART tokenizer folder")
    tokenizer = HybridTokenizer.from_pretrained(args.model or default_model_path("tokenizer"), device=args.device)
    check_tokenizer_size(args.size, tokenizer.config.downsample)
    target = pil_to_tensor(resize_center_crop(image, args.size)).to(args.device)
    recon = tokenizer.reconstruct(target, mode=args.mode)
    # Measured before anything is written, so that a size the metrics refuse leaves no file behind.
    scores = f"PSNR {psnr(recon, target).item():.2f} dB  SSIM {ssim(recon, target).item():.4f}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        tensor_to_pil(recon)[0].save(args.output)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot write {args.output}: {exc}") from exc
    print(f"{args.mode} reconstruction of {args.image} at {args.size}x{args.size} -> {args.output}")
    print(scores)
    return 0
