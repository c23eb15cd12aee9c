"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from arvision.errors import InputError
from arvision.nn.sampling import SEED_LIMIT
from arvision.tokenizers.schedules import MAX_LATENT_SIZE

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_device(text: str) -> str:
    """``--device``'s type: a torch device this machine has (argparse names the problem otherwise)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this PyTorch build sees no CUDA device; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use cpu")
    return text


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device`` (default: CUDA when available), checked to be one this machine has."""
    p.add_argument(
        "--device",
        type=usable_device,
        default=default_device(),
        help="torch device (default: cuda if available, else cpu)",
    )


def add_device_arguments(p: argparse.ArgumentParser, dtype_default: str | None, dtype_help: str) -> None:
    """``--device`` and ``--dtype`` (one of :data:`DTYPES`)."""
    add_device_argument(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=dtype_default, help=dtype_help)


def torch_dtype(name: str | None) -> torch.dtype | None:
    return DTYPES[name] if name else None


def numbered_paths(output: Path, count: int) -> list[Path]:
    """``output`` itself for one file, else ``stem-000.ext``, ``stem-001.ext``, ... beside it."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i:03d}{output.suffix}") for i in range(count)]


def check_output_file(path: Path, flag: str) -> None:
    """Refuse, before any model loads, an output file that cannot be written: a folder at ``path``, or a file
    where one of its parent folders would be (the write would fail only after all the work)."""
    if path.is_dir():
        raise InputError(f"cannot write {flag} {path}: it is a folder")
    _check_no_file_above(path.parent, flag, path)


def check_image_output(path: Path, flag: str) -> None:
    """:func:`check_output_file` for an image, whose suffix must name a format PIL writes (it picks it by the
    suffix, and would fail only at the save)."""
    from PIL import Image

    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format not in Image.SAVE:
        raise InputError(f"cannot write {flag} {path}: '{path.suffix}' is not an image format PIL writes (.png, .jpg)")
    check_output_file(path, flag)


def check_output_folder(path: Path, flag: str) -> None:
    """Refuse, before any model loads, an output folder that cannot be made: a file at ``path`` or where one of
    its parent folders would be."""
    _check_no_file_above(path, flag, path)


def _check_no_file_above(folder: Path, flag: str, output: Path) -> None:
    """The nearest existing one of ``folder`` and its parents must be a folder (the others can be created)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "it" if existing == output else str(existing)
        raise InputError(f"cannot write {flag} {output}: {where} is a file, not a folder")


def check_tokenizer_size(size: int, downsample: int) -> None:
    """``--size`` of a tokenizer round trip: a multiple of its downsampling, with a token grid of 2x2 (the least
    a multi-scale schedule takes) to HART's largest (a larger image only exhausts memory), checked before any
    image is resized to it."""
    low, high = 2 * downsample, MAX_LATENT_SIZE * downsample
    if not low <= size <= high:
        raise InputError(
            f"--size must be within {low}..{high} for this tokenizer (token grids of 2x2 to "
            f"{MAX_LATENT_SIZE}x{MAX_LATENT_SIZE}, {downsample}px per token), got {size}"
        )
    if size % downsample:
        raise InputError(f"--size {size} is not a multiple of the tokenizer's downsampling factor {downsample}")


def silence_library_progress() -> None:
    """``--quiet``: also hide the bars transformers draws while it loads weights (a process-wide switch)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


SEED_RANGE = (0, SEED_LIMIT - 1)  # what the pipelines take (nn.sampling.seeded_generator)


def per_image_seeds(seed: int, count: int, flag: str = "--seed") -> list[int]:
    """``--seed S`` (``flag``) for ``count`` images (videos, answers): S, S + 1, ..., each drawn from its own."""
    low, high = SEED_RANGE
    if count < 1:
        raise InputError(f"-n must be at least 1, got {count}")
    if not (low <= seed and seed + count - 1 <= high):
        raise InputError(f"{flag} must be within {low}..{high - count + 1} for {count} results, got {seed}")
    return [seed + i for i in range(count)]
