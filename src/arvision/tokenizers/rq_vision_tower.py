"""VILA-U's unified vision tower: SigLIP encoder -> residual VQ (depth D) -> RQ-VAE pixel decoder.

Tokens are the residual codes of the *penultimate* SigLIP layer's output, taken before
``post_layernorm``, quantised in the native SigLIP width (no ``quant_conv``). The same codes drive
understanding (summed embeddings go to the LLM) and generation (decoded to pixels). The SigLIP text
tower and the vision head are kept for the contrastive training objective only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipConfig, SiglipModel

from arvision.errors import InputError
from arvision.nn.vqgan import Decoder
from arvision.tokenizers.residual_vq import QuantizerOutput, ResidualQuantizer


@dataclass
class PixelDecoderConfig:
    """The RQ-VAE/taming decoder hyper-parameters (the release's ``ddconfig``)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    resolution: int = 256
    out_ch: int = 3
    dropout: float = 0.0

    def attn_levels(self) -> list[int]:
        # Level i of the decoder works at resolution // 2**i; attention goes where that is listed.
        return [i for i in range(len(self.ch_mult)) if self.resolution // 2**i in self.attn_resolutions]


@dataclass
class RQVisionTowerConfig:
    """``siglip`` holds ``SiglipConfig`` keyword arguments: ``{"vision_config": {...}, "text_config": {...}}``."""

    siglip: dict[str, Any]
    n_embed: int = 16384
    depth: int = 4
    shared_codebook: bool = False
    decay: float = 0.99
    restart_unused_codes: bool = True
    latent_loss_weight: float = 0.25
    decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    # Bilinear resize of the latent grid before decoding (the 384 model decodes 27x27 latents at 24x24).
    decoder_latent_shape: tuple[int, int] | None = None

    @property
    def image_size(self) -> int:
        return int(self.siglip["vision_config"]["image_size"])

    @property
    def grid(self) -> int:
        """Tokens per side: the valid patch convolution drops leftover pixels (384 // 14 = 27)."""
        return self.image_size // int(self.siglip["vision_config"]["patch_size"])

    @property
    def dim(self) -> int:
        return int(self.siglip["vision_config"]["hidden_size"])


def check_pixels(pixels: torch.Tensor, size: int) -> None:
    """Pixels must be finite floats [B, 3, size, size] (in [-1, 1]: ``data.media.preprocess_image`` makes them)."""
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
        raise InputError(f"pixels must be [B, 3, {size}, {size}] (the tower's image size), got {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise InputError(
            f"pixels must be floats in [-1, 1] (data.media.preprocess_image makes them), got {pixels.dtype}"
        )
    if not bool(torch.isfinite(pixels).all()):
        raise InputError("pixels contain NaN or infinite values")


def _run_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    out = layer(hidden, None)
    # transformers < 5 returns a tuple from encoder layers, >= 5 a tensor.
    return out[0] if isinstance(out, tuple) else out


class RQVisionTower(nn.Module):
    """Pixels [B, 3, R, R] in [-1, 1] <-> codes [B, g, g, D] (g = R // patch) <-> pixels.

    ``encode`` returns the codes and the straight-through quantised features z_q [B, g, g, C];
    ``decode`` maps z_q (or any sum of code embeddings) back to pixels [B, 3, 16 * g', 16 * g'].
    """

    def __init__(self, config: RQVisionTowerConfig):
        super().__init__()
        self.config = config
        vision = dict(config.siglip["vision_config"])
        # The text tower's token ids are irrelevant here; HF warns when they exceed a small vocabulary.
        text = {**config.siglip.get("text_config", {}), "bos_token_id": None, "eos_token_id": None}
        self.siglip = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        self.quantizer = ResidualQuantizer(
            config.n_embed,
            config.dim,
            config.depth,
            shared=config.shared_codebook,
            decay=config.decay,
            restart_unused=config.restart_unused_codes,
        )
        dec = config.decoder
        self.post_quant_conv = nn.Conv2d(config.dim, dec.z_channels, 1)
        self.decoder = Decoder(
            ch=dec.ch,
            ch_mult=dec.ch_mult,
            z_channels=dec.z_channels,
            num_res_blocks=dec.num_res_blocks,
            out_channels=dec.out_ch,
            dropout=dec.dropout,
            attn_levels=dec.attn_levels(),
        )

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Penultimate SigLIP layer, before ``post_layernorm``: [B, 3, R, R] -> [B, g, g, C].

        Pixels in another float dtype than the tower are cast to its dtype by SigLIP's patch embedding.
        """
        check_pixels(pixels, self.config.image_size)
        vision = self.siglip.vision_model
        hidden = vision.embeddings(pixels)
        for layer in vision.encoder.layers[:-1]:
            hidden = _run_layer(layer, hidden)
        b, length, c = hidden.shape
        side = math.isqrt(length)
        return hidden.reshape(b, side, side, c)

    def quantize(self, features: torch.Tensor) -> QuantizerOutput:
        return self.quantizer(features)

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B, 3, R, R] -> (codes [B, g, g, D] int64, z_q [B, g, g, C])."""
        out = self.quantizer(self.features(pixels))
        return out.codes, out.z_q

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-depth code embeddings: [..., D] -> [..., D, C]."""
        return self.quantizer.embed_codes(codes)

    def codes_to_latent(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Sum of the code embeddings over depth: [..., D] -> [..., C] (``check``: validate the codes first)."""
        return self.quantizer.decode_codes(codes, check)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Latent grid [B, h, w, C] -> pixels [B, 3, H, W], roughly in [-1, 1] (not clamped)."""
        z = z_q.permute(0, 3, 1, 2).contiguous()
        if self.config.decoder_latent_shape is not None:
            size = tuple(self.config.decoder_latent_shape)
            z = F.interpolate(z.float(), size=size, mode="bilinear", align_corners=False).to(z_q.dtype)
        return self.decoder(self.post_quant_conv(z))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w, D] -> pixels [B, 3, H, W]."""
        return self.decode(self.codes_to_latent(codes))

    def image_embeds(self, z_q: torch.Tensor) -> torch.Tensor:
        """Pooled image embedding of quantised features for the contrastive loss: [B, g, g, C] -> [B, C].

        The paper aligns the *discrete* features with text; the path used here (the skipped last SigLIP
        layer, ``post_layernorm``, the attention-pooling head) is the natural one but is unpublished.
        """
        vision = self.siglip.vision_model
        hidden = _run_layer(vision.encoder.layers[-1], z_q.flatten(1, 2))
        return vision.head(vision.post_layernorm(hidden))

    def text_embeds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Pooled SigLIP text embedding: [B, L] -> [B, C]."""
        return self.siglip.text_model(input_ids=input_ids).pooler_output

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.siglip.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter:
        return self.siglip.logit_bias
