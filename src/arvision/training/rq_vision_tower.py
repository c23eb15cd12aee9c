"""Training loss of VILA-U's vision tower: text alignment + reconstruction (the release ships none).

``L = w_contra * L_contra + w_recon * (pixel loss + latent_loss_weight * commitment [+ perceptual])``.
``L_contra`` is SigLIP's pairwise sigmoid loss between the pooled embedding of the *quantised*
features and the captions' text embeddings, with SigLIP's logit scale and bias: the frozen SigLIP text
tower with the checkpoint's stored scale and bias (frozen too), or any frozen sentence encoder through a
trained projection, the scale and bias then learning with it.
Codebooks learn by EMA inside the quantiser; everything else on the image side by gradient.
The paper's exact reconstruction terms are unpublished (RQ-VAE used MSE + LPIPS + a PatchGAN); a
perceptual loss can be passed in, a GAN term is left to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arvision.tokenizers.rq_vision_tower import RQVisionTower
from arvision.training.config import require_within


@dataclass
class TowerLossWeights:
    """Weights of the contrastive, reconstruction and (when a network is passed in) perceptual terms."""

    contrastive: float = 1.0
    reconstruction: float = 1.0
    perceptual: float = 0.0

    def __post_init__(self) -> None:
        require_within("model.loss", vars(self), 0)


@dataclass
class TowerLoss:
    """The weighted total (with gradients) and its unweighted terms, detached for logging."""

    loss: torch.Tensor
    contrastive: torch.Tensor
    pixel: torch.Tensor
    commitment: torch.Tensor


def siglip_sigmoid_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP loss for matched pairs [B, C] x [B, C]: every (image, text) pair is a binary problem,
    positive on the diagonal. Normalised by the batch size, as in the SigLIP paper."""
    image = F.normalize(image_embeds.float(), dim=-1)
    text = F.normalize(text_embeds.float(), dim=-1)
    logits = image @ text.t() * logit_scale.float().exp() + logit_bias.float()
    signs = 2 * torch.eye(len(image), device=logits.device) - 1
    return -F.logsigmoid(signs * logits).sum() / len(image)


def freeze_text_side(tower: RQVisionTower) -> None:
    tower.siglip.text_model.requires_grad_(False)
    tower.siglip.logit_scale.requires_grad_(False)
    tower.siglip.logit_bias.requires_grad_(False)


def tower_loss(
    tower: RQVisionTower,
    pixels: torch.Tensor,
    text_embeds: torch.Tensor,
    weights: TowerLossWeights | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TowerLoss:
    """pixels [B, 3, R, R] in [-1, 1] with their captions' pooled text embeddings [B, C] -> losses."""
    weights = weights or TowerLossWeights()
    out = tower.quantize(tower.features(pixels))
    contrastive = siglip_sigmoid_loss(tower.image_embeds(out.z_q), text_embeds, tower.logit_scale, tower.logit_bias)
    recon = tower.decode(out.z_q)
    if recon.shape[-2:] != pixels.shape[-2:]:
        # The 384 tower decodes 24 x 16 = 384 pixels from the 378 pixels SigLIP actually saw.
        recon = F.interpolate(recon, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    pixel = F.mse_loss(recon.float(), pixels.float())
    reconstruction = pixel + tower.config.latent_loss_weight * out.commitment_loss
    if perceptual is not None and weights.perceptual:
        reconstruction = reconstruction + weights.perceptual * perceptual(recon, pixels)
    loss = weights.contrastive * contrastive + weights.reconstruction * reconstruction
    return TowerLoss(
        loss=loss, contrastive=contrastive.detach(), pixel=pixel.detach(), commitment=out.commitment_loss.detach()
    )
