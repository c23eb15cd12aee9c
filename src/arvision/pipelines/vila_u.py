"""``VilaUPipeline``: a VILA-U checkpoint folder in, answers and PIL images out.

pipe = VilaUPipeline.from_pretrained("vila-u-7b-256")
pipe.describe("cat.jpg", "What is in the image?")
pipe.generate_image("a red panda on a tree", n=2, cfg=3.0, seed=0)
pipe.generate_video("waves on a beach", seed=0)      # 8 PIL frames per video
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from tqdm.auto import tqdm

from arvision.data.media import ImageInput, load_media, preprocess_image, read_image, to_pil
from arvision.errors import CheckpointError, InputError
from arvision.models.vila_u import CODE_TEMPERATURE, CODE_TOP_K, CODE_TOP_P, DEFAULT_CFG, VilaU, VilaUConfig
from arvision.nn.sampling import Generators, check_guidance, check_sampling, seeded_generator
from arvision.pipelines import vila_u_checkpoint as ckpt
from arvision.pipelines.common import ProgressBars, checked_device, model_folder, pretrained_dtype, to_arguments
from arvision.pipelines.vila_u_checkpoint import is_vila_u_folder
from arvision.text import vicuna
from arvision.validation import check_flag, check_number

__all__ = ["VilaUPipeline", "TextSampling", "is_vila_u_folder"]


GENERATION_FILE = "llm/generation_config.json"


def _eos_id(value: Any) -> int:
    """``eos_token_id`` of a generation config (an id or a list of ids: the first stops decoding)."""
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise CheckpointError(
            f"{GENERATION_FILE}: eos_token_id must be a token id or a non-empty list of ids, got {value!r}"
        )
    return ids[0]


@dataclass
class TextSampling:
    """Text decoding settings. ``temperature``, ``top_p`` and ``eos_token_id`` default to the release's
    ``llm/generation_config.json`` values; ``max_new_tokens`` is arvision's cap on an answer, which also ends
    where it and its prompt fill the LLM's context (as the release's ``max_length`` 4096, prompt included)."""

    temperature: float = 0.9
    top_p: float = 0.6
    top_k: int = 50  # transformers' default top-k, active in the release's sampling
    max_new_tokens: int = 512
    eos_token_id: int = 2

    @classmethod
    def from_generation_config(cls, data: dict[str, Any]) -> TextSampling:
        """The settings of a ``generation_config.json`` dict (transformers' defaults for what it omits); a value no
        sampler takes is a CheckpointError naming the file, at load rather than as if a call had passed it."""
        temperature, top_p, top_k = data.get("temperature", 1.0), data.get("top_p", 1.0), data.get("top_k", 50)
        do_sample = data.get("do_sample", False)
        try:
            check_sampling(temperature, top_k, top_p)
            check_flag(do_sample, "do_sample")
        except InputError as exc:
            raise CheckpointError(f"{GENERATION_FILE}: {exc}") from exc
        return cls(
            temperature=float(temperature) if do_sample else 0.0,
            top_p=float(top_p),
            top_k=int(top_k),
            eos_token_id=_eos_id(data.get("eos_token_id", 2)),
        )

    def to_generation_config(self) -> dict[str, Any]:
        return {
            "bos_token_id": 1,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": 0,
            "do_sample": self.temperature > 0,
            "temperature": self.temperature or 1.0,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_length": 4096,
        }


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    # Build the model directly in its final dtype: a 7B LLM built in float32 first would need 28 GB.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def left_padded(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [L_i, ...] -> (zeros on the left then each row [B, max L_i, ...], attention mask [B, max L_i] bool)."""
    length = max(len(row) for row in rows)
    padded = rows[0].new_zeros(len(rows), length, *rows[0].shape[1:])
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=padded.device)
    for i, row in enumerate(rows):
        padded[i, length - len(row) :], mask[i, length - len(row) :] = row, True
    return padded, mask


class VilaUPipeline(ProgressBars):
    """Understanding (``describe``) and generation (``generate_image``, ``generate_video``) with VILA-U; the
    progress bar counts generated visual tokens."""

    def __init__(self, model: VilaU, tokenizer: Any, text_sampling: TextSampling | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_sampling = text_sampling or TextSampling()

    # ----- loading and saving -----

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> VilaUPipeline:
        """Load a release folder (``config.json``, ``llm/``, ``vision_tower/``, ``mm_projector/``) or one
        written by :meth:`save_pretrained` (the same layout). ``dtype`` (or diffusers' name, ``torch_dtype``)
        defaults to the stored one (``model_dtype``: bfloat16 for the release)."""
        dtype = pretrained_dtype(dtype, torch_dtype)
        folder, device = model_folder(folder), checked_device(device)
        ckpt.check_vila_u_folder(folder)
        config, generation = ckpt.read_config(folder)
        text_sampling = TextSampling.from_generation_config(generation)
        tokenizer = ckpt.load_tokenizer(folder / "llm", config.vocab_size)
        try:
            with _default_dtype(dtype or ckpt.stored_dtype(folder)):
                model = VilaU.empty(config)  # every weight is loaded next
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            # what read_config's checks leave to transformers, which validates at other points in other versions
            raise CheckpointError(
                f"{folder}: its config files do not build a VILA-U model: {ckpt.one_line(exc)}"
            ) from exc
        ckpt.load_weights(model, folder)
        model.to(device=device)
        return cls(model, tokenizer, text_sampling)

    def save_pretrained(self, folder: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write the release layout, loadable here and by the official code: ``llm/`` gets the source's
        ``tokenizer.model`` (the official loader needs it) and ``pretrained_model`` keeps the source's SigLIP
        name (the official code fetches that config; it is empty for a model built in code)."""
        generation = self.text_sampling.to_generation_config()
        ckpt.save_folder(self.model, Path(folder), self.tokenizer, generation, max_shard_bytes)

    def to(
        self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> VilaUPipeline:
        """Move (and cast, if ``dtype``; ``pipe.to(torch.bfloat16)`` casts too) the model, as
        ``from_pretrained``'s ``device`` and ``dtype`` do."""
        device, dtype = to_arguments(device, dtype)
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def config(self) -> VilaUConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----- understanding -----

    def pixels(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> [N, 3, R, R] in [-1, 1] on the model's device and dtype."""
        size = self.config.tower.image_size
        batch = torch.stack([preprocess_image(read_image(image), size) for image in images])
        return batch.to(self.device, next(self.model.parameters()).dtype)

    def prompt_ids(self, question: str, num_images: int) -> list[int]:
        return vicuna.tokenize(vicuna.understanding_prompt(question, num_images), self.tokenizer)

    def describe(self, media: ImageInput | Sequence[ImageInput], question: str, **options: Any) -> str:
        """Answer ``question`` about an image, a video (file or folder of frames) or a list of frames.

        ``options``: the keyword arguments of :meth:`describe_batch` (``temperature``, ``top_p``, ``top_k``,
        ``max_new_tokens``, ``seed``, ``num_frames``). Sampling follows the checkpoint's generation config
        unless overridden; ``temperature=0`` is greedy.
        """
        return self.describe_batch([media], [question], **options)[0]

    @torch.no_grad()
    def describe_batch(
        self,
        media: Sequence[ImageInput | Sequence[ImageInput]],
        questions: Sequence[str],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        max_new_tokens: int | None = None,
        seed: int | Sequence[int] | None = None,
        num_frames: int | None = None,
    ) -> list[str]:
        """One answer per (media, question) pair, decoded together (prompts left padded), one pass of the LLM
        per new token instead of one per pair. Greedy answers are :meth:`describe`'s; sampled ones draw from
        one generator for the whole batch when ``seed`` is a number (it reproduces the batch), or from one
        generator per question when it is a list of seeds (answer i is then the one ``seed=seeds[i]`` gives alone)."""
        if len(media) != len(questions):
            raise InputError(f"{len(media)} images or videos for {len(questions)} questions")
        if not questions:
            raise InputError("no questions to answer")
        if not all(isinstance(q, str) for q in questions):
            raise InputError(f"questions must be strings, got {[type(q).__name__ for q in questions]}")
        for question in questions:
            self.check_question(question)
        frames = self.config.num_video_frames if num_frames is None else num_frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise InputError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        # Checked before the media are read and encoded, which can take long.
        options = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "max_new_tokens": max_new_tokens}
        sampling = self.answer_sampling(**options)
        generator = self._generators(seed, len(questions), "question")
        # Several questions about one image or video (the same object, as the CLI passes it) read and encode it once.
        encoded: dict[int, torch.Tensor] = {}
        prompts = []
        for item, question in zip(media, questions):
            if id(item) not in encoded:
                encoded[id(item)] = self.model.encode_images(self.pixels(self._frames(item, frames)))[1]
            features = encoded[id(item)]
            prompts.append(self.model.splice(self.prompt_ids(question, len(features)), features))
        limit = self.model.llm.config.max_position_embeddings
        longest = max(prompt.shape[0] for prompt in prompts)
        if longest > limit:
            raise InputError(
                f"the prompt takes {longest} positions (the question's text and the images' tokens), more than the "
                f"model's {limit}: shorten the question or use fewer frames"
            )
        embeds, mask = left_padded(prompts)
        # As the release (transformers' max_length), an answer ends where it and its prompt fill the context.
        ids, _ = self.model.generate_text_batch(
            embeds,
            mask,
            max_length=limit,
            eos_token_id=self.text_sampling.eos_token_id,
            generator=generator,
            **sampling,
        )
        return [self.tokenizer.decode(row.tolist(), skip_special_tokens=True).strip() for row in ids]

    def check_question(self, question: str) -> None:
        """An :class:`InputError` for a question the model cannot be asked (empty, or with special tokens)."""
        if not question.strip():
            raise InputError("the question is empty")
        vicuna.check_user_text(question, self.tokenizer, "the question")

    def answer_sampling(
        self,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
    ) -> dict[str, Any]:
        """The checked text-sampling settings of :meth:`describe_batch` (None: the generation config's)."""
        s = self.text_sampling
        sampling = {
            "temperature": s.temperature if temperature is None else temperature,
            "top_k": s.top_k if top_k is None else top_k,
            "top_p": s.top_p if top_p is None else top_p,
        }
        check_sampling(**sampling)
        if max_new_tokens is not None:
            check_number(max_new_tokens, "max_new_tokens", whole=True)
        if max_new_tokens is not None and max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        return {**sampling, "max_new_tokens": s.max_new_tokens if max_new_tokens is None else max_new_tokens}

    def _generators(self, seed: int | Sequence[int] | None, rows: int, what: str) -> Generators:
        """None, one generator for the batch (a seed), or one per row (a list of ``rows`` seeds, one per ``what``)."""
        if seed is None:
            return None
        if not isinstance(seed, Sequence) or isinstance(seed, str | bytes):
            return seeded_generator(seed, self.device)
        if len(seed) != rows:
            raise InputError(f"seed must be a whole number or a list of {rows} (one per {what}), got {seed!r:.80}")
        return [seeded_generator(s, self.device) for s in seed]

    def _frames(self, media: ImageInput | Sequence[ImageInput], num_frames: int) -> list[ImageInput]:
        """An image, a video file or frame folder (``num_frames`` sampled), or a list of frames -> frames."""
        if isinstance(media, str | os.PathLike):
            return load_media(media, num_frames)
        if isinstance(media, ImageInput):
            return [media]
        if isinstance(media, bytes | bytearray):  # a Sequence of ints, which would be read as frames
            raise InputError("got the bytes of a file: pass its path, or open it as an image (PIL.Image.open)")
        if not isinstance(media, Sequence) or not media:
            raise InputError(f"expected an image, a video or a non-empty list of frames, got {media!r:.60}")
        return list(media)

    @torch.no_grad()
    def reconstruct(self, images: ImageInput | Sequence[ImageInput]) -> list[PIL.Image.Image]:
        """Round trip through the vision tower (encode to codes, decode): what the tokens keep of an image."""
        if isinstance(images, ImageInput):
            images = [images]
        if not isinstance(images, Sequence) or isinstance(images, bytes | bytearray) or not images:
            raise InputError(f"reconstruct takes an image or a non-empty list of images, got {images!r:.60}")
        batch = list(images)
        codes, _ = self.model.vision_tower.encode(self.pixels(batch))
        return to_pil(self.model.vision_tower.decode_codes(codes))

    # ----- generation -----

    def generation_batch(
        self, prompts: str | Sequence[str], n: int, video: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n conditional rows per prompt (prompt-major), then as many unconditional (empty user turn) rows, left
        padded with id 0: (input_ids [2N, S], attention_mask [2N, S] bool), N = n x prompts."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        cond = [vicuna.tokenize(vicuna.generation_prompt(p, video), self.tokenizer) for p in prompts for _ in range(n)]
        uncond = vicuna.tokenize(vicuna.generation_prompt("", video), self.tokenizer)
        ids, mask = left_padded([torch.tensor(row) for row in cond + [uncond] * len(cond)])
        return ids.to(self.device), mask.to(self.device)

    def check_prompt(self, prompt: str, video: bool = False) -> None:
        """An :class:`InputError` for a prompt the model cannot generate from: not text, empty, with special
        tokens, or so long that it and the visual tokens overrun the LLM's context."""
        if not isinstance(prompt, str):
            raise InputError(f"the prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InputError("the prompt is empty")
        vicuna.check_user_text(prompt, self.tokenizer)
        text = len(vicuna.tokenize(vicuna.generation_prompt(prompt, video), self.tokenizer))
        visual = self.config.tower.grid**2 * (self.config.video_generation_frames if video else 1)
        limit = self.model.llm.config.max_position_embeddings
        if text + visual - 1 > limit:  # the last visual token is drawn, never fed back
            raise InputError(
                f"the prompt takes {text} positions and the {'video' if video else 'image'} {visual} more: beyond "
                f"the model's {limit}; shorten the prompt"
            )

    def code_sampling(
        self,
        *,
        cfg: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_name: str = "cfg",
    ) -> dict[str, Any]:
        """The checked visual-code sampling of :meth:`generate_image` / :meth:`generate_video` (None: the
        release's defaults); ``cfg_name`` is what an error calls the guidance scale."""
        options = {
            "cfg": DEFAULT_CFG if cfg is None else cfg,
            "temperature": CODE_TEMPERATURE if temperature is None else temperature,
            "top_k": CODE_TOP_K if top_k is None else top_k,
            "top_p": CODE_TOP_P if top_p is None else top_p,
        }
        check_guidance(options["cfg"], cfg_name)
        check_sampling(options["temperature"], options["top_k"], options["top_p"])
        return options

    def _codes(self, prompts: str | Sequence[str], n: int, video: bool, cfg: float, seed, sampling) -> torch.Tensor:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            prompts = [prompts]
        for prompt in prompts:
            self.check_prompt(prompt, video)
        if not prompts:
            raise InputError("no prompt given")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}")
        options = self.code_sampling(cfg=cfg, **sampling)
        generator = self._generators(seed, len(prompts) * n, "image")
        ids, mask = self.generation_batch(prompts, n, video)
        tokens = self.config.tower.grid**2 * (self.config.video_generation_frames if video else 1)
        with tqdm(total=tokens, desc="visual tokens", disable=not self.progress, leave=False) as bar:
            out = self.model.generate_codes(
                ids, mask, tokens, generator=generator, on_step=lambda _: bar.update(1), **options
            )
        return out.codes

    @torch.no_grad()
    def generate_image(
        self,
        prompt: str | Sequence[str],
        n: int = 1,
        cfg: float = DEFAULT_CFG,
        seed: int | Sequence[int] | None = None,
        *,
        temperature: float = CODE_TEMPERATURE,
        top_k: int = CODE_TOP_K,
        top_p: float = CODE_TOP_P,
    ) -> list[PIL.Image.Image]:
        """``n`` images for ``prompt`` (or for each of a list of prompts, prompt-major): R x R PIL images (R = the
        tower's resolution). ``seed``: one for the whole batch, or a list of one per image, each image then
        drawn from its own (image i is the one ``seed=seeds[i]`` gives alone)."""
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        codes = self._codes(prompt, n, False, cfg, seed, sampling)
        images = to_pil(self.model.decode_codes(codes))
        return images

    @torch.no_grad()
    def generate_video(
        self,
        prompt: str | Sequence[str],
        n: int = 1,
        cfg: float = DEFAULT_CFG,
        seed: int | Sequence[int] | None = None,
        *,
        temperature: float = CODE_TEMPERATURE,
        top_k: int = CODE_TOP_K,
        top_p: float = CODE_TOP_P,
    ) -> list[list[PIL.Image.Image]]:
        """``n`` videos of ``video_generation_frames`` (8) frames: one sequence after ``<vi_start>``, each
        frame's code map decoded on its own. Returns a list (per video) of PIL frames. Prompts and seeds as in
        :meth:`generate_image`."""
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        codes = self._codes(prompt, n, True, cfg, seed, sampling)
        frames, videos = self.config.video_generation_frames, codes.shape[0]
        per_frame = codes.reshape(videos * frames, -1, codes.shape[-1])
        images = to_pil(self.model.decode_codes(per_frame))
        return [images[i * frames : (i + 1) * frames] for i in range(videos)]


def refuse_hart_options(used: Sequence[str], model: str) -> None:
    """An :class:`InputError` naming the HART-only options a request to a VILA-U ``model`` ``used``."""
    if used:
        verb = "apply" if len(used) > 1 else "applies"
        raise InputError(f"{', '.join(used)} {verb} to HART models only; {model} is a VILA-U model")
