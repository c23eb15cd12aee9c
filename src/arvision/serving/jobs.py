"""What the server's worker runs: text-to-image jobs on a HART (or VILA-U) pipeline, question-answering jobs on
a VILA-U pipeline. A job's *settings* are its batch key (jobs with equal settings share one pipeline call); its
*payload* is what differs within a batch. Each image and answer is drawn from its own seeded generator, so a
result does not depend on the batch it ran in: image i of a response is the single image of
``pipe(prompt, seed=seeds[i])`` (VILA-U: ``generate_image(prompt, seed=seeds[i])``), and an answer is
``describe(media, question, seed=seed)``'s.
"""

from __future__ import annotations

import secrets
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from arvision.errors import InputError
from arvision.nn.sampling import seeded_generator
from arvision.pipelines.hart import HartPipeline, image_strength
from arvision.pipelines.vila_u import VilaUPipeline, refuse_hart_options
from arvision.text.base import check_prompts

MAX_SEED = 2**31 - 1


def fresh_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def image_seeds(seed: int | None, count: int) -> tuple[int, ...]:
    """One seed per image: ``seed, seed + 1, ...`` (a fresh random start when ``seed`` is None)."""
    last_start = MAX_SEED - count + 1
    start = secrets.randbelow(last_start + 1) if seed is None else seed
    if not 0 <= start <= last_start:
        raise InputError(f"seed must be within [0, {last_start}] for {count} results, got {seed}")
    return tuple(range(start, start + count))


@dataclass(frozen=True)
class GenerationSettings:
    """The sampling options of a text-to-image request, named as :class:`HartPipeline`'s arguments (None: the
    model's default; ``size``: height and width; ``guidance_schedule`` and the last two are HART's only); equal
    settings batch."""

    size: int | None = None
    guidance_scale: float | None = None
    guidance_schedule: str | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    more_smooth: bool | None = None
    diffusion_steps: int | None = None
    strength: float | None = None  # image-to-image (the job's image)


@dataclass(frozen=True)
class GenerationJob:
    """One request: ``len(seeds)`` images of ``prompt`` (from ``image``, image-to-image, when given)."""

    prompt: str
    seeds: tuple[int, ...]
    negative_prompt: str | None = None
    image: Image.Image | None = field(default=None, compare=False)


TextToImage = HartPipeline | VilaUPipeline


def check_generation(pipe: TextToImage, settings: GenerationSettings, job: GenerationJob) -> None:
    """Refuse, before it is queued, a request the pipeline would refuse (a bad one would fail its batch)."""
    check_prompts(job.prompt)
    if job.negative_prompt is not None and not job.negative_prompt.strip():
        raise InputError("the negative prompt is empty; leave it out to use the model's null condition")
    if isinstance(pipe, VilaUPipeline):  # HART's options (strength among them) are named as such first
        _check_vila_u(pipe, settings, job, video=False)
        return
    image_strength(settings.strength, job.image is not None)
    pipe.sampling_options(**_hart_options(settings))
    pipe.schedule_for(settings.size, settings.size)
    if pipe.transformer.config.class_conditional:  # prompts are class names (ImageNet models)
        pipe.get_label_ids([text for text in (job.prompt, job.negative_prompt) if text is not None])


def _hart_options(settings: GenerationSettings) -> dict[str, Any]:
    """The sampling options a request set, as :class:`HartPipeline` keyword arguments (``size`` and
    ``strength`` apart)."""
    given = asdict(settings).items()
    return {name: value for name, value in given if value is not None and name not in ("size", "strength")}


def _vila_u_options(pipe: VilaUPipeline, settings: GenerationSettings) -> dict[str, Any]:
    """The options a request set, checked, as :meth:`VilaUPipeline.generate_image` (``generate_video``)
    keyword arguments."""
    given = {"cfg": settings.guidance_scale, "temperature": settings.temperature, "top_k": settings.top_k}
    return pipe.code_sampling(**given, top_p=settings.top_p, cfg_name="guidance_scale")


def _check_vila_u(pipe: VilaUPipeline, settings: GenerationSettings, job: GenerationJob, video: bool) -> None:
    """Refuse what a VILA-U model cannot take: HART's options, another size, a prompt it cannot read."""
    hart_only = [
        name
        for name, used in (
            ("guidance_schedule", settings.guidance_schedule is not None),
            ("more_smooth", settings.more_smooth is not None),
            ("diffusion_steps", settings.diffusion_steps is not None),
            ("negative_prompt", job.negative_prompt is not None),
            ("image", job.image is not None),
            ("strength", settings.strength is not None),
        )
        if used
    ]
    refuse_hart_options(hart_only, "this server's generator")
    pipe.check_prompt(job.prompt, video)
    size = pipe.config.tower.image_size
    if settings.size not in (None, size):
        raise InputError(f"this VILA-U model makes {size}x{size} images, not {settings.size}x{settings.size}")
    _vila_u_options(pipe, settings)


def prompt_notes(pipe: TextToImage, job: GenerationJob) -> list[str]:
    """What a client should know about how the model reads its prompts: HART's text encoder keeps the first
    ``max_length`` tokens of a longer one (as the official code does)."""
    encoder = pipe.text_encoder if isinstance(pipe, HartPipeline) else None
    notes = []
    for what, text in (("prompt", job.prompt), ("negative prompt", job.negative_prompt)):
        if encoder is not None and text is not None and (count := encoder.token_count(text)) > encoder.max_length:
            notes.append(f"the {what} is {count} tokens long; the model reads its first {encoder.max_length}")
    return notes


def generation_key(settings: GenerationSettings, job: GenerationJob) -> Hashable:
    """Jobs batch when their settings match and all or none of them have a negative prompt (the others use
    the model's null condition, which no prompt stands for), and an image."""
    return ("generate", settings, job.negative_prompt is not None, job.image is not None)


def _per_result(jobs: Sequence[GenerationJob]) -> tuple[list[str], list[int]]:
    """The jobs' prompts and seeds, one entry per image (video), in job order."""
    return [job.prompt for job in jobs for _ in job.seeds], [seed for job in jobs for seed in job.seeds]


def _per_job(results: Sequence[Any], jobs: Sequence[GenerationJob]) -> list[list[Any]]:
    """Results made in :func:`_per_result`'s order, handed back to their jobs."""
    out, start = [], 0
    for job in jobs:
        out.append(list(results[start : start + len(job.seeds)]))
        start += len(job.seeds)
    return out


def run_generation(pipe: TextToImage, settings: GenerationSettings, jobs: Sequence[GenerationJob]) -> list:
    """One pipeline call for all the jobs' images -> per job, its list of PIL images."""
    prompts, seeds = _per_result(jobs)
    negatives = [job.negative_prompt for job in jobs for _ in job.seeds]
    starts = [job.image for job in jobs for _ in job.seeds]
    if len({n is None for n in negatives}) > 1 or len({image is None for image in starts}) > 1:
        raise InputError("jobs with and without a negative prompt or an image cannot share a batch (generation_key)")
    if isinstance(pipe, VilaUPipeline):
        images = pipe.generate_image(prompts, seed=seeds, **_vila_u_options(pipe, settings))
    else:
        images = pipe(
            prompts,
            height=settings.size,
            width=settings.size,
            negative_prompt=None if negatives[0] is None else negatives,
            image=None if starts[0] is None else starts,
            strength=settings.strength,
            generator=[seeded_generator(seed, pipe.device) for seed in seeds],
            progress=False,
            **_hart_options(settings),
        ).images
    return _per_job(images, jobs)


def check_video(pipe: VilaUPipeline, settings: GenerationSettings, job: GenerationJob) -> None:
    """Refuse, before it is queued, a text-to-video request the VILA-U pipeline would refuse."""
    check_prompts(job.prompt)
    _check_vila_u(pipe, settings, job, video=True)


def video_key(settings: GenerationSettings) -> Hashable:
    return ("video", settings)


def run_video(pipe: VilaUPipeline, settings: GenerationSettings, jobs: Sequence[GenerationJob]) -> list:
    """One pipeline call for all the jobs' videos -> per job, its list of videos (lists of PIL frames)."""
    prompts, seeds = _per_result(jobs)
    return _per_job(pipe.generate_video(prompts, seed=seeds, **_vila_u_options(pipe, settings)), jobs)


@dataclass(frozen=True)
class DescribeSettings:
    """Text sampling of a question (None: the model's generation config); equal settings batch."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None


def describe_key(settings: DescribeSettings) -> Hashable:
    return ("describe", settings)


@dataclass(frozen=True, eq=False)
class DescribeJob:
    """One question about an image (one frame) or a video (its frames)."""

    frames: tuple[Image.Image, ...]
    question: str
    seed: int


def check_describe(pipe: VilaUPipeline, settings: DescribeSettings, question: str) -> None:
    """Refuse, before it is queued, a question the pipeline would refuse."""
    pipe.check_question(question)
    pipe.answer_sampling(**asdict(settings))


def run_describe(pipe: VilaUPipeline, settings: DescribeSettings, jobs: Sequence[DescribeJob]) -> list[str]:
    media = [job.frames[0] if len(job.frames) == 1 else list(job.frames) for job in jobs]
    return pipe.describe_batch(
        media,
        [job.question for job in jobs],
        seed=[job.seed for job in jobs],
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
    )


@dataclass
class Models:
    """The pipelines a server runs (any may be None) and the runner its queue calls, keyed by
    :func:`generation_key`, :func:`video_key` and :func:`describe_key`. ``video`` is a VILA-U pipeline:
    the generator if it is one, else the describer."""

    generator: TextToImage | None = None
    describer: VilaUPipeline | None = None

    @property
    def video(self) -> VilaUPipeline | None:
        return self.generator if isinstance(self.generator, VilaUPipeline) else self.describer

    def run(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        kind, settings = key[0], key[1]
        runs = {
            "generate": (self.generator, run_generation),
            "video": (self.video, run_video),
            "describe": (self.describer, run_describe),
        }
        pipe, run = runs[kind]
        if pipe is None:  # the endpoints answer 404 first
            raise RuntimeError(f"no model for {kind!r} jobs")
        return run(pipe, settings, payloads)
