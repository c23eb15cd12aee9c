"""What ``arvision train <task>`` trains: each task builds its model, data and loss for the shared loop.

A task receives the ``model`` and ``data`` sections of a :class:`~arvision.training.loop.TrainConfig`
and parses them into its own dataclasses.

Randomness, so that a run resumes bit for bit and N ranks train as one process with N times the batch:

* batch-level draws (one choice for the whole step, e.g. which loss branch runs) come from the ``generator``
  passed to :meth:`TrainingTask.loss`: identical on every rank and restored on resume;
* per-sample draws must differ between ranks: they come from the global RNG (as dropout does), which the loop
  seeds with ``seed + rank`` and restores per rank on resume, or derive from the sample indices in the dataset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, default_collate

from arvision.checkpoint import read_json, select_prefix
from arvision.data.datasets import WorldImages
from arvision.data.photos import BundledPhotoCrops
from arvision.data.transforms import check_policy
from arvision.data.user import ImageFiles
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.errors import InputError
from arvision.tokenizers.discriminator import PatchDiscriminator, load_discriminator
from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig
from arvision.training.config import build_dataclass, require_data_length, require_positive
from arvision.training.distributed import unwrap
from arvision.training.tokenizer import TokenizerLossConfig, TokenizerObjective, set_train_mode


class TrainingTask(ABC):
    """Interface of a training task. ``loss`` must call ``model``'s forward (so DDP/FSDP see it)."""

    name: ClassVar[str]

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The module to train (wrapped by DDP or sharded by FSDP2 afterwards)."""

    @abstractmethod
    def build_dataset(self) -> Dataset:
        """A map-style dataset; item ``i`` must not depend on global RNG state."""

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, float logs) for one micro-batch; ``generator`` for batch-level draws only (module
        docstring: per-sample draws drawn from it would repeat on every rank)."""

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        """Sub-modules that FSDP2 shards one by one (default: none, only the root)."""
        return []

    def clip_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by network; the loop clips each group's gradient norm on its own
        (default: one group). Networks with opposed losses that share one optimiser step, a GAN's generator
        and discriminator, need a group each: in one norm the discriminator's larger gradients would scale
        the generator's step down, where the usual recipe gives each network its own optimiser."""
        return {"model": [p for p in model.parameters() if p.requires_grad]}

    @abstractmethod
    def export(self, weights: Mapping[str, torch.Tensor], folder: Path) -> None:
        """Write the trained weights (keys of :meth:`build_model`'s state dict) in a ``from_pretrained`` layout."""

    def sample_images(self, model: nn.Module) -> list[Image.Image]:
        return []


class ObjectiveWithFrozenHelpers(nn.Module):
    """Base of training objectives that use frozen helpers (a tokenizer, a text encoder's model) kept out of
    ``parameters()`` and the state dict, so DDP/FSDP, the EMA and checkpoints carry only what trains, while
    ``.to()`` / ``.cuda()`` still move them. Subclasses name the helpers in :meth:`frozen_modules`."""

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        return ()

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for module in self.frozen_modules():
            module._apply(fn)
        return self


def check_train_parts(train: Sequence[str], parts: Sequence[str], lora: bool, adapted: str, adapted_part: str) -> None:
    """InputError for a ``model.train`` list that is empty or names something not in ``parts``, or that leaves
    out ``adapted_part`` (the part holding the ``adapted`` model, e.g. the LLM) while LoRA adapters are on."""
    unknown = sorted(set(train) - set(parts))
    if unknown or not train:
        raise InputError(f"model.train: {unknown or 'empty'}; choose from {list(parts)}")
    if lora and adapted_part not in train:
        raise InputError(
            f"model.lora adapts the {adapted}: keep {adapted_part} in model.train, or set model.lora.rank=0"
        )


@dataclass
class TokenizerData:
    """Where the tokenizer's training images come from, and their size."""

    source: str = "photos"  # "photos": crops of scikit-image's bundled photos; "world": the procedural world;
    # "images": your image files (data.path: a folder, searched recursively, or a .jsonl / .csv listing)
    resolution: int = 128  # a multiple of the tokenizer's downsampling
    length: int = 100_000  # photos and world only: items per epoch (your images: one epoch is each file once)
    path: str | None = None
    policy: str = "center"  # how your images become squares (arvision.data.transforms.CROP_POLICIES)

    def __post_init__(self) -> None:
        require_positive("data", {"resolution": self.resolution})
        require_data_length(self.length)
        check_policy(self.policy)
        if self.path is not None and self.source != "images":
            raise InputError(f"data.path is read with data.source=images only (this config has {self.source!r})")


@dataclass
class DiscriminatorConfig:
    """A PatchGAN (:class:`~arvision.tokenizers.discriminator.PatchDiscriminator`) against the tokenizer."""

    ndf: int = 64
    n_layers: int = 3


@dataclass
class TokenizerModel:
    """The tokenizer to train (its architecture, or a folder to fine-tune), its loss and optional GAN."""

    tokenizer: HybridTokenizerConfig = field(default_factory=HybridTokenizerConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    init_from: str | None = None  # a tokenizer folder to fine-tune (HART: decoder-only from VAR's)
    # None: no GAN. Its weights start from init_from's ``disc.`` keys when that folder has them, and are
    # exported there too, as the official tokenizer checkpoint keeps them.
    discriminator: DiscriminatorConfig | None = None


class TokenizerTask(TrainingTask):
    """The hybrid tokenizer: alternating continuous/discrete decoding, decoder-only or full training."""

    name = "tokenizer"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any], seed: int = 0):
        self.model_config = build_dataclass(TokenizerModel, model, prefix="model.")
        self.data_config = build_dataclass(TokenizerData, data, prefix="data.")
        self.seed = seed
        c = self.model_config
        # A fine-tuned tokenizer keeps the architecture of the folder it starts from; model.tokenizer is then unused.
        self.architecture = c.tokenizer
        if c.init_from:
            self.architecture = HybridTokenizerConfig.from_dict(read_json(Path(c.init_from) / "config.json"))
        resolution, down = self.data_config.resolution, self.architecture.downsample
        if resolution % down:
            raise InputError(f"data.resolution {resolution} is not a multiple of the tokenizer's downsampling {down}")
        if c.loss.perceptual_weight:
            raise InputError(
                "model.loss.perceptual_weight: the tokenizer task has no perceptual network to weigh; leave it 0"
            )

    def build_model(self) -> nn.Module:
        c = self.model_config
        tokenizer = HybridTokenizer.from_pretrained(c.init_from) if c.init_from else HybridTokenizer(c.tokenizer)
        set_train_mode(tokenizer, c.loss.mode)
        discriminator = None
        if c.discriminator is not None:
            discriminator = PatchDiscriminator(ndf=c.discriminator.ndf, n_layers=c.discriminator.n_layers)
            if c.init_from:
                load_discriminator(discriminator, c.init_from)
        return TokenizerObjective(tokenizer, c.loss, discriminator=discriminator)

    def build_dataset(self) -> Dataset:
        d = self.data_config
        if d.source == "photos":
            return BundledPhotoCrops(d.resolution, length=d.length, seed=self.seed)
        if d.source == "world":
            world = ProceduralWorld(WorldConfig(image_size=d.resolution), seed=self.seed)
            return WorldImages(world, length=d.length)
        if d.source == "images":
            if not d.path:
                raise InputError("data.source 'images' needs data.path (an image folder, .jsonl or .csv)")
            return ImageFiles.from_source(d.path, size=d.resolution, policy=d.policy)
        raise InputError(
            f"data.source {d.source!r} is not available for the tokenizer task (use 'photos', 'world' or 'images')"
        )

    def collate(self, items: list[Any]) -> torch.Tensor:
        batch = default_collate(items)
        return batch["image"] if isinstance(batch, dict) else batch

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        continuous = bool(torch.rand((), generator=generator) < self.model_config.loss.continuous_prob)
        total, terms = model(batch, continuous)
        logs = {k: v.item() for k, v in terms.items() if k != "recon"}
        if self.model_config.loss.mode == "full":
            logs["codebook_usage"] = unwrap(model).tokenizer.quantize.codebook_usage()
        return total, logs

    def clip_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        objective = unwrap(model)
        networks = {"tokenizer": objective.tokenizer, "discriminator": objective.discriminator}
        return {
            name: [p for p in net.parameters() if p.requires_grad] for name, net in networks.items() if net is not None
        }

    def export(self, weights: Mapping[str, torch.Tensor], folder: Path) -> None:
        tokenizer = HybridTokenizer(self.architecture)
        tokenizer.load_state_dict(select_prefix(weights, "tokenizer."))
        tokenizer.save_pretrained(folder, discriminator=select_prefix(weights, "discriminator.") or None)


TASK_NAMES = ("tokenizer", "hart", "vila-u-tower", "vila-u")


def build_task(name: str, model: Mapping[str, Any], data: Mapping[str, Any], seed: int = 0) -> TrainingTask:
    """The task ``name`` (one of :data:`TASK_NAMES`) for these ``model`` and ``data`` sections."""
    # The TrainConfig seed reaches numpy generators (the world), which refuse negative seeds, and torch's, which
    # take 64 bits: below 2**62 leaves room for the seed + rank and seed + epoch derived from it.
    if not 0 <= seed < 2**62:
        raise InputError(f"seed must be within [0, 2**62), got {seed}")
    if name == "tokenizer":
        return TokenizerTask(model, data, seed=seed)
    if name == "hart":
        from arvision.training.hart_task import HartTask  # imports the text encoders only when needed

        return HartTask(model, data, seed=seed)
    if name in ("vila-u-tower", "vila-u"):
        from arvision.training.vila_u_task import VilaUTask, VilaUTowerTask  # imports transformers only when needed

        task = VilaUTowerTask if name == "vila-u-tower" else VilaUTask
        return task(model, data, seed=seed)
    raise InputError(f"unknown training task {name!r}; available: {list(TASK_NAMES)}")
