"""Shared test fixtures: the hart-tiny-a parity folder recorded from the official code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arvision.checkpoint import load_checked, load_state_dict, read_json
from arvision.models.hart import OFFICIAL_BUFFERS, HartConfig, HartTransformer

HART_TINY = Path(__file__).parent / "fixtures" / "hart-tiny-a"


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


@pytest.fixture(scope="session")
def hart_cases() -> dict[str, torch.Tensor]:
    return load_file(str(HART_TINY / "cases.safetensors"))


@pytest.fixture(scope="session")
def tiny_hart() -> HartTransformer:
    return load_tiny_hart()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from arvision.tokenizers.hart_tokenizer import HybridTokenizer

    return HybridTokenizer.from_pretrained(HART_TINY / "tokenizer")
