"""Shape-and-colour accuracy of a HART pipeline on single-object world prompts (held-out and seen pairs).

python scripts/eval_hart_world.py --model src/arvision/defaults/hart [--size 64] [--cfg 4.5] [--grid grid.png]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arvision.cli.common import add_device_arguments, torch_dtype
from arvision.eval.hart_world import prompt_sets, world_shape_accuracy
from arvision.imaging import make_grid
from arvision.pipelines.hart import HartPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cfg", type=float, default=4.5)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--grid", type=Path, help="also save the held-out images of the first seed as one PNG grid")
    add_device_arguments(parser, None, "weights dtype (default: float32)")
    args = parser.parse_args()

    pipe = HartPipeline.from_pretrained(args.model, device=args.device, torch_dtype=torch_dtype(args.dtype))

    def generate(prompts, seed):
        out = pipe(prompts, height=args.size, width=args.size, guidance_scale=args.cfg, seed=seed, progress=False)
        return out.images

    start = time.time()
    report = world_shape_accuracy(generate, args.images_per_prompt)
    if args.grid:
        held_out = [case.prompt for case in prompt_sets()["held_out"]]
        make_grid(generate(held_out, 0)).save(args.grid)
    report["seconds"] = round(time.time() - start, 1)
    report.update(model=str(args.model), size=args.size, cfg=args.cfg)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
