"""Tokenize a captioned (or class-labelled) image dataset once and train the generator on the stored
targets (as MAR caches its latents): the frozen tokenizer's encoder then runs once per image instead of
once per epoch.

The cache is one folder: ``targets.safetensors`` (per-item indices of all scales, concatenated, the
residual before the last scale, and the class labels of a class-labelled dataset) plus ``meta.json``
(length, a fingerprint of the tokenizer weights, the captions of a captioned one). A cache whose
fingerprint or length no longer matches is rebuilt; writes are atomic, so concurrent ranks or a killed
build never leave a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from arvision import checkpoint
from arvision.tokenizers.hart_tokenizer import HybridTokenizer

TARGETS_FILE, META_FILE = "targets.safetensors", "meta.json"


@torch.no_grad()
def tokenize_targets(tokenizer: HybridTokenizer, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Images ``[B, 3, H, W]`` -> (per-scale indices ``[B, pn^2]``, residual before the last scale ``[B, C, h, w]``).

    The tokens are training targets: computed in full precision whatever autocast the trainer uses.
    """
    with torch.autocast(images.device.type, enabled=False):
        latent = tokenizer.encode_latent(images.float())
        return tokenizer.quantize.latent_to_indices(latent, tokenizer.patch_nums_for(latent))


def tokenizer_fingerprint(tokenizer: HybridTokenizer) -> str:
    """SHA-256 over the tokenizer's config and weights: a cache is valid only for the same tokenizer."""
    digest = hashlib.sha256(repr(sorted(tokenizer.config.to_dict().items())).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class CachedTargets(Dataset):
    """Items ``{"indices": [sum pn^2] int64, "residual": [C, h, w], "caption": str, "index": int}``, with
    ``"label": int`` instead of ``"caption"`` when the cache holds ``labels`` [N] rather than ``captions``."""

    def __init__(
        self,
        indices: torch.Tensor,
        residual: torch.Tensor,
        captions: list[str] | None = None,
        labels: torch.Tensor | None = None,
    ):
        if (captions is None) == (labels is None):
            raise ValueError("a cache holds either captions or labels")
        self.indices, self.residual, self.captions, self.labels = indices, residual, captions, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"indices": self.indices[index], "residual": self.residual[index], "index": index}
        if self.labels is not None:
            item["label"] = self.labels[index]
        else:
            item["caption"] = self.captions[index]
        return item

    @classmethod
    def load_or_build(
        cls,
        folder: str | os.PathLike,
        dataset: Dataset,
        tokenizer: HybridTokenizer,
        batch_size: int = 32,
        progress: bool = True,
        num_workers: int = 0,
    ) -> CachedTargets:
        """Load the cache in ``folder`` if it was built from ``dataset``'s length and this tokenizer, else
        build it from ``dataset`` items ``{"image": [3, H, W], "caption": str}`` (or ``"label": int``)."""
        folder = Path(folder)
        fingerprint = tokenizer_fingerprint(tokenizer)
        meta_path = folder / META_FILE
        if meta_path.is_file() and (folder / TARGETS_FILE).is_file():
            meta = checkpoint.read_json(meta_path)
            if meta.get("fingerprint") == fingerprint and meta.get("length") == len(dataset):
                tensors = checkpoint.load_state_dict(folder / TARGETS_FILE)
                return cls(tensors["indices"], tensors["residual"], meta.get("captions"), tensors.get("labels"))
        indices, residuals, captions, labels = [], [], [], []
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=default_collate, num_workers=num_workers)
        device = next(tokenizer.parameters()).device
        for batch in tqdm(loader, desc="tokenizing", disable=not progress, unit="batch"):
            scales, residual = tokenize_targets(tokenizer, batch["image"].to(device))
            indices.append(torch.cat(scales, dim=1).cpu())
            residuals.append(residual.cpu())
            if "label" in batch:
                labels.append(batch["label"])
            else:
                captions.extend(batch["caption"])
        tensors = {"indices": torch.cat(indices), "residual": torch.cat(residuals)}
        meta = {"fingerprint": fingerprint, "length": len(dataset)}
        if labels:
            tensors["labels"] = torch.cat(labels).long()
        else:
            meta["captions"] = captions
        checkpoint.save_state_dict(tensors, folder / TARGETS_FILE)
        checkpoint.write_json(meta_path, meta)
        return cls(tensors["indices"], tensors["residual"], meta.get("captions"), tensors.get("labels"))
