"""HART training objective: teacher-forced next-scale cross-entropy over all scales plus the residual
diffusion loss on the (subsampled) last scale.

* Condition dropout for classifier-free guidance replaces a row's condition by the one the sampler
  uses as "unconditional" (zero context, zero positions, one-token mask; or the null class). The rate
  means what it says: ``rand < rate``. (The released forward uses ``randn < rate``, which drops ~54% of
  rows at 0.1, and keeps the real positions/mask for dropped rows.)
* Last-scale token subsampling (MAR-style, as in the released forward): one masking rate per batch
  from a normal(1, 0.25) truncated to [0.5, 1], at least ``min_keep`` tokens kept, a random subset per
  sample; the dropped tokens are removed from the sequence.
* The diffusion head learns r_pre - e[idx] where idx is sampled from the model's own (detached)
  last-scale logits (top-k 600, top-p 0.96), conditioned on RMSNorm(h + word_embed(e[idx])).
* ``train_scales`` (not in the released recipe) trains the cross-entropy of the first scales only: the
  block-causal mask makes their logits the same as in the full pass, the diffusion loss is off (it needs
  the last scale), and at 64 px the first 7 of 10 scales are a quarter of the sequence. It spends a small
  budget on the coarse scales, which decide the colours and where they go; the shapes are drawn by the
  last scales (``scripts/eval_tokenizer.py --scale-readback``).

Randomness: the subsampling rate, one per batch, comes from the ``generator`` argument, which the training
loop makes identical on every rank (so every rank trains as many tokens and none waits for the others). Every
per-row draw (condition dropout, the kept tokens, the sampled tokens, diffusion timesteps and noise) comes from
the global RNG of its device, which the loop seeds and checkpoints per rank: N ranks draw for N times the rows,
and a resume replays them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arvision.models.hart import HartTransformer
from arvision.models.hart_sampler import Condition, unconditional
from arvision.nn.sampling import sample_logits
from arvision.tokenizers.multiscale_quantizer import MultiScaleQuantizer
from arvision.tokenizers.schedules import schedule_of


@dataclass
class HartLossConfig:
    """Loss weights and sampling knobs. ``cond_drop_rate`` / ``diffusion_batch_mul`` left at None take
    the model config's values (official ``llm/config.json`` keys, 0.1 and 4)."""

    ce_weight: float = 1.0
    diffusion_weight: float = 1.0
    cond_drop_rate: float | None = None
    subsample_last: bool = True
    mask_ratio_min: float = 0.5
    mask_ratio_std: float = 0.25
    min_keep: int = 32
    diffusion_batch_mul: int | None = None
    diffusion_top_k: int = 600
    diffusion_top_p: float = 0.96
    train_scales: int | None = None  # train only the first N scales (no diffusion loss); None: all


@dataclass
class HartLoss:
    """The weighted total to backpropagate, its detached terms, and the random choices it was made with."""

    loss: torch.Tensor
    ce: torch.Tensor
    diffusion: torch.Tensor
    kept_last: torch.Tensor  # [B, n] last-scale token indices that were trained on
    dropped: torch.Tensor  # [B] bool, rows whose condition was dropped


def condition_dropout_mask(batch: int, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] bool, each row dropped with probability ``rate`` (drawn from ``generator``, default the global RNG)."""
    return torch.rand(batch, generator=generator) < rate


def drop_conditions(model: HartTransformer, cond: Condition, drop: torch.Tensor) -> Condition:
    """Replace the dropped rows by the sampler's unconditional input (out of place)."""
    null = unconditional(model, cond)
    drop = drop.to((cond.labels if cond.labels is not None else cond.context).device)
    if cond.labels is not None:
        return Condition(labels=torch.where(drop, null.labels, cond.labels))
    return Condition(
        torch.where(drop[:, None, None], null.context, cond.context),
        torch.where(drop[:, None], null.context_mask, cond.context_mask),
        torch.where(drop[:, None], null.position_ids, cond.position_ids),
    )


def last_scale_keep(
    batch: int, tokens: int, config: HartLossConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sorted [B, n_keep] indices of the last-scale tokens to train on (all of them if disabled): ``n_keep``,
    one for the batch, is drawn from ``generator``; each row's tokens from the global RNG."""
    if not config.subsample_last:
        return torch.arange(tokens).expand(batch, -1)
    # truncated normal by inverse CDF, so the generator alone decides the draw
    lo = torch.special.ndtr(torch.tensor((config.mask_ratio_min - 1.0) / config.mask_ratio_std, dtype=torch.float64))
    u = lo + (0.5 - lo) * torch.rand((), generator=generator, dtype=torch.float64)
    rate = 1.0 + config.mask_ratio_std * torch.special.ndtri(u).item()
    n_keep = tokens - min(math.ceil(tokens * rate), tokens - min(config.min_keep, tokens))
    order = torch.rand(batch, tokens).argsort(dim=1)
    return order[:, :n_keep].sort(dim=1).values


def hart_loss(
    model: HartTransformer,
    quantizer: MultiScaleQuantizer,
    indices: Sequence[torch.Tensor],
    residual: torch.Tensor,
    cond: Condition,
    config: HartLossConfig | None = None,
    generator: torch.Generator | None = None,
) -> HartLoss:
    """Training loss for one batch.

    indices: per-scale [B, pn^2] targets (``quantizer.latent_to_indices``; their sizes give the
    schedule, so lower-resolution batches train the same model); residual: the latent left before the
    last discrete scale, r_pre [B, Cvae, P, P]; cond: text context or labels. ``generator`` (a CPU
    generator) draws the batch's subsampling rate, the global RNGs every per-row choice (module docstring):
    the same seeds for both make a step reproducible.
    """
    config = config or HartLossConfig()
    patch_nums = schedule_of(indices)
    B, device = indices[0].shape[0], indices[0].device
    n_last = patch_nums[-1] ** 2
    scales = len(patch_nums) if config.train_scales is None else config.train_scales
    if not 1 <= scales <= len(patch_nums):
        raise ValueError(f"train_scales must be between 1 and {len(patch_nums)} (the schedule), got {scales}")
    coarse = scales < len(patch_nums)

    with torch.no_grad():
        x = quantizer.indices_to_ar_input(list(indices), patch_nums)
    drop_rate = config.cond_drop_rate if config.cond_drop_rate is not None else model.config.cond_drop_rate
    dropped = condition_dropout_mask(B, drop_rate)
    cond = drop_conditions(model, cond, dropped)
    keep = torch.zeros(B, 0, dtype=torch.long) if coarse else last_scale_keep(B, n_last, config, generator)
    keep = keep.to(device)

    logits, h_last = model(
        x,
        context=cond.context,
        context_mask=cond.context_mask,
        context_position_ids=cond.position_ids,
        labels=cond.labels,
        keep_last=None if coarse else keep,
        patch_nums=patch_nums,
        scales=scales,
    )
    last = [] if coarse else [indices[-1].gather(1, keep)]
    targets = torch.cat([*indices[: min(scales, len(patch_nums) - 1)], *last], dim=1)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    if coarse:
        return HartLoss(config.ce_weight * ce, ce.detach(), ce.new_zeros(()), kept_last=keep, dropped=dropped)

    n_keep = keep.shape[1]
    with torch.no_grad():
        top_k = min(config.diffusion_top_k, model.config.vocab_size)
        sampled = sample_logits(logits[:, -n_keep:].detach(), top_k=top_k, top_p=config.diffusion_top_p)
        codes = quantizer.embedding(sampled).detach()
        r_pre = residual.flatten(2).transpose(1, 2).gather(1, keep[..., None].expand(-1, -1, residual.shape[1]))
    z = model.diffusion_condition(h_last, codes).flatten(0, 1)
    target = (r_pre - codes).flatten(0, 1)
    mul = config.diffusion_batch_mul or model.config.diffusion_batch_mul
    diff = model.diffloss.loss(target.repeat(mul, 1), z.repeat(mul, 1)).mean()
    loss = config.ce_weight * ce + config.diffusion_weight * diff
    return HartLoss(loss=loss, ce=ce.detach(), diffusion=diff.detach(), kept_last=keep, dropped=dropped)
