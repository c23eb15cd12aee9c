"""The HTTP API and its web page (FastAPI), over a :class:`~arvision.serving.batching.BatchingQueue`.

Endpoints:

* ``GET /``: a page to generate images from a prompt and ask questions about an image.
* ``GET /health``: the models served, their defaults, and the queue's counters.
* ``POST /v1/generate``: JSON ``{"prompt": ..., "n": 1, "seed": null, "size": null, ...}`` ->
  ``{"images": [base64 PNG, ...], "seeds": [...], "width": W, "height": H}``. Image i is what
  ``pipe(prompt, seed=seeds[i])`` makes alone, whatever it was batched with.
* ``POST /v1/describe``: a multipart form with ``file`` (an image or a video) and ``question`` ->
  ``{"answer": ..., "seed": ...}``.

Requests the models cannot take answer 400 with a message that names the problem (FastAPI's 422 for a
field of the wrong type or range), a full queue 503; the models run on the queue's one worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import tempfile
from contextlib import asynccontextmanager
from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from arvision.data.media import load_media
from arvision.errors import ArvisionError, InputError
from arvision.pipelines.hart import HartPipeline
from arvision.pipelines.vila_u import VilaUPipeline
from arvision.serving.batching import BatchingQueue, QueueClosed, QueueFull
from arvision.serving.jobs import (
    MAX_SEED,
    DescribeJob,
    DescribeSettings,
    GenerationJob,
    GenerationSettings,
    Models,
    check_describe,
    check_generation,
    describe_key,
    fresh_seed,
    generation_key,
    image_seeds,
)

MAX_UPLOAD_BYTES = 64 * 2**20
GENERATION_SETTINGS = {f.name for f in fields(GenerationSettings)}  # the request fields that form the batch key


class GenerateRequest(BaseModel):
    """A text-to-image request; sampling options left out (null) take the model folder's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    n: int = Field(1, ge=1, description="images to generate (at most the server's max batch)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of the first image; image i uses seed + i")
    size: int | None = Field(None, gt=0, description="square image size in pixels (default: the model's)")
    guidance_scale: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float = Field(0.0, ge=0, le=1)
    temperature: float = Field(1.0, ge=0)
    more_smooth: bool = False
    diffusion_steps: int | None = Field(None, ge=1)
    negative_prompt: str | None = None


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="base64-encoded PNG files")
    seeds: list[int]
    width: int
    height: int


class DescribeResponse(BaseModel):
    answer: str
    seed: int


def create_app(
    generator: HartPipeline | None = None,
    describer: VilaUPipeline | None = None,
    *,
    names: dict[str, str] | None = None,
    max_batch: int = 8,
    max_wait_s: float = 0.02,
    max_pending: int = 64,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """An app serving ``generator`` (text-to-image) and/or ``describer`` (questions about images and videos).

    ``names``: what ``/health`` calls the models (``{"generate": ..., "describe": ...}``, e.g. their folders).
    ``max_batch``: images (or questions) run together; ``max_wait_s``: how long the worker waits for more
    requests to fill a batch; ``max_pending``: queued requests before 503.
    """
    if generator is None and describer is None:
        raise InputError("give the server a text-to-image model, a question-answering model, or both")
    models = Models(generator, describer)
    queue = BatchingQueue(models.run, max_batch=max_batch, max_wait_s=max_wait_s, max_pending=max_pending)
    names = names or {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        queue.close()

    app = FastAPI(
        title="arvision", description="HART text-to-image and VILA-U visual question answering", lifespan=lifespan
    )
    app.state.queue, app.state.models = queue, models

    @app.exception_handler(ArvisionError)
    async def named_error(_: Request, exc: ArvisionError) -> JSONResponse:
        if isinstance(exc, QueueFull | QueueClosed):
            return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"detail": str(exc)}, status_code=400 if isinstance(exc, InputError) else 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("arvision.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        generate = describe = None
        if generator is not None:
            size = generator.default_size()
            generate = {"model": names.get("generate"), "size": size, "guidance_scale": generator.guidance_scale}
        if describer is not None:
            describe = {"model": names.get("describe"), "image_size": describer.config.tower.image_size}
        return {
            "status": "ok",
            "generate": generate,
            "describe": describe,
            "max_batch": max_batch,
            "queue": asdict(queue.stats()),
        }

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(request: GenerateRequest) -> GenerateResponse:
        if generator is None:
            raise HTTPException(404, "this server runs no text-to-image model")
        settings = GenerationSettings(**request.model_dump(include=GENERATION_SETTINGS))
        job = GenerationJob(request.prompt, image_seeds(request.seed, request.n), request.negative_prompt)
        check_generation(generator, settings, job)
        images = await asyncio.wrap_future(queue.submit(generation_key(settings, job), job, size=request.n))
        width, height = images[0].size
        encoded = await run_in_threadpool(lambda: [_png_base64(image) for image in images])  # large images: ~0.1 s
        return GenerateResponse(images=encoded, seeds=list(job.seeds), width=width, height=height)

    @app.post("/v1/describe", response_model=DescribeResponse)
    async def describe(
        file: Annotated[UploadFile, File(description="an image or a video")],
        question: Annotated[str, Form()],
        seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
        temperature: Annotated[float | None, Form(ge=0)] = None,
        top_k: Annotated[int | None, Form(ge=0)] = None,
        top_p: Annotated[float | None, Form(ge=0, le=1)] = None,
        max_new_tokens: Annotated[int | None, Form(ge=1)] = None,
        num_frames: Annotated[int | None, Form(ge=1)] = None,
    ) -> DescribeResponse:
        if describer is None:
            raise HTTPException(404, "this server runs no question-answering model")
        settings = DescribeSettings(temperature, top_k, top_p, max_new_tokens)
        check_describe(describer, settings, question)
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the upload is larger than {max_upload_bytes} bytes")
        if not data:
            raise InputError("the uploaded file is empty")
        frames_wanted = describer.config.num_video_frames if num_frames is None else num_frames
        frames = await run_in_threadpool(_read_upload, data, file.filename or "upload", frames_wanted)
        job = DescribeJob(tuple(frames), question, fresh_seed() if seed is None else seed)
        answer = await asyncio.wrap_future(queue.submit(describe_key(settings), job))
        return DescribeResponse(answer=answer, seed=job.seed)

    return app


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_upload(data: bytes, filename: str, num_frames: int) -> list:
    """An uploaded image or video -> frames, through the same readers as files on disk (the container is
    found by content; the name only lends its suffix), with errors that name the upload, not a temp file."""
    suffix = re.sub(r"[^A-Za-z0-9.]", "", Path(filename).suffix)[:12]
    with tempfile.TemporaryDirectory(prefix="arvision-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_media(path, num_frames)
        except InputError as exc:
            raise InputError(str(exc).replace(str(path), repr(filename))) from None
