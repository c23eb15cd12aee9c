"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_arguments(p: argparse.ArgumentParser, dtype_default: str | None, dtype_help: str) -> None:
    """``--device`` (default: CUDA when available) and ``--dtype`` (one of :data:`DTYPES`)."""
    p.add_argument("--device", default=default_device(), help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=dtype_default, help=dtype_help)


def torch_dtype(name: str | None) -> torch.dtype | None:
    return DTYPES[name] if name else None


def numbered_paths(output: Path, count: int) -> list[Path]:
    """``output`` itself for one file, else ``stem-000.ext``, ``stem-001.ext``, ... beside it."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i:03d}{output.suffix}") for i in range(count)]
