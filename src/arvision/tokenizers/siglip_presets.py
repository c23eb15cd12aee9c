"""SigLIP architecture configs shipped with the package, so no tower is ever built from a hub download.

Values are those of the public ``config.json`` of each checkpoint (architecture fields only). The
release names them in ``vision_tower/config.json`` -> ``rqvaesiglip.pretrained_model``.
"""

from __future__ import annotations

import copy
from typing import Any


def _tower(hidden: int, mlp: int, layers: int, heads: int, **extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        **extra,
    }


SIGLIP_PRESETS: dict[str, dict[str, Any]] = {
    "google/siglip-large-patch16-256": {
        "vision_config": _tower(1024, 4096, 24, 16, image_size=256, patch_size=16, num_channels=3),
        "text_config": _tower(1024, 4096, 24, 16, vocab_size=32000, max_position_embeddings=64),
    },
    "google/siglip-so400m-patch14-384": {
        "vision_config": _tower(1152, 4304, 27, 16, image_size=384, patch_size=14, num_channels=3),
        "text_config": _tower(1152, 4304, 27, 16, vocab_size=32000, max_position_embeddings=64),
    },
}


def siglip_preset(name: str) -> dict[str, Any]:
    """A copy of the shipped SigLIP config called ``name`` (a hub id as written in the release configs)."""
    if name not in SIGLIP_PRESETS:
        known = ", ".join(sorted(SIGLIP_PRESETS))
        raise KeyError(f"no shipped SigLIP config named {name!r} (known: {known})")
    return copy.deepcopy(SIGLIP_PRESETS[name])
