"""The HTTP server's batching queue on the embedded defaults: N clients each send one request at the same time,
served one request per model call (``max_batch=1``, the baseline) and batched (``max_batch`` 4 and 8), in the
same run, in process (httpx over ASGI, no sockets). ``--task generate``: one image per request from the default
HART; ``--task describe``: one question about a world scene per request to the default VILA-U (sampled answers,
each with its own seed). Prints requests per second, the mean and slowest latency, and how the results compare
with the baseline's (the same seeds must give the same images and answers whatever the batching). Not part of
the test suite.

    python benchmarks/serving_batching.py [--task generate|describe] [--clients 16] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import time

import httpx
import numpy as np
import torch
from PIL import Image

from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.defaults import default_model_path
from arvision.pipelines.hart import HartPipeline
from arvision.pipelines.vila_u import VilaUPipeline
from arvision.serving.app import create_app

PROMPTS = ["a red circle", "a blue square left of a green star", "a small yellow triangle", "a purple ring"]
QUESTIONS = ["What color is the circle?", "What shape is the red object?", "How many objects are there?"]


def generation_request(i: int) -> dict:
    return {"json": {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}}


def describe_request(scenes: list[bytes]):
    def request(i: int) -> dict:
        form = {"question": QUESTIONS[i % len(QUESTIONS)], "seed": str(i), "max_new_tokens": "8"}
        return {"files": {"file": ("scene.png", scenes[i % len(scenes)])}, "data": form}

    return request


async def serve(app, path: str, request, clients: int) -> tuple[float, list[float], list]:
    async def one(http: httpx.AsyncClient, i: int) -> tuple[float, object]:
        started = time.perf_counter()
        response = await http.post(path, timeout=600, **request(i))
        response.raise_for_status()
        body = response.json()
        if "answer" in body:
            return time.perf_counter() - started, body["answer"]
        image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
        return time.perf_counter() - started, np.asarray(image)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        await one(http, 0)  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(one(http, i) for i in range(clients)))
        wall = time.perf_counter() - started
    app.state.queue.close()
    return wall, [latency for latency, _ in results], [result for _, result in results]


def compare(results: list, baseline: list) -> str:
    if isinstance(results[0], str):
        return f"{sum(a == b for a, b in zip(results, baseline))} of {len(results)} answers as the baseline's"
    diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(results, baseline))
    return f"max pixel difference {diff}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("generate", "describe"), default="generate")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.task == "generate":
        pipe = HartPipeline.from_pretrained(default_model_path("hart"), device=args.device)
        path, request, models = "/v1/generate", generation_request, (pipe, None)
    else:
        pipe = VilaUPipeline.from_pretrained(default_model_path("vila-u"), device=args.device)
        pipe.progress = False
        world = ProceduralWorld(WorldConfig(image_size=64, max_objects=2), seed=0, split="val")
        scenes = []
        for i in range(8):
            buffer = io.BytesIO()
            world.sample(i).image.save(buffer, format="PNG")
            scenes.append(buffer.getvalue())
        path, request, models = "/v1/describe", describe_request(scenes), (None, pipe)
    print(f"{args.task}: {args.clients} concurrent requests, device {args.device}, {args.threads} threads")
    baseline_wall, baseline = None, None
    for max_batch in (1, 4, 8):
        app = create_app(*models, max_batch=max_batch, max_wait_s=0.05, max_pending=args.clients)
        wall, latencies, results = asyncio.run(serve(app, path, request, args.clients))
        mean = statistics.mean(latencies)
        line = f"max_batch {max_batch}: {args.clients / wall:6.2f} requests/s, latency mean {mean:.2f} s, "
        line += f"max {max(latencies):.2f} s"
        if baseline_wall is None:
            baseline_wall, baseline = wall, results
        else:
            line += f"; {baseline_wall / wall:.2f}x the baseline's throughput, {compare(results, baseline)}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
