"""Hybrid vs discrete-only reconstruction of a tokenizer on the held-out astronaut photo and on
procedural-world images (the paper's central tokenizer claim, at small scale).

    python scripts/eval_tokenizer.py --model src/arvision/defaults/tokenizer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from arvision.data.photos import bundled_photo
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.eval.reconstruction import reconstruction_metrics
from arvision.imaging import pil_to_tensor, resize_center_crop
from arvision.tokenizers.hart_tokenizer import HybridTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--world-images", type=int, default=16)
    args = parser.parse_args()

    tokenizer = HybridTokenizer.from_pretrained(args.model)
    astronaut = pil_to_tensor(resize_center_crop(bundled_photo("astronaut"), args.size))
    world = ProceduralWorld(WorldConfig(image_size=args.size), seed=1234, split="val")
    scenes = torch.cat([pil_to_tensor(world.sample(i).image) for i in range(args.world_images)])
    report = {
        "model": str(args.model),
        "size": args.size,
        "astronaut": reconstruction_metrics(tokenizer, astronaut),
        "world_val": reconstruction_metrics(tokenizer, scenes),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
