"""Prompt sets on disk: a text file of prompts, one per line, and the folder of numbered images drawn for it
(``arvision generate --prompts-file``), which prompt-set metrics (CLIP score) read back in pairs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from arvision.data.user import text_lines
from arvision.errors import InputError

_IMAGE_NAME = re.compile(r"(\d{5,})(?:_(\d+))?\.png")  # what image_names writes


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a UTF-8 text file, one per line, stripped; blank lines are skipped (and not numbered)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a prompts file")
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    prompts = [line.strip() for line in text_lines(path) if line.strip()]
    if not prompts:
        raise InputError(f"no prompts in {path}: write one per line")
    return prompts


def image_names(prompt: int, count: int) -> list[str]:
    """The file names of prompt number ``prompt``'s ``count`` images: ``00007.png``, or ``00007_0.png`` ..."""
    return [f"{prompt:05d}.png"] if count == 1 else [f"{prompt:05d}_{k}.png" for k in range(count)]


def paired_images(folder: str | os.PathLike, prompts: list[str]) -> list[tuple[Path, str]]:
    """Every image of a ``--prompts-file`` folder (named by :func:`image_names`) with the prompt it was drawn for,
    in the order of prompts and then images (numeric: ``100000.png`` comes after ``99999.png``). A folder without
    such images, or with numbers past the prompts (another prompt file's images), is an :class:`InputError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    numbered = []
    for path in folder.iterdir():
        match = _IMAGE_NAME.fullmatch(path.name)
        if match is not None:
            numbered.append((int(match.group(1)), int(match.group(2) or -1), path))
    pairs = []
    for number, _, path in sorted(numbered):
        if number >= len(prompts):
            raise InputError(
                f"{path.name} is an image of prompt {number}, but the prompts file has {len(prompts)} prompts: "
                "were the images drawn for another file?"
            )
        pairs.append((path, prompts[number]))
    if not pairs:
        raise InputError(f"no prompt-set images (00000.png, 00000_0.png, ...) in {folder}")
    return pairs
