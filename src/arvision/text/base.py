"""Text-encoder interface: prompts -> per-token hidden states right-padded to a fixed context length."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from arvision.errors import InputError


@dataclass
class TextEncoding:
    """hidden [B, T, D] fp32, mask [B, T] bool (True on real tokens, right padding), position ids
    [B, T] int64 = cumsum(mask) - 1 (padding repeats the last real position)."""

    hidden: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor

    def repeat_interleave(self, n: int) -> TextEncoding:
        return TextEncoding(*(t.repeat_interleave(n, dim=0) for t in (self.hidden, self.mask, self.position_ids)))


class TextEncoder(Protocol):
    """Anything that turns prompts into a :class:`TextEncoding` of ``max_length`` tokens of ``hidden_size``."""

    hidden_size: int
    max_length: int

    def encode(self, prompts: Sequence[str]) -> TextEncoding: ...

    def token_count(self, prompt: str) -> int:
        """Tokens in ``prompt``; beyond ``max_length`` the encoding keeps the first ``max_length``."""
        ...


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """One prompt or a list of them, each non-empty after stripping whitespace."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, bytes | bytearray):  # a Sequence of ints, whose first would be named as the prompt
        raise InputError("got bytes as the prompt: pass text (decode the bytes first)")
    if not isinstance(prompts, Sequence):
        raise InputError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompt given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"prompt {i} must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InputError(f"prompt {i} is empty; describe the image to generate")
    return prompts
