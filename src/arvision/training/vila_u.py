"""VILA-U multimodal training loss: text cross-entropy + visual (depth-transformer) cross-entropy.

Examples use the release's training layout (images wrapped in ``<im_start> ... <im_end>``, videos in
``<vi_start> ... <vi_end>``); the vision tower is frozen and only provides codes and input features.
For a generated block occupying positions [a, b), the LLM states at [a-1, b-1) (from ``<im_start>``
on) predict the D codes of the tokens at [a, b): the one-position shift of next-token prediction.
Caption dropout (absent in the release) replaces captions by the empty prompt, so the unconditional
branch that classifier-free guidance uses at inference is actually trained.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from arvision.errors import InputError
from arvision.models.vila_u import VilaU
from arvision.text import vicuna

IGNORE_INDEX = -100


@dataclass
class VilaUExample:
    """``input_ids`` with ``IMAGE_TOKEN_INDEX`` placeholders, aligned ``labels`` (``IGNORE_INDEX`` where not
    supervised), ``pixels`` [N, 3, R, R] for the N placeholders in order, and whether those images are
    generation targets (text -> image/video) or inputs (understanding)."""

    input_ids: list[int]
    labels: list[int]
    pixels: torch.Tensor
    generate: bool


def _supervise_reply(prompt_ids: list[int], full_ids: list[int]) -> list[int]:
    # Everything after the rendered "... ASSISTANT:" prefix is the reply (</s> included).
    return [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids) :]


def generation_example(
    tokenizer: Any,
    caption: str,
    pixels: torch.Tensor,
    *,
    caption_dropout: float = 0.0,
    rng: random.Random | None = None,
) -> VilaUExample:
    """Text -> image (``pixels`` [1, 3, R, R]) or text -> video (``pixels`` [F, 3, R, R], F > 1)."""
    if caption_dropout > 0 and (rng or random).random() < caption_dropout:
        caption = ""
    video = len(pixels) > 1
    start, end = (vicuna.VI_START, vicuna.VI_END) if video else (vicuna.IM_START, vicuna.IM_END)
    reply = start + vicuna.IMAGE_PLACEHOLDER * len(pixels) + end
    prompt_ids = vicuna.tokenize(vicuna.render([caption, None]), tokenizer)
    full_ids = vicuna.tokenize(vicuna.render([caption, reply]), tokenizer)
    return VilaUExample(full_ids, _supervise_reply(prompt_ids, full_ids), pixels, generate=True)


def understanding_example(
    tokenizer: Any, turns: Sequence[tuple[str, str]], pixels: torch.Tensor, video: bool = False
) -> VilaUExample:
    """Image(s) [N, 3, R, R] and question-answer ``turns`` -> text, every answer supervised. The visual
    blocks open the first question: ``<im_start><image><im_end>`` per image (training wraps them, inference
    does not), or for a video ``<image>\n`` per frame, as the release's video QA data has them."""
    if not turns:
        raise InputError("an understanding example needs at least one question-answer turn")
    if video:
        visual = (vicuna.IMAGE_PLACEHOLDER + "\n") * len(pixels)
    else:
        visual = (vicuna.IM_START + vicuna.IMAGE_PLACEHOLDER + vicuna.IM_END) * len(pixels) + "\n"
    messages = [m for question, answer in turns for m in (question, answer)]
    messages[0] = visual + messages[0]
    input_ids = vicuna.tokenize(vicuna.render(messages), tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    # Each reply spans from its open "ASSISTANT:" prompt to the end of the conversation rendered up to it.
    for k in range(1, len(messages), 2):
        start = len(vicuna.tokenize(vicuna.render([*messages[:k], None]), tokenizer))
        end = len(vicuna.tokenize(vicuna.render(messages[: k + 1]), tokenizer))
        labels[start:end] = input_ids[start:end]
    return VilaUExample(input_ids, labels, pixels, generate=False)


@dataclass
class VilaULoss:
    """The total and its text and visual cross-entropies (``visual_loss`` None without generation examples)."""

    loss: torch.Tensor
    text_loss: torch.Tensor
    visual_loss: torch.Tensor | None


def _expand(model: VilaU, example: VilaUExample, features: torch.Tensor, codes: torch.Tensor):
    """Splice image features; return embeds [S, H], labels [S], and generation targets as
    (hidden positions [T], codes [T, D])."""
    embeds = model.splice(example.input_ids, features)
    labels, visual_at, pos = [], [], 0
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if token == vicuna.IMAGE_TOKEN_INDEX:
            visual_at.append(pos)
            labels += [IGNORE_INDEX] * features.shape[1]
            pos += features.shape[1]
        else:
            labels.append(label)
            pos += 1
    targets = None
    if example.generate and visual_at:
        per_image = features.shape[1]
        positions = torch.cat([torch.arange(p - 1, p - 1 + per_image) for p in visual_at])
        targets = (positions, codes.reshape(-1, codes.shape[-1]))
    return embeds, torch.tensor(labels), targets


def vila_u_loss(model: VilaU, examples: Sequence[VilaUExample]) -> VilaULoss:
    """Mean text CE (shifted, over supervised tokens) + mean visual CE over all (token, depth) targets."""
    device = next(model.parameters()).device
    sizes = {tuple(e.pixels.shape[1:]) for e in examples}
    if len(sizes) != 1:
        raise InputError(f"the examples of one batch must share one image size, got {sorted(sizes)}")
    # One tower and projector pass for every image of the batch: per-example passes are launch-bound on a GPU.
    with torch.no_grad():  # the vision tower is frozen in every multimodal stage
        codes, z_q = model.vision_tower.encode(torch.cat([e.pixels for e in examples]).to(device))
    features = model.mm_projector(z_q.flatten(1, 2))
    counts = [len(e.pixels) for e in examples]
    rows = [
        _expand(model, example, f, c)
        for example, f, c in zip(examples, features.split(counts), codes.flatten(1, 2).split(counts), strict=True)
    ]
    length = max(len(r[1]) for r in rows)
    hidden_dim = rows[0][0].shape[-1]
    embeds = torch.zeros(len(rows), length, hidden_dim, device=device, dtype=rows[0][0].dtype)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    for i, (e, lab, _) in enumerate(rows):  # right padding
        embeds[i, : len(lab)], labels[i, : len(lab)], mask[i, : len(lab)] = e, lab, 1
    positions = torch.arange(length, device=device).expand(len(rows), -1)
    hidden = model.llm_hidden(embeds, mask, positions)
    logits = model.llm.lm_head(hidden[:, :-1]).float()
    text_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    states, targets = [], []
    for i, (_, _, target) in enumerate(rows):
        if target is not None:
            states.append(hidden[i, target[0].to(device)])
            targets.append(target[1])
    visual_loss = None
    if states:
        target_codes = torch.cat(targets)
        depth_logits = model.depth_transformer(torch.cat(states), model.vision_tower.embed_codes(target_codes))
        flat = depth_logits.reshape(-1, depth_logits.shape[-1]).float()
        visual_loss = F.cross_entropy(flat, target_codes.reshape(-1))
    loss = text_loss if visual_loss is None else text_loss + visual_loss
    detached = None if visual_loss is None else visual_loss.detach()
    return VilaULoss(loss=loss, text_loss=text_loss.detach(), visual_loss=detached)
