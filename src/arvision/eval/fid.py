"""Fréchet and kernel Inception distances (FID, KID) between two sets of images, the metrics of the HART and
VILA-U papers' generation tables (MJHQ-30K, ImageNet).

The distances are torchmetrics' (``FrechetInceptionDistance``, ``KernelInceptionDistance``); the features are
those of the Inception-v3 every FID paper uses (TensorFlow's 2015-12-05 graph), read from its TorchScript
file ``inception-2015-12-05.pt`` (the one clean-fid and StyleGAN3's metrics load; nothing is downloaded here,
so the file is given by path). Any module that maps images ``[B, 3, S, S]`` (float, 0..255) to features
``[B, D]`` can stand in for it. Each image set is read once: both distances are computed from the same features.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from tqdm.auto import tqdm

from arvision.checkpoint import save_state_dict
from arvision.data.user import ImageFiles
from arvision.errors import CheckpointError, InputError
from arvision.imaging import load_image

FID_IMAGE_SIZE = 299  # Inception-v3's input; images are resized whole to it, as clean-fid does (clean_resize)
KID_SUBSET_SIZE = 1000  # torchmetrics' and the KID paper's, lowered to the smaller set when it has fewer


class TorchScriptInception(nn.Module):
    """The FID Inception-v3 from its TorchScript file: images ``[B, 3, H, W]`` as floats in 0..255 ->
    pool features ``[B, 2048]`` (the graph resizes to 299 itself, as TensorFlow's did). ``digest``: the file's
    SHA-256, which saved features record so that they are only compared with features of the same network."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise InputError(
                f"Inception weights not found: {path} (FID needs the TorchScript file inception-2015-12-05.pt, "
                "the one clean-fid and StyleGAN3 use; nothing is downloaded)"
            )
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the weights come in
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                self.network = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a TorchScript file: {str(exc).splitlines()[0]}") from None
        self.digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images, return_features=True)


class _GivenFeatures(nn.Module):
    """Hands features computed beforehand to torchmetrics, whose metrics otherwise run the network each."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@dataclass
class ImageSetFeatures:
    """The features ``[N, D]`` of an image set and the files left out because they could not be read."""

    features: torch.Tensor
    skipped: list[str]


@torch.no_grad()
def image_features(
    source: str | os.PathLike,
    network: nn.Module,
    *,
    size: int = FID_IMAGE_SIZE,
    batch_size: int = 50,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ImageSetFeatures:
    """Features ``[N, D]`` (float64) of every image under a folder (or of a ``.jsonl`` / ``.csv`` listing), each
    resized whole to ``size`` x ``size`` as clean-fid does (:func:`clean_resize`), in sorted path order (a
    listing's own order);
    ``num_workers`` processes decode the images (on a GPU, decoding is the slow part). An unreadable file is left
    out (and named in ``skipped``) rather than replaced, so the set is not changed behind the metric's back."""
    files = _Readable(ImageFiles.from_source(source).paths, size)
    batches = DataLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=_readable_batch)
    network = network.to(device)
    features: list[torch.Tensor] = []
    skipped: list[str] = []
    with tqdm(total=len(files), desc=f"features of {Path(source).name}", disable=not progress, leave=False) as bar:
        for images, unreadable in batches:
            skipped += unreadable
            if images is not None:
                features.append(network(images.to(device)).double().cpu())
            bar.update(len(unreadable) + (0 if images is None else len(images)))
    if not features:
        raise InputError(f"none of the {len(files)} images under {source} could be read")
    return ImageSetFeatures(torch.cat(features), skipped)


def clean_resize(image: Image.Image, size: int) -> torch.Tensor:
    """clean-fid's resize (its default "clean" mode): the whole image, not cropped, to ``size`` x ``size``, each
    channel bicubic in PIL's float mode and clipped to 0..255 but not rounded again -> ``[3, size, size]`` float.
    Resizing in uint8 or cropping first would give FIDs that cannot be compared with clean-fid's."""
    channels = np.asarray(image.convert("RGB"), dtype=np.float32)
    resized = [
        np.asarray(Image.fromarray(channels[..., c], mode="F").resize((size, size), Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return torch.from_numpy(np.stack(resized).clip(0, 255))


class _Readable(Dataset):
    """Image files resized by :func:`clean_resize`; an unreadable one comes back as its path, to be left out,
    not replaced."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | str:
        try:
            return clean_resize(load_image(self.paths[index]), self.size)
        except (InputError, OSError):
            return str(self.paths[index])


def _readable_batch(items: list[torch.Tensor | str]) -> tuple[torch.Tensor | None, list[str]]:
    images = [item for item in items if isinstance(item, torch.Tensor)]
    return (torch.stack(images) if images else None), [item for item in items if isinstance(item, str)]


def save_features(found: ImageSetFeatures, path: str | os.PathLike, *, network_digest: str, size: int) -> None:
    """Write an image set's features (safetensors, atomically) with what made them, for :func:`load_features`:
    a reference set (30,000 MJHQ images, say) is then read once for every evaluation against it."""
    metadata = {"network_sha256": network_digest, "size": str(size), "skipped": json.dumps(found.skipped)}
    save_state_dict({"features": found.features}, path, metadata=metadata)


def load_features(path: str | os.PathLike, *, network_digest: str, size: int) -> ImageSetFeatures:
    """Features written by :func:`save_features`; an :class:`InputError` if another network or image size made
    them (distances between features of different networks mean nothing)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"features file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            metadata, features = f.metadata() or {}, f.get_tensor("features")
    except (SafetensorError, OSError, KeyError) as exc:
        raise InputError(f"{path} is not a features file of arvision eval fid: {exc}") from None
    made_with = (metadata.get("network_sha256"), metadata.get("size"))
    if made_with != (network_digest, str(size)):
        raise InputError(
            f"{path} holds features of another network or image size (network sha256 {made_with[0]}, size "
            f"{made_with[1]}; this evaluation: {network_digest}, {size}): compute them again"
        )
    return ImageSetFeatures(features, json.loads(metadata.get("skipped", "[]")))


def distances(
    generated: torch.Tensor,
    reference: torch.Tensor,
    *,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID (mean and standard deviation over ``kid_subsets`` random subsets, drawn from ``seed``)
    between two feature sets ``[N, D]`` and ``[M, D]``; the KID subset size is lowered to the smaller set."""
    if generated.ndim != 2 or reference.ndim != 2 or generated.shape[1] != reference.shape[1]:
        raise InputError(
            f"feature sets must be [N, D] with the same D, got {tuple(generated.shape)} and {tuple(reference.shape)}"
        )
    smallest = min(len(generated), len(reference))
    if smallest < 2:
        raise InputError(f"FID needs at least 2 images in each set, got {len(generated)} and {len(reference)}")
    given = _GivenFeatures(generated.shape[1])
    fid = FrechetInceptionDistance(feature=given)
    subset = min(kid_subset_size, smallest)
    with warnings.catch_warnings():  # that it keeps every feature in memory: they are in memory already
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        kid = KernelInceptionDistance(feature=given, subsets=kid_subsets, subset_size=subset)
    for metric in (fid, kid):
        metric.update(reference.double(), real=True)
        metric.update(generated.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": subset,
    }
