"""Training objective and optimisation step of the hybrid tokenizer.

Loss = pixel L1/L2 + perceptual (pluggable) + VQ/commitment + hinge GAN, with HART's alternation between
decoding the full latent (continuous) and its discrete part, 50/50 per step.

The GAN trains in the same backward pass as the tokenizer, so one optimiser (and the shared loop's
checkpoints, DDP and EMA) covers both: the generator term sees the discriminator through detached weights,
so it moves only the tokenizer, and the discriminator term sees detached reconstructions, so it moves only
the discriminator.

Two modes:

* ``"decoder"`` -- HART's recipe: encoder, ``quant_conv`` and the quantizer (codebook + phi) frozen;
  only ``post_quant_conv`` and the decoder learn, so discrete tokens never change.
* ``"full"`` -- training from scratch: everything learns, and codebook usage is tracked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from arvision.errors import InputError
from arvision.tokenizers.discriminator import PatchDiscriminator
from arvision.tokenizers.hart_tokenizer import HybridTokenizer
from arvision.training.config import require_within

FeatureExtractor = Callable[[torch.Tensor], Sequence[torch.Tensor]]


class PerceptualLoss(nn.Module):
    """LPIPS-style distance over the feature maps of any frozen extractor (no pretrained net required).

    ``features(images)`` returns a list of ``[B, C_i, H_i, W_i]`` maps; each is unit-normalised along
    channels before the squared difference, and the per-layer means are averaged.
    """

    def __init__(self, features: FeatureExtractor):
        super().__init__()
        self.features = features
        if isinstance(features, nn.Module):
            features.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pairs = zip(self.features(images), self.features(targets))
        dists = [(F.normalize(a, dim=1) - F.normalize(b, dim=1)).square().sum(dim=1).mean() for a, b in pairs]
        return torch.stack(dists).mean()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


@dataclass
class TokenizerLossConfig:
    """Loss weights and schedule. The discriminator learns from the first batch; its push on the tokenizer
    (the generator term) starts at micro-batch ``gan_start``."""

    l1_weight: float = 1.0
    l2_weight: float = 1.0
    # weight of the objective's PerceptualLoss; 0 by default, as the tokenizer task has no perceptual network
    perceptual_weight: float = 0.0
    vq_weight: float = 1.0
    gan_weight: float = 0.1
    gan_start: int = 0
    continuous_prob: float = 0.5
    mode: Literal["decoder", "full"] = "decoder"
    # "full" mode: restart codes hit less than this fraction of a uniform share (0 disables restarts).
    restart_dead_codes: float = 0.0

    def __post_init__(self) -> None:
        weights = ("l1_weight", "l2_weight", "perceptual_weight", "vq_weight", "gan_weight")
        require_within("model.loss", {name: getattr(self, name) for name in weights}, 0)
        require_within(
            "model.loss", {"continuous_prob": self.continuous_prob, "restart_dead_codes": self.restart_dead_codes}, 0, 1
        )
        require_within("model.loss", {"gan_start": self.gan_start}, 0)


class TokenizerObjective(nn.Module):
    """The training loss as a module (so DDP/FSDP wrap its forward); the optional ``discriminator`` is a
    submodule, trained and checkpointed with the tokenizer.

    ``forward(images [B, 3, H, W], continuous)`` -> ``(total loss, {term: tensor, "recon": images})``.
    ``batches_seen`` counts training forwards (with gradients); a buffer, so a resumed run knows when the
    GAN's generator term starts.
    """

    def __init__(
        self,
        tokenizer: HybridTokenizer,
        config: TokenizerLossConfig,
        perceptual: PerceptualLoss | None = None,
        discriminator: PatchDiscriminator | None = None,
    ):
        super().__init__()
        if perceptual is not None and config.perceptual_weight <= 0:
            # The default weight became 0 (the task has no perceptual network): a network given without a
            # weight would be computed every step and count for nothing.
            raise InputError("a perceptual loss was given with perceptual_weight 0: set the weight it should have")
        self.tokenizer = tokenizer
        self.config = config
        self.perceptual = perceptual
        self.discriminator = discriminator
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    @property
    def generator_gan_active(self) -> bool:
        return self.discriminator is not None and int(self.batches_seen) >= self.config.gan_start

    def forward(self, images: torch.Tensor, continuous: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        restart = c.restart_dead_codes if c.mode == "full" else 0.0
        recon, quantized = self.tokenizer.training_forward(images, continuous=continuous, restart_below=restart)
        terms = {"l1": F.l1_loss(recon, images), "l2": F.mse_loss(recon, images), "vq": quantized.vq_loss}
        total = c.l1_weight * terms["l1"] + c.l2_weight * terms["l2"] + c.vq_weight * terms["vq"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon, images)
            total = total + c.perceptual_weight * terms["perceptual"]
        if self.discriminator is not None:
            if self.generator_gan_active:
                detached = {name: p.detach() for name, p in self.discriminator.named_parameters()}
                terms["gan_g"] = hinge_generator_loss(functional_call(self.discriminator, detached, (recon,)))
                total = total + c.gan_weight * terms["gan_g"]
            real, fake = self.discriminator(images), self.discriminator(recon.detach())
            terms["gan_d"] = hinge_discriminator_loss(real, fake)
            total = total + terms["gan_d"]
        if self.training and torch.is_grad_enabled():
            self.batches_seen += 1
        return total, {**terms, "recon": recon}


def frozen_parts(tokenizer: HybridTokenizer, mode: str) -> list[nn.Module]:
    """Modules that do not learn in ``mode`` (HART's decoder fine-tuning freezes encoder and quantizer)."""
    if mode not in ("decoder", "full"):
        raise ValueError(f"mode must be 'decoder' or 'full', got {mode!r}")
    return [tokenizer.encoder, tokenizer.quant_conv, tokenizer.quantize] if mode == "decoder" else []


def set_train_mode(tokenizer: HybridTokenizer, mode: str) -> None:
    """Training mode for what learns; frozen parts stay in eval so their statistics do not drift."""
    tokenizer.train()
    for module in frozen_parts(tokenizer, mode):
        module.requires_grad_(False).eval()
