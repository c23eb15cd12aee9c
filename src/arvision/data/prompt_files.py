"""Prompt sets on disk: a text file of prompts, one per line, and the names of the numbered images drawn for it
(``arvision generate --prompts-file``)."""

from __future__ import annotations

import os
from pathlib import Path

from arvision.data.user import text_lines
from arvision.errors import InputError


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a UTF-8 text file, one per line, stripped; blank lines are skipped (and not numbered)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    prompts = [line.strip() for line in text_lines(path) if line.strip()]
    if not prompts:
        raise InputError(f"no prompts in {path}: write one per line")
    return prompts


def image_names(prompt: int, count: int) -> list[str]:
    """The file names of prompt number ``prompt``'s ``count`` images: ``00007.png``, or ``00007_0.png`` ..."""
    return [f"{prompt:05d}.png"] if count == 1 else [f"{prompt:05d}_{k}.png" for k in range(count)]
