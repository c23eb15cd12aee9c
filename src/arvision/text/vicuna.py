"""The ``vicuna_v1`` chat template and the ``<image>`` placeholder tokenisation used by VILA-U.

Rendering: ``system + " "``, then per turn ``ROLE + ": " + text + sep`` (``sep`` alternates between
``" "`` after USER and ``"</s>"`` after ASSISTANT); an empty turn renders as ``ROLE + ":"``. Each
text chunk between ``<image>`` placeholders is tokenised on its own with its BOS dropped, and a
placeholder becomes the id ``IMAGE_TOKEN_INDEX`` (later replaced by the image features).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from arvision.errors import InputError

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = ("USER", "ASSISTANT")
SEPARATORS = (" ", "</s>")
IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200
IM_START, IM_END, VI_START, VI_END = "<im_start>", "<im_end>", "<vi_start>", "<vi_end>"


def render(messages: Sequence[str | None], system: str = SYSTEM_PROMPT) -> str:
    """Render alternating USER/ASSISTANT messages; a trailing ``None`` leaves the prompt open for the reply.

    Messages are stripped first, as the release does (so a blank user message renders ``"USER:"``).
    """
    out = system + SEPARATORS[0]
    for i, message in enumerate(messages):
        role = ROLES[i % 2]
        text = message.strip() if message is not None else ""
        out += f"{role}: {text}{SEPARATORS[i % 2]}" if text else f"{role}:"
    return out


def understanding_prompt(question: str, num_images: int = 1) -> str:
    """One user turn with ``num_images`` image blocks (``"<image>\\n"`` each: a picture or a video frame)
    before the question, then the open ASSISTANT turn. No ``<im_start>``/``<im_end>`` at inference."""
    return render([(IMAGE_PLACEHOLDER + "\n") * num_images + question, None])


def generation_prompt(prompt: str, video: bool = False) -> str:
    """``... USER: {prompt} ASSISTANT: <im_start>`` (``<vi_start>`` for video). An empty prompt gives the
    unconditional prompt ``... USER:ASSISTANT: <im_start>`` used for classifier-free guidance."""
    return render([prompt, None]) + " " + (VI_START if video else IM_START)


def tokenize(prompt: str, tokenizer: Any) -> list[int]:
    """``[bos] + chunks``: each chunk between ``<image>`` placeholders tokenised alone, its BOS dropped."""
    ids = [tokenizer.bos_token_id]
    for chunk in re.split(f"({re.escape(IMAGE_PLACEHOLDER)})", prompt):
        if chunk == IMAGE_PLACEHOLDER:
            ids.append(IMAGE_TOKEN_INDEX)
        elif chunk:
            ids.extend(tokenizer(chunk).input_ids[1:])
    return ids


def check_user_text(text: str, tokenizer: Any, what: str = "the prompt") -> None:
    """Raise :class:`InputError` when user ``text`` holds a string the model would not read as text: the
    ``<image>`` placeholder (split out as an image slot, so the images no longer match) or a token that the
    tokenizer encodes as a control id (``</s>``, ``<im_start>``, ...: the release's tokenizer does, which
    silently changes the prompt's structure)."""
    reserved = {IMAGE_PLACEHOLDER, *tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}
    found = sorted(token for token in reserved if token in text)
    if found:
        raise InputError(f"{what} contains {', '.join(found)}: special tokens cannot be written as text")
