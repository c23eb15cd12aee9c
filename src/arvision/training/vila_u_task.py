"""``arvision train vila-u-tower`` and ``arvision train vila-u``: VILA-U's two stages on the procedural world.

Both start from a VILA-U folder (``model.init_from``), keep float32 master weights (the trainer's
autocast does mixed precision) and export in the dtype that folder was stored in.

* ``vila-u-tower``: the vision tower learns with the contrastive + reconstruction objective of
  :mod:`arvision.training.rq_vision_tower` on world images and captions: codebooks by EMA, the pixel
  decoder (and with ``model.train_encoder`` the SigLIP image side) by gradient, the SigLIP text tower
  frozen. Captions reach the text tower through :mod:`arvision.text.hashed_words`, as releases ship no
  SigLIP tokenizer. Under DDP the codebooks stay identical on every rank (their EMA statistics are
  all-reduced); FSDP2 would drop the EMA writes to sharded codebooks and is refused. The export is the
  ``init_from`` folder with its ``vision_tower/`` replaced: its LLM and depth transformer were trained on
  the old codes, so ``vila-u`` comes next.
* ``vila-u``: the LLM, projector and depth transformer (``model.train``) learn with the text + visual
  cross-entropy of :mod:`arvision.training.vila_u` on world generation examples (caption -> image codes,
  with caption dropout for classifier-free guidance) mixed with world VQA understanding examples; the
  vision tower is frozen. The export is a :class:`~arvision.pipelines.vila_u.VilaUPipeline` folder.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, default_collate
from transformers import LlamaConfig

from arvision.checkpoint import select_prefix
from arvision.data.datasets import WorldImages, WorldVideos, WorldVQA
from arvision.data.user import CaptionedImages, VQADataset
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.errors import InputError
from arvision.models.vila_u import VilaU
from arvision.pipelines.vila_u import VilaUPipeline
from arvision.pipelines.vila_u_checkpoint import is_vila_u_folder, load_vision_tower, stored_dtype
from arvision.text.base import TextEncoder
from arvision.text.hashed_words import hashed_word_ids
from arvision.text.hf_encoder import minilm_text_encoder
from arvision.tokenizers.rq_vision_tower import RQVisionTower, RQVisionTowerConfig
from arvision.training.config import build_dataclass, require_data_length, require_positive, yaml_values
from arvision.training.distributed import is_fsdp, root_params_gathered
from arvision.training.lora import LoraSettings, add_lora, merge_adapters
from arvision.training.rq_vision_tower import TowerLossWeights, freeze_text_side, tower_loss
from arvision.training.tasks import ObjectiveWithFrozenHelpers, TrainingTask, check_train_parts
from arvision.training.vila_u import VilaUExample, generation_example, understanding_example, vila_u_loss

VILA_U_PARTS = ("llm", "mm_projector", "depth_transformer")
# The Llama attention and MLP projections (names inside the LLM): where LoRA adapts VILA-U by default.
VILA_U_LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PROJECTOR_STATISTICS_IMAGES = 512
PROJECTOR_INITS = ("default", "standardise", "whiten")
# Whitening floors each eigenvalue at this share of the largest, so near-empty directions are not blown up.
WHITENING_FLOOR = 1e-4


def input_transform(features: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, C] -> (mean [C], transform [C, C]) such that ``transform @ (x - mean)`` has unit variance
    per channel ("standardise") or identity covariance ("whiten", ZCA, eigenvalues floored)."""
    if mode not in ("standardise", "whiten"):
        raise ValueError(f"input_transform mode must be 'standardise' or 'whiten', got {mode!r}")
    features = features.double()
    mean = features.mean(0)
    if mode == "standardise":
        return mean.float(), torch.diag(1 / features.std(0).clamp(min=1e-6)).float()
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(features.T))
    eigenvalues = eigenvalues.clamp(min=WHITENING_FLOOR * eigenvalues.max())
    return mean.float(), (eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T).float()


def _vila_u_folder(init_from: str | None) -> Path:
    if not init_from:
        raise InputError("model.init_from is required: a VILA-U folder (config.json, llm/, vision_tower/, ...)")
    if not Path(init_from).exists():
        raise InputError(f"model.init_from {init_from!r} does not exist (relative paths start at {Path.cwd()})")
    if not is_vila_u_folder(init_from):
        raise InputError(f"model.init_from {init_from!r} is not a VILA-U folder")
    return Path(init_from)


# ----- the vision tower -----


def resized_tower_config(config: RQVisionTowerConfig, image_size: int) -> RQVisionTowerConfig:
    """``config`` for ``image_size`` pixels: SigLIP's position table and the decoder's resolution follow,
    and decoder attention stays at the same levels. The size must be a multiple of the patch size."""
    vision = config.siglip["vision_config"]
    patch, old = int(vision["patch_size"]), config.image_size
    if image_size < patch or image_size % patch:
        raise InputError(f"model.image_size {image_size} must be a positive multiple of the patch size {patch}")
    if config.decoder_latent_shape is not None:
        raise InputError("model.image_size: towers that resize their latent grid before decoding are not supported")
    scale = image_size / old
    decoder = replace(
        config.decoder,
        resolution=round(config.decoder.resolution * scale),
        attn_resolutions=tuple(round(r * scale) for r in config.decoder.attn_resolutions),
    )
    siglip = {**config.siglip, "vision_config": {**vision, "image_size": image_size}}
    return replace(config, siglip=siglip, decoder=decoder)


@dataclass
class TowerModel:
    """``model`` of ``vila-u-tower``: the tower to start from, what of it learns, and the loss weights."""

    init_from: str | None = None  # a VILA-U folder (required)
    # A fresh tower (random weights, init_from's shapes otherwise) for images of this size: more tokens per
    # image (size // patch per side) and a decoder that draws at that size. None keeps init_from's tower.
    image_size: int | None = None
    # Also train the SigLIP image side by gradient; without it only the decoder does, and the contrastive
    # term (which reaches the tokens through the encoder only) is logged but cannot move.
    train_encoder: bool = False
    # The text side of the contrastive loss: "siglip" (the tower's own text tower, fed hashed word ids:
    # releases ship no SigLIP tokenizer) or "minilm" (the frozen offline MiniLM, through a trained projection).
    text_encoder: str = "siglip"
    loss: TowerLossWeights = field(default_factory=TowerLossWeights)


@dataclass
class TowerData:
    """``data`` of ``vila-u-tower``: procedural world scenes at the tower's image size."""

    length: int = 100_000
    max_objects: int = 4  # world scenes hold 1..max_objects objects
    unnamed_colour_fraction: float = 0.0  # world scenes in unnamed colours, captions naming shapes only

    def __post_init__(self) -> None:
        require_data_length(self.length)


class TowerObjective(ObjectiveWithFrozenHelpers):
    """``forward(pixels [B, 3, R, R], text)`` -> (loss, logs). ``text``: SigLIP token ids [B, L], or the
    captions when a frozen ``text_encoder`` (e.g. MiniLM) gives the text side: its masked-mean sentence
    embedding then goes through a trained linear ``text_projection`` (not exported: inference never needs it),
    and SigLIP's logit scale and bias learn with it.
    Frozen parts stay in eval mode."""

    def __init__(
        self,
        tower: RQVisionTower,
        weights: TowerLossWeights,
        train_encoder: bool,
        text_encoder: TextEncoder | None = None,
    ):
        super().__init__()
        self.tower = tower
        self.weights = weights
        self.train_encoder = train_encoder
        self.text_projection = nn.Linear(text_encoder.hidden_size, tower.config.dim) if text_encoder else None
        self.text_encoder = text_encoder  # not an nn.Module: stays out of parameters() and the state dict
        for module in self.frozen_modules():
            module.requires_grad_(False)
        freeze_text_side(tower)
        if text_encoder is not None:
            # A new text side: SigLIP's stored temperature and bias were fitted to the old one, so they learn too.
            tower.logit_scale.requires_grad_(True)
            tower.logit_bias.requires_grad_(True)
        tower.siglip.vision_model.requires_grad_(train_encoder)
        self.train()

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        return (self.text_encoder.model,) if self.text_encoder is not None else ()

    def train(self, mode: bool = True) -> TowerObjective:
        super().train(mode)  # the quantizer in training mode updates its codebooks by EMA
        self.tower.siglip.text_model.eval()
        if not self.train_encoder:
            self.tower.siglip.vision_model.eval()
        return self

    def text_embeds(self, text: torch.Tensor | Sequence[str]) -> torch.Tensor:
        if self.text_projection is None:
            with torch.no_grad():
                return self.tower.text_embeds(text)
        with torch.no_grad():
            enc = self.text_encoder.encode(list(text))
            mask = enc.mask[..., None].to(enc.hidden.dtype)
            pooled = (enc.hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.text_projection(pooled.to(self.text_projection.weight.device))

    def forward(
        self, pixels: torch.Tensor, text: torch.Tensor | Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = tower_loss(self.tower, pixels, self.text_embeds(text), self.weights)
        return out.loss, {"contrastive": out.contrastive, "pixel": out.pixel, "commitment": out.commitment}


class VilaUTowerTask(TrainingTask):
    """VILA-U's vision tower (contrastive + reconstruction) on world images; see the module docstring."""

    name = "vila-u-tower"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any], seed: int = 0):
        self.model_config = build_dataclass(TowerModel, model, prefix="model.")
        self.data_config = build_dataclass(TowerData, data, prefix="data.")
        if self.model_config.loss.perceptual:
            raise InputError("model.loss.perceptual: no perceptual network is available to this task; leave it 0")
        self.seed = seed
        self.init_from = _vila_u_folder(self.model_config.init_from)
        self.tower = load_vision_tower(self.init_from)
        self.resized = self.model_config.image_size is not None
        if self.resized:
            self.tower_config = resized_tower_config(self.tower.config, self.model_config.image_size)
        else:
            self.tower_config = self.tower.config
        text = self.tower.siglip.config.text_config
        self.text_ids_shape = (text.vocab_size, text.max_position_embeddings, text.pad_token_id)
        if self.model_config.text_encoder not in ("siglip", "minilm"):
            raise InputError(f"model.text_encoder must be 'siglip' or 'minilm', got {self.model_config.text_encoder!r}")
        self.text_encoder = minilm_text_encoder(max_length=32) if self.model_config.text_encoder == "minilm" else None

    def build_model(self) -> nn.Module:
        if self.resized:
            self.tower = RQVisionTower(self.tower_config)  # built here, after the trainer has seeded the RNG
        return TowerObjective(self.tower, self.model_config.loss, self.model_config.train_encoder, self.text_encoder)

    def build_dataset(self) -> Dataset:
        d = self.data_config
        config = WorldConfig(
            self.tower_config.image_size, max_objects=d.max_objects, unnamed_colour_fraction=d.unnamed_colour_fraction
        )
        return WorldImages(ProceduralWorld(config, seed=self.seed), length=d.length)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"image": [B, 3, R, R], "text": SigLIP ids [B, L] or the captions (for a MiniLM text side)}``."""
        batch = default_collate(items)
        if self.text_encoder is not None:
            return {"image": batch["image"], "text": list(batch["caption"])}
        vocab_size, length, pad_id = self.text_ids_shape
        return {"image": batch["image"], "text": hashed_word_ids(batch["caption"], vocab_size, length, pad_id)}

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if is_fsdp(model):
            raise InputError("vila-u-tower: FSDP2 would lose the EMA updates of sharded codebooks; use parallel=ddp")
        total, terms = model(batch["image"], batch["text"])
        return total, {k: v.item() for k, v in terms.items()}

    def export(self, weights: Mapping[str, torch.Tensor], folder: Path) -> None:
        pipe = VilaUPipeline.from_pretrained(self.init_from)
        if self.resized:
            # A resized tower: the LLM side is kept as it was (it predates the new codes either way).
            model = VilaU(replace(pipe.config, tower=self.tower_config)).to(next(pipe.model.parameters()).dtype)
            kept = {k: v for k, v in pipe.model.state_dict().items() if not k.startswith("vision_tower.")}
            model.load_state_dict(kept, strict=False)
            pipe = VilaUPipeline(model, pipe.tokenizer, pipe.text_sampling)
        pipe.model.vision_tower.load_state_dict(select_prefix(weights, "tower."))
        pipe.save_pretrained(folder)


# ----- the LLM, projector and depth transformer -----


@dataclass
class VilaUModel:
    """``model`` of ``vila-u``: the folder to start from, what learns (in full or through LoRA) and the samples."""

    init_from: str | None = None  # a VILA-U folder (required)
    # LlamaConfig fields (hidden_size, num_hidden_layers, ...): start a fresh LLM of that size, with a fresh
    # projector and depth transformer to match, on init_from's tokenizer and vision tower.
    llm: dict[str, Any] = field(default_factory=dict)
    train: list[str] = field(default_factory=lambda: list(VILA_U_PARTS))  # the rest stays frozen
    # "standardise" / "whiten": the fresh projector's first layer starts by standardising each channel of the
    # tower's features / whitening them (statistics of PROJECTOR_STATISTICS_IMAGES training images); "default":
    # PyTorch's init. Towers write a large image-wide vector over every token (see the VILA-U model card), which
    # drowns the local detail unless the inputs are evened out.
    projector_init: str = "default"
    # lora.rank > 0: adapters on the LLM's projections learn instead of its weights (the other parts in ``train``
    # still learn in full); the export merges them
    lora: LoraSettings = field(default_factory=LoraSettings)
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square left of a green star"])


@dataclass
class VilaUData:
    """``data`` of ``vila-u``: the mix of generation and understanding examples and where they come from."""

    # "world" (the procedural world) or "files": understanding turns from the JSONL at ``vqa`` (images or
    # videos; see arvision.data.VQADataset) and text-to-image pairs from ``captions`` (an image folder with
    # .txt captions, a .jsonl or a .csv). An epoch of files is the larger of the two, the other cycling.
    source: str = "world"
    vqa: str | None = None
    captions: str | None = None
    num_frames: int = 8  # frames read from each video of the VQA file
    generation_fraction: float = 0.5  # share of each batch made of generation examples (the rest: VQA)
    video_fraction: float = 0.0  # share of the generation examples that are world videos (text -> frames)
    caption_dropout: float = 0.1  # generation captions replaced by the empty prompt (unconditional branch)
    length: int = 100_000  # one epoch of world scenes
    max_objects: int = 4
    turns_per_item: int = 1  # question-answer turns per world understanding example (all supervised)
    attribute_fraction: float = 0.0  # world understanding examples that ask only colour/shape questions
    # World scenes in unnamed colours: their captions and answers name shapes only, which keeps a model from
    # learning shapes per colour (what fails on held-out colour-shape pairs; see the VILA-U model card).
    unnamed_colour_fraction: float = 0.0

    def __post_init__(self) -> None:
        require_positive("data", {"num_frames": self.num_frames})
        require_data_length(self.length)


def generation_count(batch_size: int, fraction: float) -> int:
    """How many items of a rank's batch become generation examples: ``round(fraction * B)``, at least one
    when ``fraction > 0``. Only generation examples reach the depth transformer, and DDP needs every
    trained parameter to get a gradient at every step on every rank."""
    return max(1, round(fraction * batch_size)) if fraction > 0 else 0


class GenerationAndUnderstanding(Dataset):
    """Index ``i`` stands for item ``i`` of a text-to-image source (items ``{"image": [3, R, R], "caption"}``),
    of an understanding source (items ``{"pixels": [3, R, R] or [F, 3, R, R], "is_video", "turns"}``) and
    optionally of a text-to-video source (items ``{"frames": [F, 3, R, R], "caption"}``), each cycled over
    ``length``. Items are the indices themselves: the task's collate loads each one as the
    kind of example its batch slot needs, so no item is loaded twice."""

    def __init__(self, captions: Dataset | None, questions: Dataset | None, length: int, videos: Dataset | None = None):
        self.captions, self.questions, self.videos, self.length = captions, questions, videos, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return index

    def generation_item(self, index: int) -> tuple[torch.Tensor, str]:
        """(pixels [1, 3, R, R], caption)."""
        item = self.captions[index % len(self.captions)]
        return item["image"][None], item["caption"]

    def video_item(self, index: int) -> tuple[torch.Tensor, str]:
        """(frames [F, 3, R, R], caption)."""
        item = self.videos[index % len(self.videos)]
        return item["frames"], item["caption"]

    def understanding_item(self, index: int) -> tuple[torch.Tensor, list[tuple[str, str]], bool]:
        """(pixels [N, 3, R, R] (N frames of a video, else 1), turns, is_video)."""
        item = self.questions[index % len(self.questions)]
        pixels = item["pixels"] if item["is_video"] else item["pixels"][None]
        return pixels, list(item["turns"]), item["is_video"]


class VilaUObjective(nn.Module):
    """``forward(examples)`` -> (loss, logs): text + visual cross-entropy. The parts of ``model`` not in
    ``train`` (always the vision tower) are frozen and kept in eval mode: no dropout, no codebook EMA."""

    def __init__(self, model: VilaU, train: Sequence[str]):
        super().__init__()
        self.vila_u = model
        self.frozen_parts = [name for name in ("vision_tower", *VILA_U_PARTS) if name not in train]
        for name in train:
            getattr(model, name).requires_grad_(True)
        for name in self.frozen_parts:
            getattr(model, name).requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> VilaUObjective:
        super().train(mode)
        for name in self.frozen_parts:
            getattr(self.vila_u, name).eval()
        return self

    def forward(self, examples: Sequence[VilaUExample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = vila_u_loss(self.vila_u, examples)
        logs = {"text_ce": out.text_loss}
        if out.visual_loss is not None:
            logs["visual_ce"] = out.visual_loss
        return out.loss, logs


class VilaUTask(TrainingTask):
    """VILA-U's LLM, projector and depth transformer on generation + understanding examples, tower frozen."""

    name = "vila-u"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any], seed: int = 0):
        self.model_config = build_dataclass(VilaUModel, model, prefix="model.")
        self.data_config = build_dataclass(VilaUData, data, prefix="data.")
        self.seed = seed
        self._check()
        self.dataset: GenerationAndUnderstanding | None = None  # set by build_dataset, read by collate
        self.init_from = _vila_u_folder(self.model_config.init_from)
        self.base = VilaUPipeline.from_pretrained(self.init_from, dtype=torch.float32)
        if self.model_config.llm:
            self.base = self._fresh_language_side(self.base, self.model_config.llm)

    def _fresh_language_side(self, base: VilaUPipeline, llm_overrides: dict[str, Any]) -> VilaUPipeline:
        if set(VILA_U_PARTS) - set(self.model_config.train):
            raise InputError(f"model.llm starts {list(VILA_U_PARTS)} afresh, so model.train must name them all")
        parsed = yaml_values(llm_overrides)  # LlamaConfig checks types strictly
        # LlamaConfig would keep an unknown key as an attribute and train as if it were not given
        unknown = sorted(set(parsed) - set(LlamaConfig().to_dict()) - set(base.config.llm))
        if unknown:
            raise InputError(f"model.llm: unknown LlamaConfig key(s) {unknown}")
        llm = {**base.config.llm, **parsed}
        try:
            depth = replace(base.config.depth, llm_dim=int(llm["hidden_size"]))
            model = VilaU(replace(base.config, llm=llm, depth=depth))
        except Exception as exc:  # transformers raises several error types for a bad config
            raise InputError(f"model.llm {parsed}: {exc}") from exc
        model.vision_tower.load_state_dict(base.model.vision_tower.state_dict())
        return VilaUPipeline(model.float(), base.tokenizer, base.text_sampling)

    def _check(self) -> None:
        train, d = self.model_config.train, self.data_config
        check_train_parts(train, VILA_U_PARTS, self.model_config.lora.rank > 0, "LLM", "llm")
        for key in ("generation_fraction", "video_fraction", "caption_dropout"):
            if not 0 <= getattr(d, key) <= 1:
                raise InputError(f"data.{key} must lie in [0, 1], got {getattr(d, key)}")
        if d.generation_fraction == 0 and "depth_transformer" in train:
            raise InputError(
                "data.generation_fraction 0 gives the depth transformer nothing to learn; drop it from model.train"
            )
        init = self.model_config.projector_init
        if init not in PROJECTOR_INITS:
            raise InputError(f"model.projector_init must be one of {list(PROJECTOR_INITS)}, got {init!r}")
        if init != "default" and not self.model_config.llm:
            raise InputError(f"model.projector_init {init!r} starts a fresh projector: it needs model.llm")
        if d.turns_per_item < 1:
            raise InputError(f"data.turns_per_item must be at least 1, got {d.turns_per_item}")
        if d.source not in ("world", "files"):
            raise InputError(f"data.source must be 'world' or 'files', got {d.source!r}")
        if d.source == "files":
            if d.video_fraction > 0:
                raise InputError("data.video_fraction: text-to-video examples come from the world only")
            if d.generation_fraction > 0 and not d.captions:
                raise InputError("data.source 'files' with data.generation_fraction > 0 needs data.captions")
            if d.generation_fraction < 1 and not d.vqa:
                raise InputError("data.source 'files' with data.generation_fraction < 1 needs data.vqa")

    def build_model(self) -> nn.Module:
        if self.model_config.projector_init != "default":
            features = self._tower_features(PROJECTOR_STATISTICS_IMAGES)
            mean, transform = input_transform(features, self.model_config.projector_init)
            self.base.model.mm_projector.fold_input_transform(mean, transform)
        objective = VilaUObjective(self.base.model, self.model_config.train)
        if self.model_config.lora.rank > 0:  # the LLM learns through its adapters, the other parts in full
            add_lora(objective.vila_u.llm, self.model_config.lora, VILA_U_LORA_TARGETS)
        return objective

    @torch.no_grad()
    def _tower_features(self, count: int) -> torch.Tensor:
        """The tower's ``z_q`` [count * g*g, C] for the images of the first ``count`` training items
        (understanding items, or generation ones for a generation-only source)."""
        dataset = self.build_dataset()
        load = dataset.understanding_item if dataset.questions is not None else dataset.generation_item
        images = torch.cat([load(index)[0] for index in range(min(count, len(dataset)))])
        tower = self.base.model.vision_tower.eval()
        return torch.cat([tower.encode(chunk)[1].flatten(0, 2) for chunk in images.split(64)])

    def build_dataset(self) -> Dataset:
        if self.dataset is not None:
            return self.dataset
        d, size = self.data_config, self.base.config.tower.image_size
        if d.source == "world":
            # Clips have the model's frame count; stills and questions do not depend on it.
            frames = self.base.config.video_generation_frames
            config = WorldConfig(
                size, max_objects=d.max_objects, video_frames=frames, unnamed_colour_fraction=d.unnamed_colour_fraction
            )
            world = ProceduralWorld(config, seed=self.seed)
            captions = WorldImages(world, d.length)
            questions = WorldVQA(world, d.length, d.turns_per_item, d.attribute_fraction)
            videos = WorldVideos(world, d.length) if d.video_fraction > 0 else None
            self.dataset = GenerationAndUnderstanding(captions, questions, d.length, videos)
            return self.dataset
        # The release's preprocessing: a straight resize for understanding, the top/centre square for generation.
        captions = CaptionedImages.from_source(d.captions, size, policy="top") if d.generation_fraction > 0 else None
        questions = (
            VQADataset(d.vqa, size, policy="resize", num_frames=d.num_frames) if d.generation_fraction < 1 else None
        )
        length = max(len(source) for source in (captions, questions) if source is not None)
        self.dataset = GenerationAndUnderstanding(captions, questions, length)
        return self.dataset

    def collate(self, indices: list[int]) -> list[VilaUExample]:
        """The first :func:`generation_count` indices become generation examples (videos first, their share
        ``video_fraction`` of those rounded), the rest understanding ones."""
        d, tokenizer = self.data_config, self.base.tokenizer
        count = generation_count(len(indices), d.generation_fraction)
        videos = round(d.video_fraction * count)
        examples = []
        for k, index in enumerate(indices):
            if k < count:
                item = self.dataset.video_item if k < videos else self.dataset.generation_item
                pixels, caption = item(index)
                # Per-sample randomness from the sample index: the same on every rank and after a resume.
                rng = random.Random(f"{self.seed}/{index}")
                examples.append(
                    generation_example(tokenizer, caption, pixels, caption_dropout=d.caption_dropout, rng=rng)
                )
            else:
                pixels, turns, video = self.dataset.understanding_item(index)
                examples.append(understanding_example(tokenizer, turns, pixels, video=video))
        return examples

    def loss(
        self, model: nn.Module, batch: list[VilaUExample], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total, terms = model(batch)
        return total, {k: v.item() for k, v in terms.items()}

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        return [*model.vila_u.llm.model.layers, *model.vila_u.depth_transformer.head_transformer.blocks]

    def export(self, weights: Mapping[str, torch.Tensor], folder: Path) -> None:
        model = VilaU(self.base.config)
        lora = self.model_config.lora.rank > 0
        if lora:
            add_lora(model.llm, self.model_config.lora, VILA_U_LORA_TARGETS)
        model.load_state_dict(select_prefix(weights, "vila_u."))
        if lora:
            merge_adapters(model.llm)
        model.to(stored_dtype(self.init_from))
        VilaUPipeline(model, self.base.tokenizer, self.base.text_sampling).save_pretrained(folder)

    def sample_images(self, model: nn.Module) -> list[Image.Image]:
        with root_params_gathered(model) as objective:
            pipe = VilaUPipeline(objective.vila_u, self.base.tokenizer, self.base.text_sampling)  # sets eval mode
            pipe.progress = False
            images = [pipe.generate_image(prompt, seed=0)[0] for prompt in self.model_config.sample_prompts]
            objective.train()
        return images
