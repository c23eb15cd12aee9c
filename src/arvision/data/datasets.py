"""torch datasets over the procedural world. Item ``i`` is the world's sample ``i``; every random choice
(which caption, which questions) comes from the world's per-index generator, never from global RNG."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from arvision.data.captions import attribute_subject, without_answer_leaks
from arvision.data.world import ProceduralWorld
from arvision.errors import InputError
from arvision.imaging import pil_to_tensor

CAPTION_STREAM, VQA_STREAM, VIDEO_CAPTION_STREAM = 2, 3, 4  # generator streams next to the world's own 0 and 1


class _WorldDataset(Dataset):
    def __init__(self, world: ProceduralWorld, length: int = 100_000) -> None:
        self.world, self.length = world, length

    def __len__(self) -> int:
        return self.length

    def _check(self, index: int) -> None:
        if not 0 <= index < self.length:
            raise IndexError(index)


class WorldImages(_WorldDataset):
    """Text-to-image pairs: ``{"image": [3, H, W] in [-1, 1], "caption": str, "index": int}``.

    The caption is one of the scene's phrasings, picked per index. The world is infinite; ``length``
    only sets what one epoch is.
    """

    def fingerprint(self) -> dict[str, Any]:
        """What fixes the items (see :class:`~arvision.training.latent_cache.CacheableDataset`)."""
        return {"dataset": "WorldImages", "world": self.world.fingerprint(), "length": self.length}

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._check(index)
        sample = self.world.sample(index)
        caption = sample.captions[self.world.rng(index, CAPTION_STREAM).integers(len(sample.captions))]
        return {"image": pil_to_tensor(sample.image)[0], "caption": caption, "index": index}


class WorldVQA(_WorldDataset):
    """Understanding data, the same item layout as :class:`arvision.data.user.VQADataset`:
    ``{"pixels": [3, H, W], "is_video": False, "turns": [(question, answer), ...], "index": int}`` with
    up to ``turns_per_item`` question-answer pairs drawn per index, ordered so that no colour or shape answer
    can be read off an earlier turn (:func:`~arvision.data.captions.without_answer_leaks`; without it, 40% of
    those answers in 8-turn items were). ``attribute_fraction`` of the items (drawn per index) ask only
    colour and shape questions, the ones a model must look hardest to answer; at 0 the draws are those of
    earlier versions. Batch with ``collate_fn=list``.
    """

    def __init__(
        self, world: ProceduralWorld, length: int = 100_000, turns_per_item: int = 3, attribute_fraction: float = 0.0
    ) -> None:
        super().__init__(world, length)
        if not 0.0 <= attribute_fraction <= 1.0:
            raise InputError(f"attribute_fraction must be in [0, 1], got {attribute_fraction}")
        self.turns_per_item, self.attribute_fraction = turns_per_item, attribute_fraction

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._check(index)
        sample = self.world.sample(index)
        rng = self.world.rng(index, VQA_STREAM)
        pool = sample.vqa
        if self.attribute_fraction > 0 and rng.random() < self.attribute_fraction:
            # A scene can have none (two shapes in two colours each): it keeps all its questions.
            pool = [qa for qa in sample.vqa if attribute_subject(qa[0], sample.graph.objects) is not None] or pool
        picks = rng.choice(len(pool), size=min(self.turns_per_item, len(pool)), replace=False)
        turns = without_answer_leaks([pool[k] for k in picks], sample.graph)
        return {"pixels": pil_to_tensor(sample.image)[0], "is_video": False, "turns": turns, "index": index}


class WorldVideos(_WorldDataset):
    """Text-to-video pairs: ``{"frames": [num_frames, 3, H, W] in [-1, 1], "caption": str, "index": int}``."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._check(index)
        video = self.world.video(index)
        caption = video.captions[self.world.rng(index, VIDEO_CAPTION_STREAM).integers(len(video.captions))]
        frames: torch.Tensor = pil_to_tensor(video.frames)
        return {"frames": frames, "caption": caption, "index": index}
