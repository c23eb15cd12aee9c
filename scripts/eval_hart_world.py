"""Shape-and-colour accuracy of a HART pipeline on single-object world prompts (held-out and seen pairs).

python scripts/eval_hart_world.py --model src/arvision/defaults/hart [--size 64] [--grid grid.png]
    [--cfg 3] [--top-k 20]   (sampling; default: the model folder's)
    [--first-seed 2]   (seeds 2, 3 instead of 0, 1)
    [--caption-use 64]   (also: per-scale cross-entropy of 64 real scenes with right / shuffled / no captions)
    [--images-per-prompt 0]   (skips the generation accuracy)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from arvision.cli import at_least, report_errors
from arvision.cli.common import add_device_arguments, torch_dtype
from arvision.data.world import single_object_scenes
from arvision.eval.caption_use import caption_use
from arvision.eval.hart_world import prompt_sets, world_shape_accuracy
from arvision.imaging import make_grid, pil_to_tensor
from arvision.models.hart_sampler import Condition
from arvision.pipelines.hart import HartPipeline
from arvision.training.latent_cache import tokenize_targets


def caption_use_report(pipe: HartPipeline, scenes: int, size: int) -> dict:
    """Per-scale cross-entropy of single-object val scenes under right, shuffled and no captions."""
    samples = single_object_scenes(size, "val", scenes)
    dtype = next(pipe.transformer.parameters()).dtype
    images = pil_to_tensor([s.image for s in samples]).to(pipe.device, dtype)
    with torch.no_grad():
        indices, _ = tokenize_targets(pipe.tokenizer, images)
    enc = pipe.encode_prompts([s.captions[0] for s in samples])
    cond = Condition(enc.hidden.to(dtype), enc.mask, enc.position_ids)
    use = caption_use(pipe.transformer, pipe.tokenizer.quantize, indices, cond)
    rounded = {k: [round(v, 3) for v in getattr(use, k)] for k in ("right", "shuffled", "unconditional")}
    return {"patch_nums": list(use.patch_nums), **rounded}


FROM_FOLDER = object()  # --top-k not given: the model folder's top-k


def top_k_option(value: str) -> int | None:
    """A positive number, or None for 'official' (HART's per-scale schedule)."""
    if value == "official":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'official', got {value!r}")
    return int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--size", type=at_least(1), default=64)
    parser.add_argument("--cfg", type=float, help="guidance scale (default: the model folder's)")
    parser.add_argument(
        "--top-k",
        type=top_k_option,
        default=FROM_FOLDER,
        help="top-k of the token sampling: a number, or 'official' for HART's 600/300 schedule "
        "(default: the model folder's)",
    )
    parser.add_argument(
        "--diffusion-steps", type=at_least(1), help="residual diffusion sampling steps (default: the model's)"
    )
    parser.add_argument("--images-per-prompt", type=at_least(0), default=2, help="0 skips the generation accuracy")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. + images-per-prompt - 1")
    parser.add_argument("--grid", type=Path, help="also save the held-out images of the first seed as one PNG grid")
    parser.add_argument(
        "--caption-use", type=at_least(0), default=0, metavar="N", help="also report caption use on N scenes"
    )
    add_device_arguments(parser, None, "weights dtype (default: float32)")
    args = parser.parse_args()

    pipe = HartPipeline.from_pretrained(args.model, device=args.device, torch_dtype=torch_dtype(args.dtype))
    # The pipeline's defaults, which calls that name no cfg / top-k use.
    if args.cfg is not None:
        pipe.guidance_scale = args.cfg
    if args.top_k is not FROM_FOLDER:
        pipe.top_k = args.top_k

    def generate(prompts, seed):
        return pipe(
            prompts, height=args.size, width=args.size, seed=seed, diffusion_steps=args.diffusion_steps, progress=False
        ).images

    start = time.time()
    report = {}
    if args.images_per_prompt > 0:
        report = world_shape_accuracy(generate, args.images_per_prompt, first_seed=args.first_seed)
    if args.grid:
        held_out = [case.prompt for case in prompt_sets()["held_out"]]
        make_grid(generate(held_out, args.first_seed)).save(args.grid)
    if args.caption_use:
        report["caption_use"] = caption_use_report(pipe, args.caption_use, args.size)
    report["seconds"] = round(time.time() - start, 1)
    report.update(
        model=str(args.model),
        size=args.size,
        cfg=pipe.guidance_scale,
        top_k=pipe.top_k or "official",
        diffusion_steps=args.diffusion_steps or pipe.transformer.diffloss.sample_schedule.num_steps,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
