"""Tokenize a captioned (or class-labelled) image dataset once and train the generator on the stored
targets (as MAR caches its latents): the frozen tokenizer's encoder then runs once per image instead of
once per epoch.

The cache is one folder: ``targets.safetensors`` (per-item indices of all scales, concatenated, the
residual before the last scale, and the class labels of a class-labelled dataset) plus ``meta.json``
(length, a fingerprint of the tokenizer weights, the dataset's :meth:`~CacheableDataset.fingerprint`, the
captions of a captioned one). A cache whose tokenizer, dataset or length no longer matches is rebuilt (with
a log line saying why); writes are atomic, so a killed build never leaves a half-written cache behind.
Under torchrun rank 0 builds while the other ranks wait, then they load what it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from arvision import checkpoint
from arvision.tokenizers.hart_tokenizer import HybridTokenizer

TARGETS_FILE, META_FILE = "targets.safetensors", "meta.json"
# How long the other ranks wait for rank 0's build: tokenizing a large dataset takes hours, far past the
# default process group's timeout (10 minutes under NCCL), so they wait on a gloo group of their own.
BUILD_WAIT = timedelta(hours=48)


@runtime_checkable
class CacheableDataset(Protocol):
    """A dataset that can say what it holds, so a cache of it is never reused for other data."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able description that changes whenever the items would (source, settings, file listing)."""


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


@contextlib.contextmanager
def _rank_zero_first() -> Iterator[None]:
    """Run the body on rank 0 first, on the other ranks once it is done (a no-op without a process group).

    Rank 0 tells the others whether its body succeeded: if it raised, they raise too instead of waiting out
    the group's timeout (two days, for long builds) under a launcher that does not stop them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        yield
        return
    group = dist.new_group(backend="gloo", timeout=BUILD_WAIT)
    done = torch.zeros(1)
    try:
        if dist.get_rank() == 0:
            try:
                yield
            except BaseException:
                dist.broadcast(done, src=0, group=group)  # 0: failed
                raise
            dist.broadcast(done.fill_(1), src=0, group=group)
        else:
            dist.broadcast(done, src=0, group=group)
            if not done.item():
                raise RuntimeError("rank 0 failed to load or build the latent cache (its error says why)")
            yield
    finally:
        dist.destroy_process_group(group)


def _stale_reason(meta: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """Why a cache described by ``meta`` cannot serve ``expected`` (None: it can)."""
    for key, what in (("fingerprint", "tokenizer"), ("dataset", "dataset"), ("length", "dataset length")):
        if meta.get(key) != expected[key]:
            return f"another {what}"
    return None


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
        dataset: CacheableDataset,
        tokenizer: HybridTokenizer,
        batch_size: int = 32,
        progress: bool = True,
        num_workers: int = 0,
    ) -> CachedTargets:
        """Load the cache in ``folder`` if it was built from this dataset (its fingerprint and length) and this
        tokenizer, else build it from ``dataset`` items ``{"image": [3, H, W], "caption": str}`` (or
        ``"label": int``). Under torchrun rank 0 loads or builds first and the other ranks then load its cache
        (or build their own where ``folder`` is not shared with rank 0)."""
        if not isinstance(dataset, CacheableDataset):
            raise TypeError(f"{type(dataset).__name__} has no fingerprint(): a cache of it could serve other data")
        expected = {
            "fingerprint": tokenizer_fingerprint(tokenizer),
            "dataset": dataset.fingerprint(),
            "length": len(dataset),
        }
        expected = json.loads(json.dumps(expected))  # as meta.json reads it back: tuples become lists
        with _rank_zero_first():
            return cls._load_or_build(Path(folder), dataset, tokenizer, expected, batch_size, progress, num_workers)

    @classmethod
    def _load_or_build(
        cls,
        folder: Path,
        dataset: CacheableDataset,
        tokenizer: HybridTokenizer,
        expected: dict[str, Any],
        batch_size: int,
        progress: bool,
        num_workers: int,
    ) -> CachedTargets:
        meta_path = folder / META_FILE
        if meta_path.is_file() and (folder / TARGETS_FILE).is_file():
            meta = checkpoint.read_json(meta_path)
            reason = _stale_reason(meta, expected)
            if reason is None:
                tensors = checkpoint.load_state_dict(folder / TARGETS_FILE)
                return cls(tensors["indices"], tensors["residual"], meta.get("captions"), tensors.get("labels"))
            tqdm.write(f"latent cache {folder} was built for {reason}: rebuilding it")
        indices, residuals, captions, labels = [], [], [], []
        # Its own generator: building must not draw from the global RNG that the training draws depend on.
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=default_collate,
            num_workers=num_workers,
            generator=torch.Generator(),
        )
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
        meta = dict(expected)
        if labels:
            tensors["labels"] = torch.cat(labels).long()
        else:
            meta["captions"] = captions
        # The old meta goes first: a build killed after the targets are written must not leave them
        # described as the previous dataset's.
        meta_path.unlink(missing_ok=True)
        checkpoint.save_state_dict(tensors, folder / TARGETS_FILE)
        checkpoint.write_json(meta_path, meta)
        return cls(tensors["indices"], tensors["residual"], meta.get("captions"), tensors.get("labels"))
