"""Hybrid vs discrete-only reconstruction of a tokenizer on the held-out astronaut photo and on
procedural-world images (the paper's central tokenizer claim, at small scale).

    python scripts/eval_tokenizer.py --model src/arvision/defaults/tokenizer
    python scripts/eval_tokenizer.py --model src/arvision/defaults/hart/tokenizer --size 64 --scale-readback

``--scale-readback`` adds which scales carry an object: the single-object prompts' reference scenes of
every colour-shape pair, decoded from the codes of the first K scales, read back for colour and shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from arvision.cli import at_least, report_errors
from arvision.cli.common import add_device_argument
from arvision.data.photos import bundled_photo
from arvision.data.render import render_scene
from arvision.data.scenes import COLOURS, SHAPES
from arvision.data.world import ProceduralWorld, WorldConfig, single_object_prompts
from arvision.eval.reconstruction import readback_by_scales, reconstruction_metrics
from arvision.eval.shapes import single_object_targets
from arvision.imaging import pil_to_tensor, resize_center_crop
from arvision.tokenizers.hart_tokenizer import HybridTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--size", type=at_least(1), default=256)
    parser.add_argument("--world-images", type=at_least(1), default=16)
    parser.add_argument("--scale-readback", action="store_true", help="colour/shape read back per scale prefix")
    add_device_argument(parser)
    args = parser.parse_args()

    tokenizer = HybridTokenizer.from_pretrained(args.model, device=args.device)
    astronaut = pil_to_tensor(resize_center_crop(bundled_photo("astronaut"), args.size))
    world = ProceduralWorld(WorldConfig(image_size=args.size), seed=1234, split="val")
    scenes = torch.cat([pil_to_tensor(world.sample(i).image) for i in range(args.world_images)])
    report = {
        "model": str(args.model),
        "size": args.size,
        "astronaut": reconstruction_metrics(tokenizer, astronaut),
        "world_val": reconstruction_metrics(tokenizer, scenes),
    }
    if args.scale_readback:
        cases = single_object_prompts([(colour, shape) for colour in COLOURS for shape in SHAPES])
        images = [render_scene(case.graph, args.size) for case in cases]
        targets = single_object_targets(case.graph for case in cases)
        report["scale_readback"] = readback_by_scales(tokenizer, images, targets)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
