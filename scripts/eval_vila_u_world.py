"""Colour/shape question accuracy of a VILA-U folder on procedural-world scenes (held-out and seen pairs).

python scripts/eval_vila_u_world.py --model src/arvision/defaults/vila-u [--scenes 50] [--tower-scenes 200]
    [--probe-steps 1500 [--probe-scenes 4000] [--probe-unnamed 8000] [--probe-centred]]

``--tower-scenes N`` also reports what the vision tower's codes keep: N single-object scenes per split go
through the tower (encode to codes, decode) and colour and shape are read back from the reconstructions
by arvision.eval.shapes. ``--probe-steps N`` reports what can be read from the features the LLM gets (the
tower's z_q): an attention probe (arvision.eval.feature_probe) trained N steps on ``--probe-scenes``
train-split scenes, next to the same probe trained on the images' own pixels (patches of the tower's patch
size), the baseline that says how much of what is readable the tower keeps. ``--probe-unnamed N`` adds N
train scenes whose object is in an unnamed colour (shape supervision with no colour to tie it to);
``--probe-centred`` also probes the tower's tokens with each image's mean token subtracted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from arvision.cli import at_least, report_errors
from arvision.cli.common import add_device_arguments, torch_dtype
from arvision.data.world import single_object_scenes
from arvision.eval.feature_probe import attribute_probe, centred, pixel_patches
from arvision.eval.shapes import single_object_accuracy, single_object_targets
from arvision.eval.vila_u_world import world_vqa_accuracy
from arvision.pipelines.vila_u import VilaUPipeline


def tower_read_back(pipe: VilaUPipeline, scenes: int) -> dict:
    size, report = pipe.config.tower.image_size, {}
    for name, split in (("held_out", "heldout"), ("seen", "val")):
        samples = single_object_scenes(size, split, scenes)
        images = [s.image for s in samples]
        targets = single_object_targets(s.graph for s in samples)
        report[name] = {
            "originals": single_object_accuracy(images, targets),
            "reconstructions": single_object_accuracy(pipe.reconstruct(images), targets),
        }
    return report


def llm_input_features(pipe: VilaUPipeline):
    """pixels [B, 3, R, R] -> the tower's z_q [B, g*g, C], what the projector hands the LLM."""

    def encode(pixels):
        return pipe.model.vision_tower.encode(pixels)[1].flatten(1, 2)

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--scenes", type=at_least(1), default=50, help="scenes per split (all their colour/shape questions)"
    )
    parser.add_argument("--max-objects", type=at_least(1), default=2, help="scenes of 1..N objects (the bar's set: 2)")
    parser.add_argument(
        "--tower-scenes", type=at_least(0), default=0, metavar="N", help="also read back N tower round trips"
    )
    parser.add_argument(
        "--probe-steps", type=at_least(0), default=0, metavar="N", help="also probe the tower's features"
    )
    parser.add_argument(
        "--probe-scenes", type=at_least(1), default=4000, help="train-split scenes the probe learns from"
    )
    parser.add_argument(
        "--probe-unnamed", type=at_least(0), default=0, help="unnamed-colour scenes added to its train set"
    )
    parser.add_argument("--probe-centred", action="store_true", help="also probe the tokens minus their image mean")
    parser.add_argument("--skip-vqa", action="store_true", help="only the tower reports (a tower-only folder)")
    add_device_arguments(parser, None, "weights dtype (default: the stored one)")
    args = parser.parse_args()

    pipe = VilaUPipeline.from_pretrained(args.model, device=args.device, dtype=torch_dtype(args.dtype))

    def answer(images, questions, chunk=64):
        return [
            reply
            for start in range(0, len(questions), chunk)
            for reply in pipe.describe_batch(
                images[start : start + chunk], questions[start : start + chunk], temperature=0, max_new_tokens=8
            )
        ]

    start = time.time()
    size = pipe.config.tower.image_size
    report = {} if args.skip_vqa else world_vqa_accuracy(answer, size, scenes=args.scenes, max_objects=args.max_objects)
    if args.tower_scenes:
        report["tower_read_back"] = tower_read_back(pipe, args.tower_scenes)
    if args.probe_steps:
        patch = int(pipe.config.tower.siglip["vision_config"]["patch_size"])
        readers = {"tower": llm_input_features(pipe), "pixels": pixel_patches(patch)}
        if args.probe_centred:
            readers["tower_centred"] = centred(readers["tower"])
        report["feature_probe"] = {
            name: attribute_probe(
                encode, size, train_scenes=args.probe_scenes, steps=args.probe_steps, unnamed_scenes=args.probe_unnamed
            )
            for name, encode in readers.items()
        }
    report.update(model=str(args.model), seconds=round(time.time() - start, 1))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
