"""Next-scale token-map schedules ("patch_nums"): the side length of each scale's token grid.

The presets are the official 256/512/1024 px schedules for a 16x-downsampling tokenizer; they are keyed
by resolution but really describe a latent grid (16, 32, 64), which is how
:func:`schedule_for_latent` picks one for any tokenizer.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from arvision.errors import InputError

PATCH_NUMS: dict[int, tuple[int, ...]] = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}


# The largest token grid HART generates: the last scale of its 1024 px schedule.
MAX_LATENT_SIZE = PATCH_NUMS[1024][-1]


def schedule_of(indices: Sequence) -> tuple[int, ...]:
    """The schedule of per-scale token maps ``[B, pn^2]`` (their square sizes give it back)."""
    return tuple(int(round(idx.shape[1] ** 0.5)) for idx in indices)


def geometric_schedule(latent_size: int) -> tuple[int, ...]:
    """A schedule for grids without a preset: 1, 2, 3, 4, then x1.5 per scale, ending at ``latent_size``."""
    if latent_size < 2:
        raise InputError(
            f"the latent grid must be at least 2x2 for multi-scale tokens, got {latent_size}x{latent_size}"
        )
    sizes = [s for s in (1, 2, 3, 4) if s < latent_size]
    while sizes and round(sizes[-1] * 1.5) < latent_size and sizes[-1] >= 4:
        sizes.append(round(sizes[-1] * 1.5))
    return (*sizes, latent_size)


def schedule_for_latent(latent_size: int, default: Sequence[int] | None = None) -> tuple[int, ...]:
    """A schedule whose last scale is ``latent_size``: ``default`` if it fits, else a preset, else
    :func:`geometric_schedule`."""
    if default is not None and default[-1] == latent_size:
        return tuple(default)
    for schedule in PATCH_NUMS.values():
        if schedule[-1] == latent_size:
            return schedule
    return geometric_schedule(latent_size)


def validate_schedule(patch_nums: Sequence[int], name: str = "patch_nums") -> tuple[int, ...]:
    """Check that a schedule is a strictly increasing sequence of at least two positive sizes (whole numbers:
    int() would read "8" or truncate 2.5, hiding a malformed config); errors call it ``name``."""
    if isinstance(patch_nums, str | bytes) or not isinstance(patch_nums, Sequence):
        raise InputError(f"{name} must be a list of whole numbers, got {patch_nums!r:.80}")
    if not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in patch_nums):
        raise InputError(f"{name} must be a list of whole numbers, got {list(patch_nums)!r:.80}")
    patch_nums = tuple(int(p) for p in patch_nums)
    if len(patch_nums) < 2 or patch_nums[0] < 1 or any(b <= a for a, b in zip(patch_nums, patch_nums[1:])):
        raise InputError(f"{name} must increase strictly from >= 1 over >= 2 scales, got {patch_nums}")
    return patch_nums
