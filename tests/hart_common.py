"""Helpers shared by the HART tests: the hart-tiny-a parity folder and a tiny random Qwen2."""

from __future__ import annotations

from pathlib import Path

import torch

from arvision.checkpoint import load_checked, load_state_dict, read_json
from arvision.models.hart import OFFICIAL_BUFFERS, HartConfig, HartTransformer

HART_TINY = Path(__file__).parent / "fixtures" / "hart-tiny-a"


def load_tiny_hart(weights: str = "ema_model.bin") -> HartTransformer:
    """The fixture's official-layout transformer (EMA weights unless told otherwise)."""
    tok_cfg = read_json(HART_TINY / "tokenizer" / "config.json")
    config = HartConfig.from_official(
        read_json(HART_TINY / "llm" / "config.json"),
        vocab_size=tok_cfg["vocab_size"],
        latent_channels=tok_cfg["z_channels"],
    )
    model = HartTransformer(config)
    state = load_state_dict(HART_TINY / "llm" / weights)
    load_checked(model, state, source=weights, optional=lambda k: bool(OFFICIAL_BUFFERS.match(k)))
    return model.eval()


def make_tiny_qwen2(folder: Path, hidden: int) -> Path:
    """A random 2-layer Qwen2 with a byte-level Qwen2 tokenizer without merges (one token per character)
    whose pad token is Qwen's <|endoftext|>."""
    from transformers import Qwen2Config, Qwen2Model, Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    Qwen2Tokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", unk_token=None).save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    Qwen2Model(config).save_pretrained(folder)
    return folder
