"""What a VILA-U vision tower's codes keep of colour and shape: single-object world scenes go through the
tower (encode to codes, decode) and the reconstructions are read back by arvision.eval.shapes.

python scripts/eval_vila_u_tower.py --model src/arvision/defaults/vila-u [--scenes 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arvision.cli.common import add_device_arguments, torch_dtype
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.eval.shapes import single_object_accuracy
from arvision.pipelines.vila_u import VilaUPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=200, help="single-object scenes per split")
    add_device_arguments(parser, None, "weights dtype (default: float32)")
    args = parser.parse_args()

    pipe = VilaUPipeline.from_pretrained(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    size = pipe.config.tower.image_size
    start, report = time.time(), {}
    for name, split in (("held_out", "heldout"), ("seen", "val")):
        world = ProceduralWorld(WorldConfig(image_size=size, max_objects=1), split=split)
        samples = [world.sample(i) for i in range(args.scenes)]
        images = [s.image for s in samples]
        targets = [(s.graph.objects[0].colour, s.graph.objects[0].shape) for s in samples]
        report[name] = {
            "originals": single_object_accuracy(images, targets),
            "reconstructions": single_object_accuracy(pipe.reconstruct(images), targets),
        }
    report.update(model=str(args.model), size=size, seconds=round(time.time() - start, 1))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
