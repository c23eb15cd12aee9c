"""Shared test fixtures: the hart-tiny-a parity folder recorded from the official code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arvision.checkpoint import load_checked, load_state_dict, read_json
from arvision.models.hart import OFFICIAL_BUFFERS, HartConfig, HartTransformer

# The tests run tiny models, where intra-op threads cost more than they give (5x slower on a busy
# 2-core machine); one thread keeps the suite fast and its timings stable.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
HART_TINY = FIXTURES / "hart-tiny-a"


def load_tiny_hart(weights: str = "ema_model.bin") -> HartTransformer:
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
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    Qwen2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen2_24(tmp_path_factory) -> Path:
    """Text encoder matching hart-tiny-a's context (24 dims)."""
    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2_24"), hidden=24)


@pytest.fixture(scope="session")
def hart_fixture_dir() -> Path:
    return HART_TINY


@pytest.fixture(scope="session")
def hart_cases(hart_fixture_dir) -> dict[str, torch.Tensor]:
    return load_file(str(hart_fixture_dir / "cases.safetensors"))


@pytest.fixture(scope="session")
def tiny_hart() -> HartTransformer:
    return load_tiny_hart()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from arvision.tokenizers.hart_tokenizer import HybridTokenizer

    return HybridTokenizer.from_pretrained(HART_TINY / "tokenizer")
