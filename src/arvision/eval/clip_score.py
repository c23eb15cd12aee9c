"""CLIP score: how well generated images match their prompts, the other metric of the HART and VILA-U papers'
generation tables beside FID.

Per image, ``100 * max(cos(image embedding, prompt embedding), 0)`` between a CLIP's projected embeddings (the
definition of torchmetrics' ``CLIPScore``), averaged over the set. The CLIP is a local transformers folder
(``CLIPModel`` weights, its tokenizer and image processor, e.g. ``openai/clip-vit-large-patch14`` as saved
elsewhere); nothing is downloaded here. torchmetrics' own ``CLIPScore`` is not used: it expects
``get_image_features`` to return a tensor, which transformers 5 no longer does, so the embeddings are taken
from the vision and text towers' pooled outputs and projections, as that method computes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from tqdm.auto import tqdm

from arvision.errors import CheckpointError, InputError
from arvision.imaging import load_image


@dataclass
class Clip:
    """A CLIP model (``transformers.CLIPModel``) with the tokenizer and image processor of its folder."""

    model: Any
    tokenizer: Any
    image_processor: Any

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_clip(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Clip:
    """The CLIP of a local transformers folder (config.json, weights, tokenizer and preprocessor files), in eval
    mode on ``device``; a folder that is missing or holds no CLIP is a :class:`CheckpointError` naming it."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no CLIP model folder at {folder} (config.json missing); nothing is downloaded")
    try:
        model = CLIPModel.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        image_processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # SafetensorError: a damaged file
        raise CheckpointError(f"{folder} is not a CLIP folder of transformers: {str(exc).splitlines()[0]}") from None
    return Clip(model.eval().to(device), tokenizer, image_processor)


@torch.no_grad()
def clip_scores(
    clip: Clip,
    images: Sequence[Image.Image | str | os.PathLike],
    prompts: Sequence[str],
    batch_size: int = 32,
    progress: bool = True,
) -> torch.Tensor:
    """The CLIP score [N] of each image (a PIL image or a file, read a batch at a time) against its prompt
    (prompts longer than the text tower's context are cut to it, as CLIP's tokenizer does)."""
    if len(images) != len(prompts) or not images:
        raise InputError(f"{len(images)} images for {len(prompts)} prompts: give one prompt per image, at least one")
    model, context = clip.model, clip.model.config.text_config.max_position_embeddings
    scores = []
    for start in tqdm(range(0, len(images), batch_size), desc="CLIP score", disable=not progress, leave=False):
        batch = slice(start, start + batch_size)
        pixels = clip.image_processor(images=[load_image(image) for image in images[batch]], return_tensors="pt")
        text = clip.tokenizer(
            list(prompts[batch]), padding=True, truncation=True, max_length=context, return_tensors="pt"
        ).to(clip.device)
        vision = model.vision_model(pixel_values=pixels["pixel_values"].to(clip.device, model.dtype))
        words = model.text_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        image_embeds = model.visual_projection(vision.pooler_output)
        text_embeds = model.text_projection(words.pooler_output)
        scores.append((100 * F.cosine_similarity(image_embeds, text_embeds, dim=-1)).clamp(min=0).float().cpu())
    return torch.cat(scores)
