"""Shared helpers for the VILA-U tests: the parity fixture and tiny configs built in code."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from safetensors.torch import load_file

from arvision.models.depth_transformer import DepthTransformerConfig
from arvision.models.vila_u import VilaU, VilaUConfig
from arvision.tokenizers.rq_vision_tower import PixelDecoderConfig, RQVisionTowerConfig

FIXTURE = Path(__file__).parent / "fixtures" / "vilau-tiny-a"

# The test models are tiny: intra-op threads cost more in hand-offs than they save (5-10x slower on a
# shared 2-core machine). This applies to the whole test process once a VILA-U test module is imported.
torch.set_num_threads(1)


@functools.lru_cache(maxsize=1)
def cases() -> dict[str, torch.Tensor]:
    """Tensors recorded from the official code (see fixtures/vilau-tiny-a/CASES.md)."""
    return load_file(str(FIXTURE / "cases.safetensors"))


@functools.lru_cache(maxsize=1)
def fixture_pipeline():
    """The fixture model, loaded once; tests must not modify it (load a fresh one to train)."""
    from arvision.pipelines.vila_u import VilaUPipeline

    pipe = VilaUPipeline.from_pretrained(FIXTURE)
    pipe.progress = False
    return pipe


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def tiny_tower_config(**overrides) -> RQVisionTowerConfig:
    layer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    siglip = {
        "vision_config": {**layer, "image_size": 16, "patch_size": 4},
        "text_config": {**layer, "vocab_size": 50, "max_position_embeddings": 8},
    }
    config = RQVisionTowerConfig(
        siglip=siglip,
        n_embed=64,
        depth=3,
        decoder=PixelDecoderConfig(
            ch=16, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(4,), z_channels=8, resolution=16
        ),
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_vila_u_config(vocab_size: int = 1004) -> VilaUConfig:
    tower = tiny_tower_config()
    llm = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    }
    depth = DepthTransformerConfig(
        depth=tower.depth,
        code_dim=tower.dim,
        llm_dim=32,
        embed_dim=32,
        n_layer=2,
        n_head=2,
        vocab_size=tower.n_embed,
        resid_dropout=0.0,
    )
    return VilaUConfig(llm=llm, tower=tower, depth=depth)


def tiny_vila_u(seed: int = 0) -> VilaU:
    torch.manual_seed(seed)
    return VilaU(tiny_vila_u_config()).eval()
