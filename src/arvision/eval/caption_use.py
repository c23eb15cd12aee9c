"""Does a text-to-image HART read its captions? Per-scale cross-entropy of the true tokens of real images
under three conditions: the right captions, the same captions shuffled among the images, and none.

"shuffled" minus "right" is what the caption's *content* is worth; "unconditional" minus "shuffled" is
what merely having a caption is worth. A model that has learnt to draw what it is told shows a clear gap
between right and shuffled captions at the coarse scales, where colours and shapes are decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arvision.errors import InputError
from arvision.models.hart import HartTransformer
from arvision.models.hart_sampler import Condition, unconditional
from arvision.tokenizers.multiscale_quantizer import MultiScaleQuantizer
from arvision.tokenizers.schedules import schedule_of


@dataclass
class CaptionUse:
    """Mean cross-entropy (nats per token) of each scale of ``patch_nums`` under each condition."""

    patch_nums: tuple[int, ...]
    right: list[float]
    shuffled: list[float]
    unconditional: list[float]


@torch.no_grad()
def per_scale_cross_entropy(
    transformer: HartTransformer, quantizer: MultiScaleQuantizer, indices: Sequence[torch.Tensor], cond: Condition
) -> list[float]:
    """Teacher-forced cross-entropy of the per-scale targets ``indices`` ([B, pn^2] each), averaged per scale."""
    patch_nums = schedule_of(indices)
    x = quantizer.indices_to_ar_input(list(indices), patch_nums)
    everything = torch.arange(patch_nums[-1] ** 2, device=x.device).expand(len(x), -1)
    logits, _ = transformer(
        x,
        context=cond.context,
        context_mask=cond.context_mask,
        context_position_ids=cond.position_ids,
        keep_last=everything,
        patch_nums=patch_nums,
    )
    ce = F.cross_entropy(logits.flatten(0, 1).float(), torch.cat(list(indices), 1).flatten(), reduction="none")
    return [part.mean().item() for part in ce.view(len(x), -1).split([pn * pn for pn in patch_nums], dim=1)]


def caption_use(
    transformer: HartTransformer, quantizer: MultiScaleQuantizer, indices: Sequence[torch.Tensor], cond: Condition
) -> CaptionUse:
    """``cond`` holds each image's own caption; "shuffled" gives image ``i`` the caption of image ``i + 1``."""
    if cond.context is None:
        raise InputError("caption_use needs a text-conditional model (a context, not class labels)")
    if len(indices[0]) < 2:
        raise InputError("caption_use needs at least two images, to shuffle their captions")
    shuffled = Condition(*(t.roll(-1, dims=0) for t in (cond.context, cond.context_mask, cond.position_ids)))
    return CaptionUse(
        patch_nums=schedule_of(indices),
        right=per_scale_cross_entropy(transformer, quantizer, indices, cond),
        shuffled=per_scale_cross_entropy(transformer, quantizer, indices, shuffled),
        unconditional=per_scale_cross_entropy(transformer, quantizer, indices, unconditional(transformer, cond)),
    )
