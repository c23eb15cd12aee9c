"""The HTTP server's batching queue on the embedded default HART: N clients each ask for one image at the same
time, served one request per model call (``max_batch=1``, the baseline) and batched (``max_batch`` 4 and 8),
in the same run, in process (httpx over ASGI, no sockets). Prints images per second, the mean and slowest
request latency, and the largest pixel difference against the baseline's images (the same seeds must give the
same images whatever the batching). Not part of the test suite.

    python benchmarks/serving_batching.py [--clients 16] [--threads 2] [--device cpu]
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

from arvision.defaults import default_model_path
from arvision.pipelines.hart import HartPipeline
from arvision.serving.app import create_app

PROMPTS = ["a red circle", "a blue square left of a green star", "a small yellow triangle", "a purple ring"]


async def serve(pipe: HartPipeline, clients: int, max_batch: int) -> tuple[float, list[float], list[np.ndarray]]:
    app = create_app(pipe, max_batch=max_batch, max_wait_s=0.05, max_pending=clients)

    async def one(http: httpx.AsyncClient, i: int) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        response = await http.post("/v1/generate", json={"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}, timeout=600)
        response.raise_for_status()
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))
        return time.perf_counter() - started, image

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        await one(http, 0)  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(one(http, i) for i in range(clients)))
        wall = time.perf_counter() - started
    app.state.queue.close()
    return wall, [latency for latency, _ in results], [image for _, image in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = HartPipeline.from_pretrained(default_model_path("hart"), device=args.device)
    print(f"default HART, {args.clients} concurrent one-image requests, device {args.device}, {args.threads} threads")
    baseline_wall, baseline_images = None, None
    for max_batch in (1, 4, 8):
        wall, latencies, images = asyncio.run(serve(pipe, args.clients, max_batch))
        mean = statistics.mean(latencies)
        line = f"max_batch {max_batch}: {args.clients / wall:6.2f} images/s, latency mean {mean:.2f} s, "
        line += f"max {max(latencies):.2f} s"
        if baseline_wall is None:
            baseline_wall, baseline_images = wall, images
        else:
            diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(images, baseline_images))
            line += f"; {baseline_wall / wall:.2f}x the baseline's throughput, max pixel difference {diff}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
