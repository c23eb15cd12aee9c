"""What the pipelines share of diffusers' and transformers' calling conventions."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from arvision.errors import InputError


class ProgressBars:
    """A pipeline's progress bars, on unless switched off: ``progress`` is what calls use when they name none."""

    progress: bool = True

    def set_progress_bar_config(self, disable: bool = False) -> None:
        """diffusers' switch: ``disable=True`` turns the bars of later calls off (a call's own ``progress``
        argument, where it has one, still wins)."""
        self.progress = not disable


def to_arguments(
    device: torch.device | str | torch.dtype | None, dtype: torch.dtype | None
) -> tuple[torch.device | None, torch.dtype | None]:
    """``pipe.to(torch.float16)`` as in diffusers and torch: a dtype given in the device's place is the dtype.
    Both are checked (:func:`checked_device`, :func:`checked_dtype`)."""
    if isinstance(device, torch.dtype):
        if dtype is not None:
            raise InputError(f"to() got two dtypes, {device} and {dtype}")
        return None, checked_dtype(device, "dtype")
    return checked_device(device), checked_dtype(dtype, "dtype")


def checked_dtype(dtype: object, name: str) -> torch.dtype | None:
    """``dtype`` if it is None or a floating-point torch dtype (the weights' dtype: an integer one would cast
    them to whole numbers, a string fails deep inside torch); an InputError naming ``name`` otherwise."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"{name} must be a floating-point torch dtype such as torch.float16, got {dtype!r}")
    return dtype


def checked_device(device: object) -> torch.device | None:
    """``device`` (None, a name such as ``"cuda:0"`` or a torch.device) as a torch.device; an InputError naming it
    if torch does not know it, or if it is a CUDA device this machine does not have."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r} (e.g. 'cpu', 'cuda', 'cuda:1'): {exc}") from exc
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise InputError(
            f"device {str(device)!r} is not available: this machine has {torch.cuda.device_count()} CUDA devices"
        )
    return device


def pretrained_dtype(dtype: torch.dtype | None, torch_dtype: torch.dtype | None) -> torch.dtype | None:
    """``from_pretrained``'s dtype under either name, transformers' ``dtype`` or diffusers' ``torch_dtype``."""
    dtype, torch_dtype = checked_dtype(dtype, "dtype"), checked_dtype(torch_dtype, "torch_dtype")
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise InputError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree: pass one of them")
    return dtype if dtype is not None else torch_dtype


def model_folder(folder: object) -> Path:
    """``from_pretrained``'s folder as a Path; an InputError for anything that is not a path."""
    if not isinstance(folder, str | os.PathLike):
        raise InputError(f"the model folder must be a path, got {type(folder).__name__}")
    return Path(folder)
