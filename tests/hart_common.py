"""Helpers shared by the HART tests: the hart-tiny-a parity folder, a tiny random Qwen2, a tiny HART task."""

from __future__ import annotations

from pathlib import Path

import torch

from arvision.checkpoint import load_checked, load_state_dict, read_json
from arvision.models.hart import OFFICIAL_BUFFERS, HartConfig, HartTransformer
from arvision.training.loop import OptimConfig, TrainConfig

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


# A HART task on the tiny fixture's tokenizer with a 2-block transformer.
TINY_MODEL = {
    "tokenizer": str(HART_TINY / "tokenizer"),
    "context_tokens": 24,
    "transformer": {"embed_dim": 64, "depth": 2, "num_heads": 4, "diff_width": 32, "diff_depth": 2},
}


def short_run(out_dir, max_steps: int, batch_size: int, **overrides) -> TrainConfig:
    """A few single-process steps at a high learning rate, each logged, one checkpoint at the end."""
    return TrainConfig(
        task="hart",
        out_dir=str(out_dir),
        max_steps=max_steps,
        batch_size=batch_size,
        save_every=max_steps,
        log_every=1,
        progress=False,
        optim=OptimConfig(lr=3e-3, warmup_steps=0, grad_clip=0.0),
        **overrides,
    )
