"""The HTTP API and its web page (FastAPI), over a :class:`~arvision.serving.batching.BatchingQueue`.

Endpoints:

* ``GET /``: a page to generate images (and videos) from a prompt and ask questions about an image.
* ``GET /health``: the models served, their defaults, and the queue's counters.
* ``POST /v1/generate``: JSON ``{"prompt": ..., "n": 1, "seed": null, "size": null, ...}`` ->
  ``{"images": [base64 PNG, ...], "seeds": [...], "width": W, "height": H, "warnings": [...]}``. Image i is what
  ``pipe(prompt, seed=seeds[i])`` makes alone, whatever it was batched with.
* ``POST /v1/generate-video``: JSON ``{"prompt": ..., "n": 1, "seed": null, "fps": 4, "format": "mp4"}`` ->
  ``{"videos": [base64 file, ...], "seeds": [...], "format": ..., "frames": F, ...}``, from the VILA-U model
  (the generator if it is one, else the question-answering model).
* ``POST /v1/describe``: a multipart form with ``file`` (an image or a video) and ``question`` ->
  ``{"answer": ..., "seed": ...}``.

Requests the models cannot take answer 400 with a message that names the problem (FastAPI's 422 for a
field of the wrong type or range), a full queue 503; the models run on the queue's one worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import io
import math
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, fields, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arvision.data.media import check_fps, check_video_writer, load_media, save_video
from arvision.errors import ArvisionError, InputError
from arvision.imaging import load_image
from arvision.models.vila_u import DEFAULT_CFG
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
    check_video,
    describe_key,
    fresh_seed,
    generation_key,
    image_seeds,
    prompt_notes,
    video_key,
)

MAX_UPLOAD_BYTES = 64 * 2**20
MAX_FRAMES = 64  # frames sampled from an uploaded video
MAX_TEXT_CHARS = 10_000  # prompts and questions: far beyond any model's context, cheap to tokenize
MAX_NEW_TOKENS = 4096
MAX_UPLOAD_PIXELS = 2**26  # an image or video's frames in all: 8 frames of 4K video, 200 MB decoded
DISCONNECT_POLL_S = 0.25
GENERATION_SETTINGS = {f.name for f in fields(GenerationSettings)}  # the request fields that form the batch key


class SamplingRequest(BaseModel):
    """What image and video requests share; sampling options left out (null) take the model's defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN and Infinity: JSON extensions no model takes

    prompt: str = Field(max_length=MAX_TEXT_CHARS)
    n: int = Field(1, ge=1, description="images (videos) to generate, at most the server's max batch")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of the first result; result i uses seed + i")
    guidance_scale: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    temperature: float | None = Field(None, ge=0)


class GenerateRequest(SamplingRequest):
    """A text-to-image request (HART, or VILA-U: the fields below, ``size`` apart, are HART's only)."""

    size: int | None = Field(None, gt=0, description="square image size in pixels (default: the model's)")
    guidance_schedule: Literal["linear", "constant"] | None = None
    more_smooth: bool | None = Field(None, description="HART's Gumbel mixing of code vectors (default: the model's)")
    diffusion_steps: int | None = Field(None, ge=1)
    negative_prompt: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    image: str | None = Field(
        None, description="HART image-to-image: a base64-encoded image whose codes of the first scales are kept"
    )
    strength: float | None = Field(
        None, ge=0, le=1, description="with image: the share of the scales drawn anew (default 0.8)"
    )


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="base64-encoded PNG files")
    seeds: list[int]
    width: int
    height: int
    warnings: list[str] = Field(default_factory=list, description="e.g. a prompt longer than the model reads")


class VideoRequest(SamplingRequest):
    """A text-to-video request (VILA-U)."""

    fps: float = Field(4.0, description="frames per second of the files")
    format: Literal["mp4", "gif", "webp"] = "mp4"


class VideoResponse(BaseModel):
    videos: list[str] = Field(description="base64-encoded video files (MP4, or animated GIF / WebP)")
    format: str
    seeds: list[int]
    frames: int
    fps: float
    width: int
    height: int


class DescribeResponse(BaseModel):
    answer: str
    seed: int


def create_app(
    generator: HartPipeline | VilaUPipeline | None = None,
    describer: VilaUPipeline | None = None,
    *,
    names: dict[str, str] | None = None,
    max_batch: int = 8,
    max_wait_s: float = 0.02,
    max_pending: int = 64,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """An app serving ``generator`` (text-to-image: HART, or VILA-U) and/or ``describer`` (questions about images
    and videos: VILA-U; it may be the generator's own pipeline).

    ``names``: what ``/health`` calls the models (``{"generate": ..., "describe": ...}``, e.g. their folders).
    ``max_batch``: images (or questions) run together; ``max_wait_s``: how long the worker waits for more
    requests to fill a batch; ``max_pending``: queued requests before 503.
    """
    if generator is None and describer is None:
        raise InputError("give the server a text-to-image model, a question-answering model, or both")
    models = Models(generator, describer)
    names = names or {}

    def new_queue() -> BatchingQueue:
        return BatchingQueue(models.run, max_batch=max_batch, max_wait_s=max_wait_s, max_pending=max_pending)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.queue.closed:  # served before: a new run of the app gets a new worker
            app.state.queue = new_queue()
        yield
        await run_in_threadpool(app.state.queue.close)  # waits for the running batch: off the event loop

    app = FastAPI(
        title="arvision",
        description="Text-to-image (HART or VILA-U) and visual question answering (VILA-U)",
        lifespan=lifespan,
    )
    app.state.queue, app.state.models = new_queue(), models
    app.add_middleware(LimitBodySize, max_bytes=max_upload_bytes)

    @app.exception_handler(ArvisionError)
    async def named_error(_: Request, exc: ArvisionError) -> JSONResponse:
        if isinstance(exc, QueueFull | QueueClosed):
            return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"detail": str(exc)}, status_code=400 if isinstance(exc, InputError) else 500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, but for the bad input it echoes: a NaN or an infinity (1e400 reads as one) is
        # not JSON, and made it fail with a 500
        errors = [_without_long_input(error) for error in exc.errors()]
        return JSONResponse({"detail": _json_safe(jsonable_encoder(errors))}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("arvision.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> JSONResponse:
        generate = describe = None
        if generator is not None:
            kind, size, guidance = (
                ("vila-u", generator.config.tower.image_size, DEFAULT_CFG)
                if isinstance(generator, VilaUPipeline)
                else ("hart", generator.default_size(), generator.guidance_scale)
            )
            generate = {"model": names.get("generate"), "kind": kind, "size": size, "guidance_scale": guidance}
        if describer is not None:
            describe = {"model": names.get("describe"), "image_size": describer.config.tower.image_size}
        video = None
        if models.video is not None:
            video_name = names.get("generate" if models.video is generator else "describe")
            video = {"model": video_name, "frames": models.video.config.video_generation_frames}
        stats = app.state.queue.stats()
        body = {
            "status": "ok" if stats.running else "stopped",
            "generate": generate,
            "describe": describe,
            "video": video,
            "max_batch": max_batch,
            "queue": asdict(stats),
        }
        return JSONResponse(body, status_code=200 if stats.running else 503)

    def sampling_job(body: SamplingRequest, negative: str | None = None) -> tuple[GenerationSettings, GenerationJob]:
        """A request's batch key settings and its job, one seed per result."""
        if body.n > max_batch:
            raise InputError(f"n must be within 1..{max_batch} (this server's max batch), got {body.n}")
        settings = GenerationSettings(**body.model_dump(include=GENERATION_SETTINGS))
        return settings, GenerationJob(body.prompt, image_seeds(body.seed, body.n), negative)

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
        if generator is None:
            raise HTTPException(404, "this server runs no text-to-image model")
        settings, job = sampling_job(body, body.negative_prompt)
        if body.image is not None:
            job = replace(job, image=await run_in_threadpool(_read_base64_image, body.image))
        check_generation(generator, settings, job)
        notes = prompt_notes(generator, job)
        images = await _result(request, app.state.queue.submit(generation_key(settings, job), job, size=body.n))
        width, height = images[0].size
        encoded = await run_in_threadpool(lambda: [_png_base64(image) for image in images])  # large images: ~0.1 s
        return GenerateResponse(images=encoded, seeds=list(job.seeds), width=width, height=height, warnings=notes)

    @app.post("/v1/generate-video", response_model=VideoResponse)
    async def generate_video(body: VideoRequest, request: Request) -> VideoResponse:
        video_model = models.video
        if video_model is None:
            raise HTTPException(404, "this server runs no VILA-U model: videos need one")
        check_fps(body.fps, f".{body.format}")
        check_video_writer(f".{body.format}")  # before the generation, which a missing writer would waste
        settings, job = sampling_job(body)
        check_video(video_model, settings, job)
        videos = await _result(request, app.state.queue.submit(video_key(settings), job, size=body.n))
        encoded = await run_in_threadpool(lambda: [_video_base64(frames, body.fps, body.format) for frames in videos])
        width, height = videos[0][0].size
        return VideoResponse(
            videos=encoded,
            format=body.format,
            seeds=list(job.seeds),
            frames=len(videos[0]),
            fps=body.fps,
            width=width,
            height=height,
        )

    @app.post("/v1/describe", response_model=DescribeResponse)
    async def describe(
        request: Request,
        file: Annotated[UploadFile, File(description="an image or a video")],
        # FastAPI reads an empty form field as a missing one ("Field required"): both reach check_describe,
        # which names an empty question
        question: Annotated[str, Form(max_length=MAX_TEXT_CHARS)] = "",
        seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
        temperature: Annotated[float | None, Form(ge=0, allow_inf_nan=False)] = None,
        top_k: Annotated[int | None, Form(ge=0)] = None,
        top_p: Annotated[float | None, Form(ge=0, le=1, allow_inf_nan=False)] = None,
        max_new_tokens: Annotated[int | None, Form(ge=1, le=MAX_NEW_TOKENS)] = None,
        num_frames: Annotated[int | None, Form(ge=1, le=MAX_FRAMES)] = None,
    ) -> DescribeResponse:
        if describer is None:
            raise HTTPException(404, "this server runs no question-answering model")
        unknown = sorted(set((await request.form()).keys()) - describe_fields)
        if unknown:  # as the JSON endpoints refuse extra fields: a misspelt "temprature" would be ignored
            raise InputError(f"unknown form field(s) {', '.join(unknown)}; known: {', '.join(sorted(describe_fields))}")
        settings = DescribeSettings(temperature, top_k, top_p, max_new_tokens)
        check_describe(describer, settings, question)
        data = await file.read()  # LimitBodySize has bounded it
        if not data:
            raise InputError("the uploaded file is empty")
        frames_wanted = describer.config.num_video_frames if num_frames is None else num_frames
        frames = await run_in_threadpool(_read_upload, data, file.filename, frames_wanted)
        job = DescribeJob(tuple(frames), question, fresh_seed() if seed is None else seed)
        answer = await _result(request, app.state.queue.submit(describe_key(settings), job))
        return DescribeResponse(answer=answer, seed=job.seed)

    describe_fields = set(inspect.signature(describe).parameters) - {"request"}  # its form fields, read above
    return app


async def _result(request: Request, job: Future) -> Any:
    """The job's result; if the client goes away first, the job is cancelled (dropped unless it has started)."""
    waiting = asyncio.wrap_future(job)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
        if done:
            return waiting.result()
        if await request.is_disconnected():
            job.cancel()
            raise HTTPException(499, "the client closed the request")  # nobody reads it


class LimitBodySize:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is stored, by its declared
    Content-Length or, for a streamed body, as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"the request body is larger than {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"detail": too_large}, 413)(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, too_large)
            return message

        await self.app(scope, counted, send)


def _without_long_input(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error with its ``input`` echoed only when short and JSON-like: a raw body that is not JSON
    (bytes, which may not even decode), a long text or an upload would be copied back whole, or fail to encode."""
    value = error.get("input")
    short = isinstance(value, bool | int | float | type(None)) or (isinstance(value, str) and len(value) <= 200)
    return error if short else {key: item for key, item in error.items() if key != "input"}


def _json_safe(value: Any) -> Any:
    """``value`` (JSON-like) with its non-finite floats as strings: "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _video_base64(frames, fps: float, kind: str) -> str:
    with tempfile.TemporaryDirectory(prefix="arvision-video-") as folder:
        path = save_video(frames, Path(folder) / f"video.{kind}", fps)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def _read_base64_image(data: str) -> Image.Image:
    """A request's base64 image, through the reader of image files (errors name "the image")."""
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)  # MIME base64 wraps its lines
    except binascii.Error:
        raise InputError("image is not valid base64") from None
    if not raw:
        raise InputError("image is empty")
    return _read_through_file(raw, "", "the image", load_image)


def _read_upload(data: bytes, filename: str, num_frames: int) -> list:
    """An uploaded image or video -> frames, through the same readers as files on disk, which the upload's
    suffix steers (a video suffix goes to the video reader; others are tried as an image, then as a video),
    with errors that name the upload."""
    suffix = re.sub(r"[^A-Za-z0-9.]", "", Path(filename).suffix)[:12]
    return _read_through_file(data, suffix, repr(filename), lambda path: load_media(path, num_frames))


def _read_through_file(data: bytes, suffix: str, shown: str, read: Callable[[Path], Any]) -> Any:
    """``read`` a temporary file holding ``data``; its errors name ``shown``, not the temporary file. Images
    (or frames) past MAX_UPLOAD_PIXELS in all are refused: a small compressed file can decode to gigabytes,
    which a queued job would hold until its batch runs."""
    with tempfile.TemporaryDirectory(prefix="arvision-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            decoded = read(path)
        except InputError as exc:
            raise InputError(str(exc).replace(str(path), shown)) from None
    frames = decoded if isinstance(decoded, list) else [decoded]
    pixels = sum(frame.width * frame.height for frame in frames)
    if pixels > MAX_UPLOAD_PIXELS:
        raise HTTPException(
            413, f"{shown} decodes to {pixels:,} pixels; the limit is {MAX_UPLOAD_PIXELS:,} (downscale it first)"
        )
    return decoded
