"""Colour/shape question accuracy of a VILA-U folder on procedural-world scenes (held-out and seen pairs).

python scripts/eval_vila_u_world.py --model src/arvision/defaults/vila-u [--scenes 50]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arvision.cli.common import add_device_arguments, torch_dtype
from arvision.eval.vila_u_world import world_vqa_accuracy
from arvision.pipelines.vila_u import VilaUPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=50, help="scenes per split (all their colour/shape questions)")
    add_device_arguments(parser, None, "weights dtype (default: float32)")
    args = parser.parse_args()

    pipe = VilaUPipeline.from_pretrained(args.model, device=args.device, dtype=torch_dtype(args.dtype))

    def answer(images, questions):
        return [pipe.describe(im, q, temperature=0, max_new_tokens=8) for im, q in zip(images, questions)]

    start = time.time()
    report = world_vqa_accuracy(answer, pipe.config.tower.image_size, scenes=args.scenes)
    report.update(model=str(args.model), seconds=round(time.time() - start, 1))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
