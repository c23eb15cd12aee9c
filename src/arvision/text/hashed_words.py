"""A stand-in tokenizer for VILA-U's SigLIP text tower: VILA-U releases ship no SigLIP tokenizer.

Each lower-cased word (a run of letters and digits) gets a fixed id, its CRC32 modulo the vocabulary
with the pad id skipped; sequences are truncated and padded to the full length with the pad id, as
SigLIP pads (its text tower pools the last position). Word order and identity survive; sub-word
structure does not, and ids mean nothing to a text tower pretrained with the real tokenizer, so use
it with a text tower that was trained on these ids or is random (the built-in world's default).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch

_WORD = re.compile(r"[a-z0-9]+")


def word_id(word: str, vocab_size: int, pad_id: int) -> int:
    """The id of one lower-cased word: in ``[0, vocab_size)``, never ``pad_id``."""
    token = zlib.crc32(word.encode()) % (vocab_size - 1)
    return token + int(token >= pad_id)


def hashed_word_ids(captions: Sequence[str], vocab_size: int, length: int, pad_id: int) -> torch.Tensor:
    """Captions -> ids [B, length] (int64): one id per word, truncated, then padded with ``pad_id``."""
    rows = []
    for caption in captions:
        ids = [word_id(w, vocab_size, pad_id) for w in _WORD.findall(caption.lower())[:length]]
        rows.append(ids + [pad_id] * (length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)
