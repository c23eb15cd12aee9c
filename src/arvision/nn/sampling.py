"""Token sampling shared by every sampler: classifier-free guidance, temperature, top-k, top-p, and the
checks of those settings and of seeds.

The sampling functions take logits shaped ``[..., V]`` and never modify their input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from arvision.errors import InputError
from arvision.validation import check_number

Generators = torch.Generator | Sequence[torch.Generator] | None
"""Where random draws come from: torch's global generator (None), one generator for the whole batch, or one
per sample (diffusers' convention), whose draws for sample i then come from generator i alone, so a sample is
the same whether it is drawn alone or in a batch (its draws are; batched float sums may differ in their last bits)."""


MAX_GUIDANCE = 1e4  # far beyond any useful scale; larger ones overflow float32 logits into NaN probabilities
MIN_TEMPERATURE = 1e-4  # below it (but above 0, greedy) the scaled logits overflow float32 the same way


SEED_LIMIT = 2**63


def seeded_generator(seed: object, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: an InputError unless ``seed`` is a whole number in
    [0, 2**63), which every torch generator takes (``manual_seed`` fails on others deep inside torch, and
    wraps negative seeds onto large ones, so two seeds would give the same draws)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise InputError(f"seed must be a whole number in [0, 2**63), got {seed!r:.80}")  # 2**63, not its digits
    return torch.Generator(device).manual_seed(int(seed))


def check_guidance(scale: float, name: str = "guidance_scale") -> None:
    """A classifier-free guidance scale must be a number in [0, MAX_GUIDANCE] (0 disables guidance)."""
    check_number(scale, name)
    if not 0 <= scale <= MAX_GUIDANCE:  # NaN fails both comparisons
        raise InputError(f"{name} must be within [0, {MAX_GUIDANCE:g}] (0: no guidance), got {scale}")


def check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
    """Refuse, naming it, a setting no sampler here takes: ``temperature`` other than 0 (greedy) or a finite
    number >= MIN_TEMPERATURE, ``top_k`` below 0 (0 or None: no top-k), ``top_p`` outside [0, 1] (0: no top-p),
    and values of the wrong type."""
    check_number(temperature, "temperature")
    if top_k is not None:
        check_number(top_k, "top_k", whole=True)
    check_number(top_p, "top_p")
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise InputError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {temperature}")
    if top_k is not None and top_k < 0:
        raise InputError(f"top_k must be >= 0 (0: no top-k), got {top_k}")
    if not 0 <= top_p <= 1:
        raise InputError(f"top_p must be within [0, 1] (0: no top-p), got {top_p}")


def per_sample(
    generator: Generators,
    rows: int,
    draw: Callable[[slice, torch.Generator | None], torch.Tensor],
    samples: int | None = None,
) -> torch.Tensor:
    """``draw(rows_slice, generator)`` for the ``rows`` leading rows of a batch: one call for a single generator
    (or None), else one per generator, which must be one per sample (``samples``, default one per row), on its
    sample's equal share of the rows (e.g. the L tokens of one image), concatenated in order."""
    if generator is None or isinstance(generator, torch.Generator):
        return draw(slice(0, rows), generator)
    samples = rows if samples is None else samples
    check_generators(generator, samples)
    if rows % samples:
        raise InputError(f"{rows} rows do not split into {samples} samples")
    share = rows // samples
    return torch.cat([draw(slice(i * share, (i + 1) * share), g) for i, g in enumerate(generator)])


def check_generators(generator: Generators, samples: int) -> None:
    """None, one generator, or a list (tuple) of exactly one generator per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
        raise InputError(f"generator must be a torch.Generator or a list of them, got {generator!r:.80}")
    if len(generator) != samples:
        raise InputError(f"{len(generator)} generators for {samples} samples: give one generator per sample")


def draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    """Where a random draw for a tensor on ``device`` happens: on ``generator``'s device when one is given
    (torch refuses a generator of another device, e.g. a CPU generator for CUDA tensors: draw there and move
    the result), else on ``device``."""
    return generator.device if generator is not None else torch.device(device)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)``.

    ``scale = 1`` returns ``cond``. HART's ``(1 + t) * cond - t * uncond`` is ``scale = 1 + t``.
    """
    return uncond + scale * (cond - uncond)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set to ``-inf`` every logit outside the top ``k`` and outside the nucleus of mass ``top_p``.

    ``top_k <= 0`` and ``top_p <= 0`` disable the respective filter; ``top_k`` is clamped to the
    vocabulary size. The most likely token always survives.
    """
    vocab = logits.shape[-1]
    if top_k > 0 and top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1.0 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: Generators = None,
) -> torch.Tensor:
    """Draw one token per position: ``[..., V]`` logits -> ``[...]`` int64 indices.

    ``temperature == 0`` is greedy decoding (argmax). A list of generators splits the leading dimension
    (the batch) among them.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_top_k_top_p(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    probs = probs.unsqueeze(0) if probs.dim() == 1 else probs

    def draw(rows: slice, gen: torch.Generator | None) -> torch.Tensor:
        share = probs[rows].reshape(-1, probs.shape[-1]).to(draw_device(gen, probs.device))
        return torch.multinomial(share, num_samples=1, generator=gen).to(logits.device)

    return per_sample(generator, probs.shape[0], draw).reshape(logits.shape[:-1])


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: Generators = None) -> torch.Tensor:
    """Soft Gumbel-softmax sample ``softmax((logits + g) / tau)``, ``g = -log(Exp(1))`` drawn from
    ``generator`` (VAR/HART's ``more_smooth`` token mixing). ``-inf`` logits get zero weight."""

    batch = logits.unsqueeze(0) if logits.dim() == 1 else logits

    def draw(rows: slice, gen: torch.Generator | None) -> torch.Tensor:
        draws = torch.empty(batch[rows].shape, dtype=torch.float32, device=draw_device(gen, logits.device))
        return draws.exponential_(generator=gen).to(logits.device)

    gumbels = -per_sample(generator, batch.shape[0], draw).log().reshape(logits.shape)
    return ((logits.float() + gumbels) / tau).softmax(dim=-1)
