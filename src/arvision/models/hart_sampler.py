"""HART's next-scale sampler: KV-cached scale loop with batched classifier-free guidance.

Per scale ``si`` of ``N``: one transformer pass over the new tokens (the context at ``si = 0``),
logits guided as ``(1 + t) * cond - t * uncond`` with ``t = cfg * si / (N - 1)`` -- the last scale
re-uses the ratio of scale ``N - 2``, as the official code does; ``t = cfg`` at every scale with
``guidance_schedule="constant"`` -- then top-k (600 before scale 7,
300 after, clamped to the vocabulary) / top-p / temperature sampling. The sampled codes update the
running latent ``f_hat``; the next scale's input is ``f_hat`` area-downsampled. On the last scale
the residual diffusion head adds a continuous residual to each sampled code (skipped in
discrete-only mode), guided with the same ``t`` -- unless ``t`` is exactly 1, where the official head
samples the conditional branch alone (see :meth:`ResidualDiffusionHead.sample`).

Every random draw comes from one ``torch.Generator`` (token sampling, Gumbel mixing and diffusion
noise), or from one per image, so a seed reproduces the whole output (each image, with one per image). For
parity tests, ``index_provider`` and ``diffusion_noise`` replay recorded indices and noise instead of drawing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from arvision.errors import CheckpointError, InputError
from arvision.models.diffusion_head import NUM_TRAIN_STEPS
from arvision.models.hart import HartConfig, HartTransformer, check_schedule
from arvision.nn.kv_cache import KVCache
from arvision.nn.sampling import (
    Generators,
    check_generators,
    check_guidance,
    check_sampling,
    filter_top_k_top_p,
    guide,
    gumbel_softmax,
    sample_logits,
)
from arvision.validation import check_number

GUIDANCE_SCHEDULES = ("linear", "constant")
INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # what codes may come as


@dataclass
class SamplingOptions:
    """``top_k=None`` uses the official 600/300 schedule; ``more_smooth`` mixes codebook vectors with a
    Gumbel-softmax instead of taking the sampled code (every official script's default; off here, as it hurts
    FID: the pipeline turns it on for official release folders).
    ``guidance_schedule``: ``"linear"`` (official) ramps the guidance from 0 at the 1x1 scale to ``cfg`` at the
    last ones; ``"constant"`` applies ``cfg`` at every scale, the residual head's too (MAR's
    ``cfg_schedule="constant"``). Either way ``more_smooth``'s mixing keeps the official ramp (it is a sharpness
    schedule, not guidance), and a last-scale guidance of exactly 1 samples the residual from the conditional
    branch alone (the official head's quirk): with "constant", ``cfg=1`` guides the tokens but not the residual.
    """

    cfg: float = 4.5
    guidance_schedule: str = "linear"
    top_k: int | None = None
    top_p: float = 0.0
    temperature: float = 1.0
    more_smooth: bool = False
    discrete_only: bool = False
    diffusion_temperature: float = 1.0
    diffusion_steps: int | None = None  # None: the model's num_sampling_steps (HART: 8)

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)
        check_guidance(self.cfg, "guidance_scale (cfg)")
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            known = ", ".join(GUIDANCE_SCHEDULES)
            raise InputError(f"guidance_schedule must be one of {known}, got {self.guidance_schedule!r}")
        check_number(self.diffusion_temperature, "diffusion_temperature")
        if not 0 <= self.diffusion_temperature < math.inf:
            raise InputError(f"diffusion_temperature must be a finite number >= 0, got {self.diffusion_temperature}")
        if self.diffusion_steps is not None:
            check_number(self.diffusion_steps, "diffusion_steps", whole=True)
        if self.diffusion_steps is not None and not 1 <= self.diffusion_steps <= NUM_TRAIN_STEPS:
            raise InputError(f"diffusion_steps must be within 1..{NUM_TRAIN_STEPS}, got {self.diffusion_steps}")


@dataclass
class ScaleStep:
    """What one scale produced: guided logits [B, pn^2, V] (before filtering), sampled indices
    [B, pn^2], the running latent f_hat [B, Cvae, P, P] and the next scale's input map (None at the end)."""

    si: int
    pn: int
    logits: torch.Tensor
    indices: torch.Tensor
    f_hat: torch.Tensor
    next_map: torch.Tensor | None


IndexProvider = Callable[[int, torch.Tensor], torch.Tensor]


def official_top_k(si: int, vocab_size: int) -> int:
    """HART's hard-coded top-k: 600 for scales 0..6, 300 afterwards, never above the vocabulary."""
    return min(600 if si < 7 else 300, vocab_size)


def guidance_ratio(si: int, num_scales: int) -> float:
    """``si / (N - 1)``, except that the last scale keeps the ratio of scale ``N - 2`` (official quirk)."""
    return min(si, num_scales - 2) / (num_scales - 1)


@dataclass
class Condition:
    """Model inputs for one batch: text (context [B, T, D], mask [B, T], position ids [B, T]) or labels [B]."""

    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return (self.labels if self.labels is not None else self.context).shape[0]

    def cat(self, other: Condition) -> Condition:
        if self.labels is not None:
            return Condition(labels=torch.cat((self.labels, other.labels)))
        return Condition(
            torch.cat((self.context, other.context)),
            torch.cat((self.context_mask, other.context_mask)),
            torch.cat((self.position_ids, other.position_ids)),
        )


def check_condition(config: HartConfig, cond: Condition, what: str = "condition") -> None:
    """Refuse, with an InputError naming the problem, a condition the model built from ``config`` cannot take.

    Class-conditional: labels [B] of integers in [0, num_classes] (``num_classes``: the null class).
    Text: context [B, context_token, context_dim] with context_mask and position_ids [B, context_token]
    (the official sampler asserts the context length too). ``what`` names the condition in messages.
    """
    if config.class_conditional:
        labels = cond.labels
        if labels is None:
            raise InputError(f"{what}: this class-conditional model takes class labels, not a text context")
        if labels.ndim != 1 or labels.numel() == 0 or labels.dtype not in (torch.int64, torch.int32):
            raise InputError(
                f"{what}: labels must be a non-empty [B] int64 tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.min() < 0 or labels.max() > config.num_classes:
            raise InputError(f"{what}: labels must be in [0, {config.num_classes}] ({config.num_classes}: no class)")
        return
    if cond.labels is not None:
        raise InputError(f"{what}: class labels need a class-conditional model; this one takes a text context")
    missing = [name for name in ("context", "context_mask", "position_ids") if getattr(cond, name) is None]
    if missing:
        raise InputError(
            f"{what}: a text-conditional model needs context, context_mask and position_ids; "
            f"missing {', '.join(missing)}"
        )
    expected = (config.context_token, config.context_dim)
    if cond.context.ndim != 3 or tuple(cond.context.shape[1:]) != expected:
        shape = tuple(cond.context.shape)
        raise InputError(f"{what}: context has shape {shape}, the model expects [B, {expected[0]}, {expected[1]}]")
    batch_tokens = tuple(cond.context.shape[:2])
    for name in ("context_mask", "position_ids"):
        shape = tuple(getattr(cond, name).shape)
        if shape != batch_tokens:
            raise InputError(f"{what}: {name} has shape {shape}, expected {batch_tokens} as [B, T] of the context")


class ScaleQuantizer(Protocol):
    """What the sampler uses of the tokenizer's quantizer (:class:`MultiScaleQuantizer`): the codebook
    ``embedding`` [V, Cvae], ``channels`` (Cvae) and ``next_ar_input`` (f_hat update + next scale's input)."""

    embedding: nn.Embedding
    channels: int

    def next_ar_input(
        self, si: int, patch_nums: Sequence[int], f_hat: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def checked_prefix_indices(prefix_indices: Any, vocab_size: int | None = None) -> list[torch.Tensor]:
    """``prefix_indices`` as int64 tensors, checked to be a list of integer tensors, of codes in [0, vocab_size)
    if it is given (their shapes are the schedule's to check; other types or values would fail deep inside torch;
    the range costs a device sync per scale, so :func:`sample_latent` checks it once)."""
    if not isinstance(prefix_indices, Sequence):
        raise InputError(
            f"prefix_indices must be a list of code tensors, one per scale, got {type(prefix_indices).__name__}"
        )
    for si, codes in enumerate(prefix_indices):
        if not isinstance(codes, torch.Tensor) or codes.dtype not in INDEX_DTYPES:
            what = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise InputError(f"prefix_indices[{si}] must be an integer tensor of codes, got {what}")
        if vocab_size is not None and codes.numel() and (codes.min() < 0 or codes.max() >= vocab_size):
            raise InputError(f"prefix_indices[{si}] has codes outside the vocabulary [0, {vocab_size})")
    return [codes.long() for codes in prefix_indices]


def check_quantizer(config: HartConfig, quantizer: ScaleQuantizer) -> None:
    """CheckpointError, naming both values, unless the tokenizer's codebook is the one the transformer predicts:
    ``vocab_size`` codes of ``latent_channels`` channels."""
    codes, channels = quantizer.embedding.num_embeddings, quantizer.channels
    if codes != config.vocab_size:
        raise CheckpointError(
            f"the tokenizer's codebook has {codes} codes but the transformer predicts {config.vocab_size}: "
            "they do not belong together"
        )
    if channels != config.latent_channels:
        raise CheckpointError(
            f"the tokenizer's latent has {channels} channels but the transformer takes {config.latent_channels}: "
            "they do not belong together"
        )


def unconditional(model: HartTransformer, cond: Condition) -> Condition:
    """The official null condition: an all-zero context with zero positions and a one-token mask (text),
    or the extra "no class" label (classes)."""
    if model.config.class_conditional:
        return Condition(labels=torch.full_like(cond.labels, model.config.num_classes))
    mask = torch.zeros_like(cond.context_mask)
    mask[:, 0] = True
    return Condition(torch.zeros_like(cond.context), mask, torch.zeros_like(cond.position_ids))


@torch.no_grad()
def sample_latent(
    model: HartTransformer,
    quantizer: ScaleQuantizer,
    cond: Condition,
    options: SamplingOptions | None = None,
    *,
    patch_nums: Sequence[int] | None = None,
    negative: Condition | None = None,
    generator: Generators = None,
    prefix_indices: Sequence[torch.Tensor] = (),
    index_provider: IndexProvider | None = None,
    diffusion_noise: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None,
    callback: Callable[[ScaleStep], None] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Generate latents [B, Cvae, P, P] for ``cond`` (decode them with the tokenizer).

    ``quantizer``: the tokenizer's :class:`MultiScaleQuantizer` (codebook + ``next_ar_input``).
    ``patch_nums``: scale schedule (defaults to the model's); any schedule from 1x1 works since RoPE
    positions are normalised to the last scale (a model with a learned level table: up to its number of
    scales). ``negative``: unconditional branch for CFG (default: the official null condition).
    ``generator``: one for the batch, or a list of one per row (each row's draws then come from its own, so a
    row comes out as it would alone).
    ``prefix_indices``: the codes of the first scales ([B, pn^2] each, e.g. an image's own from the tokenizer),
    taken instead of drawn: only the scales after them are sampled (what the later scales make of a given start).
    ``index_provider(si, guided_logits) -> [B, pn^2]`` replaces sampling;
    ``diffusion_noise = (x_T [B*P^2, Cvae], per-step noise)`` replaces the diffusion draws.
    A condition or schedule the model cannot take is an InputError, a quantizer of another codebook a
    CheckpointError.
    """
    options = options or SamplingOptions()
    check_quantizer(model.config, quantizer)
    check_condition(model.config, cond)
    if negative is not None:
        check_condition(model.config, negative, "negative")
        if negative.batch != cond.batch:
            raise InputError(f"the negative condition has batch {negative.batch}, the condition {cond.batch}")
    pn = check_schedule(patch_nums or model.config.patch_nums, model.config)
    num_scales, last = len(pn), len(pn) - 1
    B, vocab = cond.batch, model.config.vocab_size
    check_generators(generator, B)
    prefix_indices = checked_prefix_indices(prefix_indices, vocab)
    if len(prefix_indices) > num_scales:
        raise InputError(f"{len(prefix_indices)} scales of prefix_indices for a schedule of {num_scales}")
    for si, given in enumerate(prefix_indices):
        if tuple(given.shape) != (B, pn[si] ** 2):
            raise InputError(f"prefix_indices[{si}] has shape {tuple(given.shape)}, expected {(B, pn[si] ** 2)}")
    device = next(model.parameters()).device
    codebook = quantizer.embedding
    guided = options.cfg != 0
    full = cond.cat(negative or unconditional(model, cond)) if guided else cond
    rows = 2 * B if guided else B

    cond_BD = model.embed_condition(full.context, full.labels)
    cond_blocks, cond_head = model.pooled_conditions(cond_BD, full.context_mask)
    offset = model.image_offset(full.position_ids)
    cache = KVCache(len(model.blocks))
    x = model.prefix_tokens(cond_BD)
    cos, sin = model.prefix_rope(rows, full.position_ids, device)
    f_hat = codebook.weight.new_zeros(B, quantizer.channels, pn[-1], pn[-1])

    for si in tqdm(range(num_scales), desc="HART scales", disable=not progress, leave=False):
        h = model.run_blocks(x, cond_blocks, cos, sin, cache=cache)
        if si == 0:
            h = h[:, -1:]  # the last prefix position predicts the 1x1 map
        logits = model.logits(h, cond_head)
        ratio = guidance_ratio(si, num_scales)  # the official ramp, which more_smooth's mixing also follows
        t = options.cfg * (ratio if options.guidance_schedule == "linear" else 1.0)
        if guided:
            logits = guide(logits[:B], logits[B:], 1 + t)
        top_k = options.top_k if options.top_k is not None else official_top_k(si, vocab)
        forced = si < len(prefix_indices)
        if forced:
            idx = prefix_indices[si].to(device)
        elif index_provider is not None:
            idx = index_provider(si, logits).to(device)
        else:
            idx = sample_logits(
                logits, temperature=options.temperature, top_k=top_k, top_p=options.top_p, generator=generator
            )
        if options.more_smooth and not forced:
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            weights = gumbel_softmax(filter_top_k_top_p(logits, top_k, options.top_p) * (1 + ratio), tau, generator)
            codes = weights.to(codebook.weight.dtype) @ codebook.weight  # [B, l, Cvae]
        else:
            codes = codebook(idx)
        if si == last and not options.discrete_only:
            residual = _residual(model, h, codebook(idx), B, t, guided, options, generator, diffusion_noise)
            codes = codes + residual.to(codes.dtype)
        f_hat, next_map = quantizer.next_ar_input(si, pn, f_hat, codes.transpose(1, 2).reshape(B, -1, pn[si], pn[si]))
        if callback is not None:
            callback(ScaleStep(si, pn[si], logits, idx, f_hat, next_map if si < last else None))
        if si < last:
            x = model.scale_tokens(next_map.flatten(2).transpose(1, 2), si + 1)
            x = x.repeat(2, 1, 1) if guided else x
            cos, sin = model.image_rope([pn[si + 1]], pn[-1], offset, rows, device)
    return f_hat


def _residual(model, h, code_vectors, B, t, guided, options, generator, diffusion_noise) -> torch.Tensor:
    """Continuous residual [B, l, Cvae] for the last scale from its hidden states h [rows, l, C]."""
    vectors = code_vectors.repeat(2, 1, 1) if guided else code_vectors
    z = model.diffusion_condition(h, vectors).flatten(0, 1)
    n = B * h.shape[1]
    noise, steps = diffusion_noise if diffusion_noise is not None else (None, None)
    residual = model.diffloss.sample(
        z[:n],
        z_uncond=z[n:] if guided else None,
        guidance=t,
        temperature=options.diffusion_temperature,
        schedule=model.diffloss.sampling_schedule(options.diffusion_steps) if options.diffusion_steps else None,
        noise=noise,
        step_noise=steps,
        generator=generator,
    )
    return residual.view(B, h.shape[1], -1)
