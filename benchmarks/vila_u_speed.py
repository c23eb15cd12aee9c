"""CPU speed of VILA-U on small models: seconds per generated image and per understanding answer
(one question at a time, and 16 at once with ``describe_batch`` against the same 16 one by one).

    PYTHONPATH=src python benchmarks/vila_u_speed.py [--model FOLDER] [--threads N]

Without ``--model`` it uses the parity fixture (32 px, 4x4 tokens, D=4, a 2-layer 64-wide LLM).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import PIL.Image
import torch

from arvision.pipelines.vila_u import VilaUPipeline

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vilau-tiny-a"


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(FIXTURE))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = VilaUPipeline.from_pretrained(args.model)
    pipe.progress = False
    size = pipe.config.tower.image_size
    image = PIL.Image.new("RGB", (size, size), (200, 120, 40))
    tokens = pipe.config.tower.grid**2

    image_s = _timed(lambda: pipe.generate_image("A red panda sitting on a tree.", n=1, seed=0), args.repeats)
    batch_s = _timed(lambda: pipe.generate_image("A red panda sitting on a tree.", n=4, seed=0), args.repeats)
    answer_s = _timed(
        lambda: pipe.describe(image, "What is in the image?", temperature=0.0, max_new_tokens=32), args.repeats
    )
    questions = [f"What is in the image? Answer in {k + 1} words." for k in range(16)]
    greedy = {"temperature": 0.0, "max_new_tokens": 16}
    one_by_one_s = _timed(lambda: [pipe.describe(image, q, **greedy) for q in questions], args.repeats)
    batched_s = _timed(lambda: pipe.describe_batch([image] * len(questions), questions, **greedy), args.repeats)
    print(f"threads={args.threads} model={args.model} ({tokens} tokens/image, D={pipe.config.tower.depth})")
    print(f"generate_image n=1: {image_s:.3f} s/image ({image_s / tokens * 1000:.1f} ms/token)")
    print(f"generate_image n=4: {batch_s / 4:.3f} s/image")
    print(f"describe (<= 32 new tokens, greedy): {answer_s:.3f} s/answer")
    print(
        f"16 questions (<= 16 new tokens, greedy): one by one {one_by_one_s:.3f} s, describe_batch {batched_s:.3f} s"
        f" ({one_by_one_s / batched_s:.1f}x)"
    )


if __name__ == "__main__":
    main()
