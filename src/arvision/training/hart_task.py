"""``arvision train hart``: the next-scale transformer (+ residual diffusion head) on captioned images,
or class-conditional on class folders (ImageNet layout, as the HART paper's ImageNet models).

A frozen hybrid tokenizer turns each image into per-scale indices and the residual target; a frozen
text encoder (offline MiniLM by default, or a Qwen2 folder) gives the context, or the class label does.
Both stay outside the trained module tree, so DDP/FSDP, the EMA and the checkpoints carry only the
transformer. The export is a :class:`~arvision.pipelines.hart.HartPipeline` folder (with the class names
as ``id2label`` for a class-conditional model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from arvision.data.datasets import WorldImages
from arvision.data.user import CaptionedImages, ClassFolderImages
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.defaults import default_model_path
from arvision.errors import CheckpointError, InputError
from arvision.models.hart import HartConfig, HartTransformer
from arvision.models.hart_sampler import Condition
from arvision.pipelines.hart import (
    HartPipeline,
    SamplingDefaults,
    load_saved_transformer,
    sampling_defaults,
    sampling_from_index,
)
from arvision.text.base import TextEncoder
from arvision.text.hf_encoder import minilm_text_encoder, qwen2_text_encoder
from arvision.tokenizers.hart_tokenizer import HybridTokenizer
from arvision.training.config import build_dataclass, require_data_length, require_positive, yaml_values
from arvision.training.distributed import root_params_gathered
from arvision.training.hart_loss import HartLossConfig, hart_loss
from arvision.training.latent_cache import CachedTargets, tokenize_targets
from arvision.training.lora import LoraSettings, add_lora, merge_adapters
from arvision.training.tasks import ObjectiveWithFrozenHelpers, TrainingTask, check_train_parts


@dataclass
class HartData:
    """The training images and their conditions, optionally tokenized once into a cache."""

    # "world" (the procedural world), "captions" (a folder / JSONL / CSV at ``path``) or "classes" (class
    # folders ``path/<class name>/*.jpg``: a class-conditional model with one class per folder)
    source: str = "world"
    path: str | None = None
    resolution: int = 64
    length: int = 100_000
    max_objects: int = 4  # world scenes hold 1..max_objects objects
    unnamed_colour_fraction: float = 0.0  # world scenes in unnamed colours, captions naming shapes only
    cache_dir: str | None = None  # tokenize the dataset once into this folder and train on the stored targets
    cache_workers: int = 0  # DataLoader workers that render/load images while the cache is built

    def __post_init__(self) -> None:
        require_positive("data", {"resolution": self.resolution})
        require_data_length(self.length)
        if self.cache_workers < 0:
            raise InputError(f"data.cache_workers must be >= 0, got {self.cache_workers}")


# What ``model.train`` can name: the transformer (its blocks, embeddings and token head) and the residual
# diffusion head (``diffloss`` and the norm of its condition, which only the head reads).
HART_PARTS = ("transformer", "diffusion_head")
DIFFUSION_HEAD_MODULES = ("diffloss", "decoder_norm")

# The attention and MLP projections of the transformer blocks: where LoRA adapts HART by default.
HART_LORA_TARGETS = r"blocks\.\d+\.(attn\.(qkv_proj|proj)|ffn\.(gate_proj|up_proj|down_proj))"


@dataclass
class HartModel:
    """``transformer``: :class:`HartConfig` fields; the context, vocabulary and latent sizes are taken from
    the text encoder and tokenizer, and the scale schedule from the tokenizer at ``data.resolution``."""

    transformer: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "default"  # a tokenizer folder; "default" is the embedded one
    init_from: str | None = None  # a HartPipeline folder whose transformer weights start the run (fine-tuning)
    text_encoder: str = "minilm"  # "minilm" or a Qwen2 folder (class-conditional models use none)
    context_tokens: int = 32
    loss: HartLossConfig = field(default_factory=HartLossConfig)
    # lora.rank > 0: adapters on the blocks' linear layers learn instead of the weights (the rest stays as it is,
    # the diffusion head too unless model.train names it); the export merges them
    lora: LoraSettings = field(default_factory=LoraSettings)
    # the parts that learn (HART_PARTS), the others frozen; None: all (with LoRA, the adapters alone), e.g.
    # [diffusion_head] fits the residual head to a trained transformer at about a quarter of a full step's cost
    train: list[str] | None = None
    # the sampling the exported folder names for calls that name none (guidance_scale, top_k, guidance_schedule,
    # more_smooth: the default HART's are 1.5, 20, constant, false); keys left out keep init_from's, else the
    # official scripts' (cfg 4.5 ramped linearly over the scales, the official top-k schedule) without more_smooth
    sampling: dict[str, Any] = field(default_factory=dict)
    # sample grids: these prompts, or for a class-conditional model its first four classes
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square left of a green star"])


class HartObjective(ObjectiveWithFrozenHelpers):
    """``forward(batch, generator)`` -> (loss, logs); trains the ``train`` parts of ``transformer``
    (:data:`HART_PARTS`; "transformer" means its LoRA adapters when it has them) and nothing else.
    ``text_encoder`` is None for a class-conditional transformer, whose batches carry ``label`` [B] instead
    of ``caption``."""

    def __init__(
        self,
        transformer: HartTransformer,
        tokenizer: HybridTokenizer,
        text_encoder: TextEncoder | None,
        loss: HartLossConfig,
        train: Sequence[str] = HART_PARTS,
    ):
        super().__init__()
        self.transformer = transformer
        self.loss_config = loss
        if "transformer" not in train:
            transformer.requires_grad_(False)
        # without the last scale no diffusion loss reaches the head, and DDP would wait for its gradients
        coarse = loss.train_scales is not None and loss.train_scales < len(transformer.config.patch_nums)
        for name in DIFFUSION_HEAD_MODULES:
            getattr(transformer, name).requires_grad_("diffusion_head" in train and not coarse)
        tokenizer.eval().requires_grad_(False)
        self.frozen = (tokenizer, text_encoder)  # a tuple keeps them out of parameters() and state_dict()

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        tokenizer, text_encoder = self.frozen
        return (tokenizer,) if text_encoder is None else (tokenizer, text_encoder.model)

    def forward(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``batch``: ``{"image": [B, 3, H, W], "caption": [...]}``, or cached targets ``{"indices":
        [B, sum pn^2], "residual": [B, C, h, w], "caption": [...]}``; ``"label": [B]`` instead of the
        captions for a class-conditional transformer."""
        tokenizer, text_encoder = self.frozen
        if "indices" in batch:
            r_pre = batch["residual"]
            sizes = [pn * pn for pn in tokenizer.patch_nums_for(r_pre)]
            indices = list(batch["indices"].split(sizes, dim=1))
        else:
            indices, r_pre = tokenize_targets(tokenizer, batch["image"])
        device = r_pre.device
        if self.transformer.config.class_conditional:
            cond = Condition(labels=batch["label"].to(device))
        else:
            with torch.no_grad():
                enc = text_encoder.encode(list(batch["caption"]))
            cond = Condition(enc.hidden.to(device), enc.mask.to(device), enc.position_ids.to(device))
        out = hart_loss(self.transformer, tokenizer.quantize, indices, r_pre, cond, self.loss_config, generator)
        return out.loss, {"ce": out.ce, "diffusion": out.diffusion}


def load_text_encoder(name: str, context_tokens: int) -> TextEncoder:
    if name == "minilm":
        return minilm_text_encoder(context_tokens)
    return qwen2_text_encoder(name, max_length=context_tokens)


class HartTask(TrainingTask):
    """HART's transformer (with LoRA adapters if asked) trained on frozen-tokenizer targets of captioned or
    class-labelled images; exported as a :class:`~arvision.pipelines.hart.HartPipeline` folder."""

    name = "hart"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any], seed: int = 0):
        self.model_config = build_dataclass(HartModel, model, prefix="model.")
        self.data_config = build_dataclass(HartData, data, prefix="data.")
        self.seed = seed
        folder = (
            default_model_path("tokenizer") if self.model_config.tokenizer == "default" else self.model_config.tokenizer
        )
        self.tokenizer = HybridTokenizer.from_pretrained(folder)
        self.class_images = self._class_images()
        self.text_encoder = (
            None
            if self.class_images is not None
            else load_text_encoder(self.model_config.text_encoder, self.model_config.context_tokens)
        )
        self.transformer_config = self._transformer_config()
        self.sampling = self._sampling()
        scales, schedule = self.model_config.loss.train_scales, self.transformer_config.patch_nums
        if scales is not None and not 1 <= scales <= len(schedule):
            raise InputError(
                f"model.loss.train_scales must be between 1 and {len(schedule)} (the schedule at data.resolution "
                f"{self.data_config.resolution} is {schedule}), got {scales}"
            )
        self.train_parts = self._train_parts()

    def _train_parts(self) -> tuple[str, ...]:
        """``model.train`` checked; None gives every part, or the adapters alone under LoRA."""
        m = self.model_config
        lora = m.lora.rank > 0
        if m.train is None:
            return ("transformer",) if lora else HART_PARTS
        check_train_parts(m.train, HART_PARTS, lora, "transformer", "transformer")
        scales = m.loss.train_scales
        if "diffusion_head" in m.train and scales is not None and scales < len(self.transformer_config.patch_nums):
            raise InputError(
                f"model.train names diffusion_head, but model.loss.train_scales={scales} leaves out the last scale, "
                "the only one its loss is on"
            )
        return tuple(m.train)

    def _sampling(self) -> SamplingDefaults:
        """The exported folder's sampling defaults: ``model.sampling`` over what ``init_from`` names."""
        init_from = self.model_config.init_from
        inherited = sampling_defaults(init_from) if init_from else sampling_from_index({}, "model.sampling")
        given = yaml_values(self.model_config.sampling)
        known = {f.name for f in fields(SamplingDefaults)}
        unknown = set(given) - known
        if unknown:
            raise InputError(f"model.sampling: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return sampling_from_index({**asdict(inherited), **given}, "model.sampling")
        except CheckpointError as exc:
            raise InputError(str(exc)) from exc

    def _class_images(self) -> ClassFolderImages | None:
        """The class folders of ``data.source: classes`` (listed once: they also fix the class count)."""
        d = self.data_config
        if d.source != "classes":
            return None
        if not d.path:
            raise InputError("data.source 'classes' needs data.path (a folder of class folders, ImageNet layout)")
        return ClassFolderImages(d.path, size=d.resolution)

    def _transformer_config(self) -> HartConfig:
        resolution = self.data_config.resolution
        down = self.tokenizer.config.downsample
        if resolution % down:
            raise InputError(f"data.resolution {resolution} is not a multiple of the tokenizer's downsampling {down}")
        probe = torch.zeros(1, self.tokenizer.config.z_channels, resolution // down, resolution // down)
        derived = {
            "vocab_size": self.tokenizer.config.vocab_size,
            "latent_channels": self.tokenizer.config.z_channels,
            "patch_nums": list(self.tokenizer.patch_nums_for(probe)),
        }
        if self.class_images is not None:
            derived["num_classes"] = len(self.class_images.classes)
        else:
            derived |= {"context_dim": self.text_encoder.hidden_size, "context_token": self.text_encoder.max_length}
        sources = {
            "vocab_size": "the tokenizer's codebook",
            "latent_channels": "the tokenizer's latent channels",
            "patch_nums": "the tokenizer's schedule at data.resolution",
            "num_classes": "the class folders",
            "context_dim": "the text encoder",
            "context_token": "model.context_tokens",
        }
        for key in derived.keys() & self.model_config.transformer.keys():
            # it would be replaced: a run must not silently differ from its config
            raise InputError(f"model.transformer.{key} is not set by hand: {sources[key]} sets it ({derived[key]})")
        try:
            return build_dataclass(
                HartConfig, {**self.model_config.transformer, **derived}, prefix="model.transformer."
            )
        except ValueError as exc:
            raise InputError(f"model.transformer: {exc}") from exc

    def build_model(self) -> nn.Module:
        if self.model_config.init_from:
            transformer = self._initial_transformer(Path(self.model_config.init_from))
        else:
            transformer = HartTransformer(self.transformer_config)
            transformer.init_weights()
        if self.model_config.lora.rank > 0:
            add_lora(transformer, self.model_config.lora, HART_LORA_TARGETS)
        return HartObjective(transformer, self.tokenizer, self.text_encoder, self.model_config.loss, self.train_parts)

    def _initial_transformer(self, folder: Path) -> HartTransformer:
        """A saved pipeline's transformer, to fine-tune; its config must describe the configured shapes."""
        if not (folder / "transformer" / "config.json").is_file():
            raise InputError(f"model.init_from {folder} is not a HartPipeline folder (no transformer/config.json)")
        transformer = load_saved_transformer(folder / "transformer")
        saved, configured = vars(transformer.config), vars(self.transformer_config)
        diff = {k: (v, configured[k]) for k, v in saved.items() if v != configured[k]}
        if diff:
            raise InputError(f"model.init_from {folder} has another transformer shape: {diff} (saved, configured)")
        return transformer.train()

    def build_dataset(self) -> Dataset:
        d = self.data_config
        if d.source == "world":
            config = WorldConfig(
                d.resolution, max_objects=d.max_objects, unnamed_colour_fraction=d.unnamed_colour_fraction
            )
            world = ProceduralWorld(config, seed=self.seed)
            dataset = WorldImages(world, length=d.length)
        elif d.source == "captions":
            if not d.path:
                raise InputError("data.source 'captions' needs data.path (an image folder, .jsonl or .csv)")
            dataset = CaptionedImages.from_source(d.path, size=d.resolution)
        elif self.class_images is not None:
            dataset = self.class_images
        else:
            raise InputError(
                f"data.source {d.source!r} is not available for the hart task (use 'world', 'captions' or 'classes')"
            )
        if d.cache_dir is None:
            return dataset
        return CachedTargets.load_or_build(d.cache_dir, dataset, self.tokenizer, num_workers=d.cache_workers)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total, terms = model(batch, generator)
        return total, {k: v.item() for k, v in terms.items()}

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        return list(model.transformer.blocks)

    def _pipeline(self, transformer: HartTransformer):
        spec = getattr(self.text_encoder, "spec", None)
        id2label = dict(enumerate(self.class_images.classes)) if self.class_images is not None else None
        sampling = asdict(self.sampling)
        return HartPipeline(transformer, self.tokenizer, self.text_encoder, spec, **sampling, id2label=id2label)

    def export(self, weights: Mapping[str, torch.Tensor], folder: Path) -> None:
        transformer = HartTransformer(self.transformer_config)
        lora = self.model_config.lora.rank > 0
        if lora:
            add_lora(transformer, self.model_config.lora, HART_LORA_TARGETS)
        transformer.load_state_dict({k.removeprefix("transformer."): v for k, v in weights.items()})
        if lora:
            merge_adapters(transformer)
        self._pipeline(transformer).save_pretrained(folder)

    def sample_images(self, model: nn.Module) -> list[Image.Image]:
        size = self.data_config.resolution
        with root_params_gathered(model) as objective:
            transformer = objective.transformer
            was_training = transformer.training
            pipe = self._pipeline(transformer)  # sets eval mode
            if transformer.config.class_conditional:
                condition = {"class_labels": list(range(min(4, transformer.config.num_classes)))}
            else:
                condition = {"prompt": self.model_config.sample_prompts}
            out = pipe(**condition, height=size, width=size, seed=0, progress=False)
            transformer.train(was_training)
        return out.images
