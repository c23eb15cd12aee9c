"""What the pipelines share of diffusers' and transformers' calling conventions."""

from __future__ import annotations

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
) -> tuple[torch.device | str | None, torch.dtype | None]:
    """``pipe.to(torch.float16)`` as in diffusers and torch: a dtype given in the device's place is the dtype."""
    if isinstance(device, torch.dtype):
        if dtype is not None:
            raise InputError(f"to() got two dtypes, {device} and {dtype}")
        return None, device
    return device, dtype


def pretrained_dtype(dtype: torch.dtype | None, torch_dtype: torch.dtype | None) -> torch.dtype | None:
    """``from_pretrained``'s dtype under either name, transformers' ``dtype`` or diffusers' ``torch_dtype``."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise InputError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree: pass one of them")
    return dtype if dtype is not None else torch_dtype
