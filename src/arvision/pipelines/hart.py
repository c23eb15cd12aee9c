"""Text-to-image with HART: prompts -> text encoder -> next-scale transformer + residual diffusion ->
hybrid tokenizer decoder -> PIL images.

Two folder layouts load:

* the official release (``hart-0.7b-1024px/``): ``llm/`` (``config.json`` + ``ema_model.bin`` /
  ``pytorch_model.bin`` / safetensors) and the sibling ``tokenizer/``; the folder itself or its
  ``llm/`` sub-folder may be given. The Qwen2 text encoder is a separate download: pass its folder
  as ``text_encoder`` (or place it in ``text_encoder/`` beside ``llm/``).
* our own (:meth:`HartPipeline.save_pretrained`): ``model_index.json``, ``transformer/`` (config +
  ``model.safetensors``), ``tokenizer/`` and a text-encoder spec (MiniLM by name, or a Qwen2 folder).

Example::

    pipe = HartPipeline.from_pretrained("hart-0.7b-1024px", text_encoder="Qwen2-VL-1.5B-Instruct",
                                        torch_dtype=torch.float16, device="cuda")
    image = pipe("a red cube on a wooden table", guidance_scale=4.5, seed=1).images[0]
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.utils import ModelOutput

from arvision import checkpoint
from arvision.data.media import ImageInput
from arvision.errors import CheckpointError, InputError
from arvision.imaging import load_image, pil_to_tensor, resize_center_crop, tensor_to_pil
from arvision.models.hart import OFFICIAL_BUFFERS, HartConfig, HartTransformer, check_schedule
from arvision.models.hart_sampler import (
    GUIDANCE_SCHEDULES,
    Condition,
    SamplingOptions,
    ScaleStep,
    check_condition,
    check_quantizer,
    checked_prefix_indices,
    sample_latent,
)
from arvision.nn.sampling import Generators, seeded_generator
from arvision.pipelines.common import (
    ProgressBars,
    checked_device,
    model_folder,
    pretrained_dtype,
    to_arguments,
)
from arvision.text.base import TextEncoder, TextEncoding, check_prompts
from arvision.text.hf_encoder import minilm_text_encoder, qwen2_text_encoder
from arvision.tokenizers.hart_tokenizer import HybridTokenizer
from arvision.tokenizers.schedules import MAX_LATENT_SIZE, schedule_for_latent
from arvision.validation import check_flag, check_number

INDEX_FILE = "model_index.json"
OFFICIAL_MODEL_TYPE = "hart_transformer_t2i"
EMA_FILE = "ema_model.bin"
DEFAULT_GUIDANCE_SCALE = SamplingOptions.cfg  # the official scripts' cfg
DEFAULT_STRENGTH = 0.8  # image-to-image: the share of the scales drawn anew (diffusers' img2img default)
RAW_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
SAVED_ENTRIES = (INDEX_FILE, "transformer", "tokenizer")  # what save_pretrained writes (and replaces) in a folder
TEXT_ENCODER_SPECS = '{"type": "minilm"} or {"type": "qwen2", "path": <folder>}'
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class HartPipelineOutput(ModelOutput):
    """``images``: one per prompt x ``num_images_per_prompt`` (prompt-major order), as the call's
    ``output_type`` asked: PIL images, a float32 array [N, H, W, 3] or tensor [N, 3, H, W] in [0, 1], or the
    latents; ``latents``: the generated latents [N, Cvae, h, w]. As transformers' and diffusers' outputs,
    ``out[0]`` and ``out["images"]`` are ``out.images``, and ``out.to_tuple()`` is (images, latents)."""

    images: list[Image.Image] | np.ndarray | torch.Tensor | None = None
    latents: torch.Tensor | None = None


class HartPipeline(ProgressBars):
    """Generator + tokenizer + text encoder. Call it with prompts to get images. ``guidance_scale``,
    ``top_k``, ``guidance_schedule`` and ``more_smooth`` are what a call uses when it names none (a folder of
    our own may set them in ``model_index.json``; ``top_k`` None is the official per-scale schedule; an official
    release folder gets the official scripts' sampling, ``more_smooth`` included).

    A class-conditional transformer takes ``class_labels``, or class names as prompts when the pipeline
    knows them: ``id2label`` maps each label to its name (saved in ``model_index.json``; a name may list
    synonyms separated by commas, as ImageNet's do), and :attr:`labels` maps every name of a single label back
    (a name that several labels share, as ImageNet's "crane", is left out: give its label instead).
    """

    def __init__(
        self,
        transformer: HartTransformer,
        tokenizer: HybridTokenizer,
        text_encoder: TextEncoder | None = None,
        text_encoder_spec: dict[str, Any] | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        top_k: int | None = None,
        *,
        guidance_schedule: str = "linear",
        more_smooth: bool = False,
        id2label: Mapping[int, str] | None = None,
    ):
        check_quantizer(transformer.config, tokenizer.quantize)
        self.transformer, self.tokenizer, self.text_encoder = transformer.eval(), tokenizer.eval(), text_encoder
        self.text_encoder_spec, self.guidance_scale, self.top_k = text_encoder_spec, guidance_scale, top_k
        self.guidance_schedule, self.more_smooth = guidance_schedule, more_smooth
        self.sampling_options()  # the defaults a call falls back on are checked now, not at the first call
        self.id2label = _checked_id2label(id2label, transformer.config) if id2label is not None else None
        if text_encoder is not None:
            self._check_text_encoder(text_encoder)

    # ----- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        use_ema: bool = True,
        text_encoder: str | os.PathLike | TextEncoder | None = None,
        torch_dtype: torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> HartPipeline:
        """Load an official release or a folder written by :meth:`save_pretrained`.

        ``use_ema`` (official layout): read ``llm/ema_model.bin`` (what the official demo uses) rather
        than the raw weights. ``text_encoder``: a Qwen2 folder, a ready encoder, or None to use what the
        folder provides (official: ``text_encoder/`` beside ``llm/`` if present; none otherwise, and
        prompts then fail while ``prompt_embeds`` still work). ``torch_dtype`` (diffusers' name) or ``dtype``
        (transformers'): what the transformer and text encoder run in (see :meth:`to`).
        """
        torch_dtype = pretrained_dtype(dtype, torch_dtype)
        folder, device = model_folder(folder), checked_device(device)
        if (
            text_encoder is not None
            and not isinstance(text_encoder, str | os.PathLike)
            and not _is_text_encoder(text_encoder)
        ):
            raise InputError(
                "text_encoder must be a Qwen2 folder or a text encoder (encode(), hidden_size, max_length), "
                f"got {type(text_encoder).__name__}"
            )
        if not folder.is_dir():
            raise CheckpointError(f"model folder not found: {folder}")
        if (folder / INDEX_FILE).is_file():
            pipe = cls._load_own(folder, text_encoder, torch_dtype, device)
        else:
            pipe = cls._load_official(folder, use_ema, text_encoder, torch_dtype, device)
        return pipe

    @classmethod
    def _load_official(cls, folder, use_ema, text_encoder, dtype, device) -> HartPipeline:
        llm = folder / "llm" if (folder / "llm").is_dir() else folder
        llm_config = checkpoint.read_json(llm / "config.json")
        if llm_config.get("model_type") != OFFICIAL_MODEL_TYPE:
            raise CheckpointError(
                f"{llm / 'config.json'} is not a HART text-to-image config "
                f"(model_type {llm_config.get('model_type')!r}, expected {OFFICIAL_MODEL_TYPE!r})"
            )
        tok_folder = Path(llm_config["vae_path"]) if llm_config.get("vae_path") else llm.parent / "tokenizer"
        if not tok_folder.is_dir():
            raise CheckpointError(f"tokenizer folder not found: {tok_folder} (expected beside {llm})")
        tokenizer = HybridTokenizer.from_pretrained(tok_folder)
        config = HartConfig.from_official(
            llm_config,
            vocab_size=tokenizer.config.vocab_size,
            latent_channels=tokenizer.config.z_channels,
            source=str(llm / "config.json"),
        )
        if use_ema:
            weights = llm / EMA_FILE
            if not weights.is_file():
                raise CheckpointError(f"{weights} not found; pass use_ema=False to load the raw weights")
        else:
            weights = checkpoint.find_weights_file(llm, RAW_FILES)
        transformer = _load_transformer(config, weights)
        if text_encoder is None and (llm.parent / "text_encoder").is_dir():
            text_encoder = llm.parent / "text_encoder"
        encoder, spec = _resolve_text_encoder(text_encoder, config)
        # every official entry point (sample.py, app.py, latency_profile.py) samples with more_smooth on
        return cls(transformer, tokenizer, encoder, spec, more_smooth=True).to(device=device, dtype=dtype)

    @classmethod
    def _load_own(cls, folder, text_encoder, dtype, device) -> HartPipeline:
        index = checkpoint.read_json(folder / INDEX_FILE)
        transformer = load_saved_transformer(folder / "transformer")
        config = transformer.config
        tokenizer = HybridTokenizer.from_pretrained(folder / "tokenizer")
        spec = _checked_text_encoder_spec(index.get("text_encoder"), folder / INDEX_FILE)
        if text_encoder is None and spec is not None:
            # A relative path is relative to the model folder (so a folder holding its encoder can move);
            # joining keeps an absolute one as is.
            text_encoder = (
                minilm_text_encoder(config.context_token) if spec["type"] == "minilm" else folder / spec["path"]
            )
        sampling = sampling_from_index(index, folder / INDEX_FILE)
        id2label = index.get("id2label")
        if id2label is not None:
            id2label = _id2label_from_json(id2label, folder / INDEX_FILE)
        encoder, spec = _resolve_text_encoder(text_encoder, config)
        try:
            pipe = cls(transformer, tokenizer, encoder, spec, **asdict(sampling), id2label=id2label)
        except InputError as exc:
            raise CheckpointError(f"{folder / INDEX_FILE}: {exc}") from exc
        return pipe.to(device=device, dtype=dtype)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``model_index.json`` (with ``id2label`` if known), ``transformer/`` and ``tokenizer/``; the text
        encoder by reference (a Qwen2 folder inside ``folder`` by its relative path, else by its absolute one).

        The folder is written whole beside ``folder`` and then swapped in (:func:`checkpoint.atomic_folder`), so a
        crash leaves the previous folder (or none), never a half-written one. Of an existing folder, the entries
        above are replaced (no stale weight file survives) and every other entry (a ``text_encoder/`` folder, a
        README...) is kept, hard-linked into the new folder where the file system allows it.
        """
        folder = Path(folder)
        index = {
            "_class_name": "HartPipeline",
            "format": "arvision",
            "guidance_scale": self.guidance_scale,
            "top_k": self.top_k,
            "guidance_schedule": self.guidance_schedule,
            "more_smooth": self.more_smooth,
        }
        if self.text_encoder_spec is not None:
            index["text_encoder"] = _spec_relative_to(self.text_encoder_spec, folder)
        if self.id2label is not None:
            index["id2label"] = {str(label): name for label, name in sorted(self.id2label.items())}
        with checkpoint.replacing_folder(folder, SAVED_ENTRIES) as tmp:
            checkpoint.save_state_dict(self.transformer.state_dict(), tmp / "transformer" / "model.safetensors")
            checkpoint.write_json(tmp / "transformer" / "config.json", self.transformer.config.to_dict())
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            checkpoint.write_json(tmp / INDEX_FILE, index)

    def to(
        self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> HartPipeline:
        """Move (and cast, if ``dtype``; ``pipe.to(torch.float16)`` casts too) the transformer and the text
        encoder if it can move (an :class:`HFTextEncoder` can; ``from_pretrained``'s ``torch_dtype`` casts it the
        same way). The tokenizer moves but stays float32, as the official code keeps its VAE whatever the
        transformer runs in: its decoder's GroupNorms and wide activations are where half precision loses most."""
        device, dtype = to_arguments(device, dtype)
        self.transformer.to(device=device, dtype=dtype)
        self.tokenizer.to(device=device)
        move = getattr(self.text_encoder, "to", None)
        if move is not None:
            move(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # ----- generation ---------------------------------------------------------------------------------
    def default_size(self) -> int:
        return self.transformer.config.patch_nums[-1] * self.tokenizer.config.downsample

    def schedule_for(self, height: int | None, width: int | None) -> tuple[int, ...]:
        """Scale schedule for an image size: the model's own if it fits, else a preset for that grid."""
        for name, value in (("height", height), ("width", width)):
            if value is not None:
                check_number(value, name, whole=True)
            if value is not None and value <= 0:
                raise InputError(f"{name} must be a positive number of pixels, got {value}")
        size = height or width or self.default_size()
        if (height or size) != (width or size):
            raise InputError(f"HART generates square images; got {height}x{width}")
        down = self.tokenizer.config.downsample
        if size % down:
            raise InputError(f"image size {size} is not a multiple of the tokenizer's downsampling factor {down}")
        if size // down > MAX_LATENT_SIZE:
            raise InputError(
                f"{size}px needs a {size // down}x{size // down} token grid; HART makes grids up to "
                f"{MAX_LATENT_SIZE}x{MAX_LATENT_SIZE} ({MAX_LATENT_SIZE * down}px with this tokenizer)"
            )
        schedule = schedule_for_latent(size // down, self.transformer.config.patch_nums)
        try:
            return check_schedule(schedule, self.transformer.config)
        except InputError as exc:
            raise InputError(f"{size}px: {exc}") from exc

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> label, every comma-separated synonym of ``id2label`` included, except the names that
        several labels share (empty if unknown)."""
        return {name: labels[0] for name, labels in self._labels_by_name().items() if len(labels) == 1}

    def _labels_by_name(self) -> dict[str, list[int]]:
        """Class name -> every label that lists it (ImageNet's "crane" is 134 and 517)."""
        by_name: dict[str, list[int]] = {}
        for label, names in sorted((self.id2label or {}).items()):
            for name in dict.fromkeys(name.strip() for name in names.split(",")):  # each name once per label
                if name:
                    by_name.setdefault(name, []).append(label)
        return by_name

    def get_label_ids(self, names: str | Sequence[str]) -> list[int]:
        """Class names -> labels of a class-conditional model; an unknown name, or one that several labels share,
        is an InputError naming it."""
        names = check_prompts(names)
        by_name = self._labels_by_name()
        if not by_name:
            raise InputError("this model has no class names (no id2label): pass class_labels as numbers")
        ids = []
        for name in names:
            labels = by_name.get(name.strip())
            if labels is None:
                close = difflib.get_close_matches(name.strip(), list(by_name), n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f" ({len(by_name)} names)"
                raise InputError(f"unknown class name {name!r}{hint} (see pipe.labels)")
            if len(labels) > 1:
                raise InputError(
                    f"class name {name!r} is ambiguous: labels {', '.join(map(str, labels))} "
                    "(pass class_labels, or a name only one of them has)"
                )
            ids.append(labels[0])
        return ids

    def encode_prompts(self, prompts: str | Sequence[str]) -> TextEncoding:
        prompts = check_prompts(prompts)
        if self.text_encoder is None:
            raise CheckpointError(
                "this pipeline has no text encoder: load it with text_encoder=<Qwen2 folder> or pass prompt_embeds"
            )
        return self.text_encoder.encode(prompts)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        generator: Generators = None,
        negative_prompt: str | Sequence[str] | None = None,
        prompt_embeds: TextEncoding | None = None,
        class_labels: Sequence[int] | torch.Tensor | None = None,
        top_k: int | None = None,
        top_p: float = 0.0,
        temperature: float = 1.0,
        more_smooth: bool | None = None,
        discrete_only: bool = False,
        diffusion_steps: int | None = None,
        image: ImageInput | Sequence[ImageInput] | None = None,
        strength: float | None = None,
        prefix_indices: Sequence[torch.Tensor] = (),
        progress: bool | None = None,
        callback: Callable[[ScaleStep], None] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> HartPipelineOutput | tuple:
        """Generate ``num_images_per_prompt`` images for each prompt.

        ``guidance_scale`` is HART's cfg (0 disables guidance; None: the pipeline's, 4.5 as in the official
        scripts unless the model folder names another); ``top_k`` likewise (None: the official per-scale
        schedule unless the folder names a value); ``guidance_schedule`` likewise (``"linear"``, the official
        ramp over the scales, or ``"constant"``; see :class:`SamplingOptions`), and ``more_smooth`` (the
        official scripts' Gumbel mixing of code vectors; on for an official release folder, off for ours). ``seed``
        (or ``generator``) makes the whole output reproducible, diffusion noise included; a list of generators,
        one per image (prompt-major), makes each image reproducible on its own: image i is the same in any batch
        (to within one level of rounding).
        ``prompt_embeds`` bypasses the text encoder; ``class_labels`` drives class-conditional models, whose
        prompts (and negative prompts) are class names (:attr:`labels`).
        ``diffusion_steps`` sets the residual diffusion head's sampling steps (None: the model's, 8 in HART).
        ``image`` (one, or one per prompt) with ``strength`` in [0, 1] (default 0.8) is image-to-image, as
        diffusers' img2img pipelines: the image's own codes of the first scales are kept and the last
        ``round(strength * scales)`` scales drawn (1: the image is ignored; 0: its codes are all kept, the
        residual drawn). Not in the HART paper: the next-scale model's teacher forcing, as VAR's zero-shot edits.
        ``prefix_indices``: codes of the first scales, one row per image ([B, pn^2] each, e.g. from
        ``tokenizer.encode``), taken instead of drawn (see :func:`~arvision.models.hart_sampler.sample_latent`).
        ``output_type``: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (see :class:`HartPipelineOutput`);
        ``return_dict=False`` returns its ``to_tuple()``. ``progress`` None: the pipeline's
        (:meth:`set_progress_bar_config`).
        """
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, int)
            or num_images_per_prompt < 1
        ):
            raise InputError(f"num_images_per_prompt must be a whole number >= 1, got {num_images_per_prompt!r}")
        if seed is not None and generator is not None:
            raise InputError("pass seed or generator, not both")
        device = self.device
        if seed is not None:
            generator = seeded_generator(seed, device)
        patch_nums = self.schedule_for(height, width)
        cond = self._condition(prompt, prompt_embeds, class_labels, device)
        negative = None
        if negative_prompt is not None:
            negative = self._condition(negative_prompt, None, None, device)
            if negative.batch == 1:
                negative = _repeat(negative, cond.batch)
            if negative.batch != cond.batch:
                raise InputError(f"{negative.batch} negative prompts for {cond.batch} prompts")
        prefix_indices = checked_prefix_indices(prefix_indices)  # typed before it is repeated; the sampler ranges it
        if image is not None and len(prefix_indices):
            raise InputError("pass image or prefix_indices, not both")
        prefix_indices = self._image_codes(image, strength, patch_nums, cond.batch, device) or prefix_indices
        prefix_indices = [codes.repeat_interleave(num_images_per_prompt, dim=0) for codes in prefix_indices]
        cond = _repeat(cond, num_images_per_prompt)
        negative = _repeat(negative, num_images_per_prompt) if negative is not None else None
        options = self.sampling_options(
            guidance_scale=guidance_scale,
            guidance_schedule=guidance_schedule,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            more_smooth=more_smooth,
            discrete_only=discrete_only,
            diffusion_steps=diffusion_steps,
        )
        latents = sample_latent(
            self.transformer,
            self.tokenizer.quantize,
            cond,
            options,
            patch_nums=patch_nums,
            negative=negative,
            generator=generator,
            prefix_indices=prefix_indices,
            callback=callback,
            progress=self.progress if progress is None else progress,
        )
        output = HartPipelineOutput(images=self._images(latents, output_type), latents=latents)
        return output if return_dict else output.to_tuple()

    def _images(self, latents: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Decoded latents [N, Cvae, h, w] as ``output_type`` asks (``"latent"``: not decoded)."""
        if output_type == "latent":
            return latents
        images = self.tokenizer.decode(latents.to(next(self.tokenizer.parameters()).dtype))
        if output_type == "pil":
            return tensor_to_pil(images)
        unit = ((images.float() + 1) / 2).clamp(0, 1)
        return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).cpu().numpy()

    def _image_codes(
        self,
        image: ImageInput | Sequence[ImageInput] | None,
        strength: float | None,
        patch_nums: Sequence[int],
        prompts: int,
        device: torch.device,
    ) -> list[torch.Tensor]:
        """Image-to-image: the codes [prompts, pn^2] of the scales ``image`` keeps at ``strength`` (none without
        an image), the image resized and centre-cropped to the size drawn."""
        strength = image_strength(strength, image is not None)
        if strength is None:
            return []
        images = [image] if isinstance(image, ImageInput) else list(image) if isinstance(image, Sequence) else []
        if not images or not all(isinstance(im, ImageInput) for im in images):
            raise InputError("image must be a PIL image, a uint8 array or an image file's path, or a list of them")
        if len(images) not in (1, prompts):
            raise InputError(f"{len(images)} images for {prompts} prompts: give one image, or one per prompt")
        # each distinct image is encoded once (a server batch repeats a request's image for each of its seeds)
        distinct = list({id(im): im for im in images}.values())
        position = {id(im): row for row, im in enumerate(distinct)}
        size = patch_nums[-1] * self.tokenizer.config.downsample
        pixels = pil_to_tensor([resize_center_crop(load_image(im), size) for im in distinct])
        dtype = next(self.tokenizer.parameters()).dtype
        codes = self.tokenizer.encode(pixels.to(device, dtype), patch_nums).indices
        rows = torch.tensor([position[id(im)] for im in images], device=codes[0].device)
        kept = len(patch_nums) - round(strength * len(patch_nums))
        return [c[rows].expand(prompts, -1) for c in codes[:kept]]

    def sampling_options(
        self,
        *,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        top_k: int | None = None,
        more_smooth: bool | None = None,
        **options: Any,
    ) -> SamplingOptions:
        """The checked sampling options of a call, from :meth:`__call__`'s arguments of those names
        (``guidance_scale``, ``guidance_schedule``, ``top_k`` and ``more_smooth`` None: the pipeline's; the
        others take :meth:`__call__`'s types and defaults): an :class:`InputError` names a setting no sampler
        takes."""
        return SamplingOptions(
            cfg=self.guidance_scale if guidance_scale is None else guidance_scale,
            guidance_schedule=self.guidance_schedule if guidance_schedule is None else guidance_schedule,
            top_k=self.top_k if top_k is None else top_k,
            more_smooth=self.more_smooth if more_smooth is None else more_smooth,
            **options,
        )

    def _condition(self, prompt, prompt_embeds, class_labels, device) -> Condition:
        if prompt is not None and prompt_embeds is not None:
            raise InputError("pass prompt or prompt_embeds, not both")
        if prompt_embeds is not None and not isinstance(prompt_embeds, TextEncoding):
            raise InputError(
                "prompt_embeds must be a TextEncoding (hidden, mask, position_ids, as pipe.encode_prompts returns), "
                f"got {type(prompt_embeds).__name__}"
            )
        if class_labels is not None and not self.transformer.config.class_conditional:
            raise InputError("class_labels need a class-conditional model; this one takes text prompts")
        if self.transformer.config.class_conditional:
            if class_labels is None and prompt is None:
                raise InputError("this is a class-conditional model: pass class_labels (or class names as prompts)")
            if class_labels is not None and prompt is not None:
                raise InputError("pass class_labels or class names as prompts, not both")
            if class_labels is None:
                class_labels = self.get_label_ids(prompt)
            labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
            if labels.numel() == 0:
                raise InputError("class_labels is empty")
            if labels.min() < 0 or labels.max() >= self.transformer.config.num_classes:
                raise InputError(f"class labels must be in [0, {self.transformer.config.num_classes})")
            return Condition(labels=labels)
        what = "prompt_embeds" if prompt_embeds is not None else "prompt"
        if prompt_embeds is None:
            if prompt is None:
                raise InputError("give a prompt (or prompt_embeds)")
            prompt_embeds = self.encode_prompts(prompt)
        dtype = next(self.transformer.parameters()).dtype
        cond = Condition(
            prompt_embeds.hidden.to(device, dtype), prompt_embeds.mask.to(device), prompt_embeds.position_ids.to(device)
        )
        check_condition(self.transformer.config, cond, what)
        return cond

    def _check_text_encoder(self, encoder: TextEncoder) -> None:
        cfg = self.transformer.config
        if cfg.class_conditional:
            return
        if encoder.hidden_size != cfg.context_dim or encoder.max_length != cfg.context_token:
            raise CheckpointError(
                f"text encoder gives {encoder.max_length} tokens x {encoder.hidden_size} dims, the model expects "
                f"{cfg.context_token} x {cfg.context_dim}"
            )


def image_strength(strength: float | None, has_image: bool) -> float | None:
    """The checked strength of an image-to-image call (None without an image; 0.8 for an image given without
    one): an :class:`InputError` for a strength without an image or outside [0, 1]."""
    if not has_image:
        if strength is not None:
            raise InputError("strength needs an image (image-to-image)")
        return None
    strength = DEFAULT_STRENGTH if strength is None else strength
    check_number(strength, "strength")
    if not 0 <= strength <= 1:
        raise InputError(f"strength must be within 0..1, got {strength}")
    return strength


def _is_text_encoder(value: object) -> bool:
    """Whether ``value`` has what :class:`TextEncoder` (a protocol, not checkable with isinstance) requires."""
    return callable(getattr(value, "encode", None)) and all(hasattr(value, a) for a in ("hidden_size", "max_length"))


def _checked_id2label(id2label: Mapping[int, str], config: HartConfig) -> dict[int, str]:
    if not config.class_conditional:
        raise InputError("id2label needs a class-conditional transformer (num_classes > 0)")
    bad = [label for label in id2label if not 0 <= label < config.num_classes]
    if bad:
        raise InputError(f"id2label has labels {bad[:5]} outside [0, {config.num_classes})")
    return dict(id2label)


def _id2label_from_json(data: Any, where: Path) -> dict[int, str]:
    """JSON's ``{"0": "tench, Tinca tinca", ...}`` -> ``{0: "tench, Tinca tinca", ...}``."""
    if not isinstance(data, dict) or not all(isinstance(k, str) and k.isdigit() for k in data):
        raise CheckpointError(f"{where}: id2label must map label numbers to class names")
    if not all(isinstance(v, str) for v in data.values()):
        raise CheckpointError(f"{where}: id2label's class names must be strings")
    return {int(k): v for k, v in data.items()}


def load_saved_transformer(folder: Path) -> HartTransformer:
    """The ``transformer/`` folder written by :meth:`HartPipeline.save_pretrained` (config + weights), in eval mode."""
    config = HartConfig.from_dict(checkpoint.read_json(folder / "config.json"), source=str(folder / "config.json"))
    return _load_transformer(config, checkpoint.find_weights_file(folder))


@dataclass(frozen=True)
class SamplingDefaults:
    """What a folder's ``model_index.json`` sets for calls that name none (where it sets nothing, the official
    scripts' sampling but for ``more_smooth``: cfg 4.5 ramped linearly over the scales, the official top-k
    schedule, sampled codes taken as they are, as for the paper's FID)."""

    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    top_k: int | None = None
    guidance_schedule: str = "linear"
    more_smooth: bool = False


def sampling_defaults(folder: str | os.PathLike) -> SamplingDefaults:
    """The :class:`SamplingDefaults` of a saved folder (the defaults where it has no index)."""
    where = Path(folder) / INDEX_FILE
    return sampling_from_index(checkpoint.read_json(where) if where.is_file() else {}, where)


def sampling_from_index(index: Mapping[str, Any], where: str | os.PathLike) -> SamplingDefaults:
    """The :class:`SamplingDefaults` of a ``model_index.json`` dict; a bad value is a CheckpointError naming
    ``where``."""
    guidance_scale = index.get("guidance_scale", DEFAULT_GUIDANCE_SCALE)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float) or guidance_scale < 0:
        raise CheckpointError(f"{where}: guidance_scale must be a number >= 0, got {guidance_scale!r}")
    top_k = index.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise CheckpointError(f"{where}: top_k must be a whole number >= 1 or null, got {top_k!r}")
    schedule = index.get("guidance_schedule", "linear")
    if schedule not in GUIDANCE_SCHEDULES:
        known = ", ".join(GUIDANCE_SCHEDULES)
        raise CheckpointError(f"{where}: guidance_schedule must be one of {known}, got {schedule!r}")
    more_smooth = index.get("more_smooth", False)
    try:
        check_flag(more_smooth, "more_smooth")
    except InputError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    return SamplingDefaults(float(guidance_scale), top_k, schedule, more_smooth)


def _load_transformer(config: HartConfig, weights: Path) -> HartTransformer:
    model = HartTransformer(config)
    state = checkpoint.load_state_dict(weights)
    checkpoint.load_checked(model, state, source=str(weights), optional=lambda k: bool(OFFICIAL_BUFFERS.match(k)))
    return model.eval()


def _resolve_text_encoder(text_encoder, config: HartConfig):
    """(encoder or None, spec to save) from a Qwen2 folder path, a ready encoder or None (moved and cast by
    :meth:`HartPipeline.to`)."""
    if text_encoder is None or config.class_conditional:
        return None, None
    if isinstance(text_encoder, (str, os.PathLike)):
        text_encoder = qwen2_text_encoder(text_encoder, config.context_token)
    return text_encoder, getattr(text_encoder, "spec", None)


def _checked_text_encoder_spec(spec: Any, where: Path) -> dict[str, Any] | None:
    """The ``text_encoder`` entry of a ``model_index.json`` (None if absent); a malformed one is a CheckpointError."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") not in ("minilm", "qwen2"):
        raise CheckpointError(f"{where}: text_encoder must be {TEXT_ENCODER_SPECS}, got {spec!r}")
    if spec["type"] == "qwen2" and not (isinstance(spec.get("path"), str) and spec["path"].strip()):
        raise CheckpointError(f"{where}: the qwen2 text_encoder needs the path of its folder, got {spec!r}")
    return spec


def _spec_relative_to(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``spec`` with a Qwen2 folder inside ``folder`` given relative to it (it then moves with the folder)."""
    if spec.get("type") != "qwen2":
        return spec
    path, root = Path(spec["path"]).resolve(), folder.resolve()
    return {**spec, "path": path.relative_to(root).as_posix()} if path.is_relative_to(root) else spec


def _repeat(cond: Condition, n: int) -> Condition:
    if n == 1:
        return cond
    if cond.labels is not None:
        return Condition(labels=cond.labels.repeat_interleave(n))
    return Condition(*(t.repeat_interleave(n, dim=0) for t in (cond.context, cond.context_mask, cond.position_ids)))
