"""``arvision eval hart-world|vila-u-world|tokenizer --model FOLDER``: the evaluations of the embedded defaults'
model cards, and ``arvision eval fid|clip-score``, the papers' generation metrics; JSON on stdout.

* ``hart-world``: shape-and-colour accuracy of a HART pipeline on single-object world prompts (held-out and
  seen colour-shape pairs); ``--caption-use N`` adds the per-scale cross-entropy of N real scenes with the
  right, shuffled and no captions; ``--prefix-scales K ...`` gives the pipeline the true codes of the first K
  scales of the prompts' reference renders and reads back what it draws from there (which scales lose the object).
* ``vila-u-world``: colour/shape question accuracy of a VILA-U folder on world scenes; ``--tower-scenes N``
  reads colour and shape back from N tower round trips per split; ``--probe-steps N`` trains an attention
  probe on the tower's z_q (what the LLM gets) and the same probe on the pixels (``--probe-scenes``,
  ``--probe-unnamed`` unnamed-colour scenes, ``--probe-centred`` also the tokens minus their image's mean).
* ``fid``: FID and KID between the images of two folders (or listings), with the FID Inception-v3 read from
  its TorchScript file (``--inception``).
* ``clip-score``: the mean CLIP score of the images ``arvision generate --prompts-file`` drew against their
  prompts, with a local CLIP folder (``--clip``).
* ``tokenizer``: hybrid vs discrete-only reconstruction on the held-out astronaut photo and world images;
  ``--scale-readback`` decodes every colour-shape pair's reference scene from the codes of its first K scales
  and reads colour and shape back.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from arvision.cli import at_least
from arvision.cli.common import (
    add_device_argument,
    add_device_arguments,
    check_image_output,
    check_output_file,
    check_tokenizer_size,
    per_image_seeds,
    torch_dtype,
)
from arvision.errors import InputError

FROM_FOLDER = object()  # --top-k not given: the model folder's top-k


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on the procedural world (JSON report)")
    which = p.add_subparsers(dest="evaluation", required=True)
    _add_hart_world(which.add_parser("hart-world", help="HART: right shape in the right colour, per pair"))
    _add_vila_u_world(which.add_parser("vila-u-world", help="VILA-U: colour/shape questions, per pair"))
    _add_tokenizer(which.add_parser("tokenizer", help="a hybrid tokenizer: hybrid vs discrete reconstruction"))
    _add_fid(which.add_parser("fid", help="FID and KID between two image folders (Inception-v3 features)"))
    _add_clip_score(which.add_parser("clip-score", help="CLIP score of the images of generate --prompts-file"))


def _report(report: dict) -> int:
    print(json.dumps(report, indent=2))
    return 0


# ----- hart-world -----


def top_k_option(value: str) -> int | None:
    """A positive number, or None for 'official' (HART's per-scale schedule)."""
    if value == "official":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'official', got {value!r}")
    return int(value)


def _add_hart_world(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--size", type=at_least(1), default=64)
    p.add_argument("--cfg", type=float, help="guidance scale (default: the model folder's)")
    p.add_argument(
        "--top-k",
        type=top_k_option,
        default=FROM_FOLDER,
        help="top-k of the token sampling: a number, or 'official' for HART's 600/300 schedule "
        "(default: the model folder's)",
    )
    p.add_argument(
        "--guidance-schedule", choices=("linear", "constant"), help="guidance over the scales (default: the folder's)"
    )
    p.add_argument("--diffusion-steps", type=at_least(1), help="residual diffusion steps (default: the model's)")
    p.add_argument("--images-per-prompt", type=at_least(0), default=2, help="0 skips the generation accuracy")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. + images-per-prompt - 1")
    p.add_argument("--grid", type=Path, help="also save the held-out images of the first seed as one PNG grid")
    p.add_argument("--caption-use", type=at_least(0), default=0, metavar="N", help="also caption use on N scenes")
    p.add_argument(
        "--prefix-scales",
        type=at_least(0),
        nargs="+",
        metavar="K",
        help="also read back images drawn from the reference renders' true codes of the first K scales",
    )
    add_device_arguments(p, None, "weights dtype (default: float32)")
    p.set_defaults(func=run_hart_world)


def caption_use_report(pipe, scenes: int, size: int) -> dict:
    """Per-scale cross-entropy of single-object val scenes under right, shuffled and no captions."""
    from arvision.data.world import single_object_scenes
    from arvision.eval.caption_use import caption_use
    from arvision.imaging import pil_to_tensor
    from arvision.models.hart_sampler import Condition
    from arvision.training.latent_cache import tokenize_targets

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


def run_hart_world(args: argparse.Namespace) -> int:
    from arvision.eval.hart_world import prefix_readback, prompt_sets, world_shape_accuracy
    from arvision.imaging import make_grid
    from arvision.pipelines.hart import HartPipeline

    # seeds first-seed .. + images-per-prompt - 1 (the grid and the prefix read-back draw one at least)
    per_image_seeds(args.first_seed, max(args.images_per_prompt, 1), "--first-seed")
    if args.grid is not None:
        check_image_output(args.grid, "--grid")  # before the evaluation, which a bad output would waste
    pipe = HartPipeline.from_pretrained(args.model, device=args.device, torch_dtype=torch_dtype(args.dtype))
    # The pipeline's defaults, which calls that name no cfg / top-k use.
    if args.cfg is not None:
        pipe.guidance_scale = args.cfg
    if args.top_k is not FROM_FOLDER:
        pipe.top_k = args.top_k
    if args.guidance_schedule is not None:
        pipe.guidance_schedule = args.guidance_schedule

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
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        make_grid(generate(held_out, args.first_seed)).save(args.grid)
    if args.caption_use:
        report["caption_use"] = caption_use_report(pipe, args.caption_use, args.size)
    if args.prefix_scales:
        report["prefix_readback"] = prefix_readback(
            pipe, args.prefix_scales, max(args.images_per_prompt, 1), args.first_seed, args.size
        )
    report["seconds"] = round(time.time() - start, 1)
    report.update(
        model=str(args.model),
        size=args.size,
        cfg=pipe.guidance_scale,
        guidance_schedule=pipe.guidance_schedule,
        top_k=pipe.top_k or "official",
        diffusion_steps=args.diffusion_steps or pipe.transformer.diffloss.sample_schedule.num_steps,
    )
    return _report(report)


# ----- vila-u-world -----


def _add_vila_u_world(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--scenes", type=at_least(1), default=50, help="scenes per split (all their colour/shape questions)")
    p.add_argument("--max-objects", type=at_least(1), default=2, help="scenes of 1..N objects (the bar's set: 2)")
    p.add_argument("--tower-scenes", type=at_least(0), default=0, metavar="N", help="also N tower round trips")
    p.add_argument("--probe-steps", type=at_least(0), default=0, metavar="N", help="also probe the tower's features")
    p.add_argument("--probe-scenes", type=at_least(1), default=4000, help="train-split scenes the probe learns from")
    p.add_argument("--probe-unnamed", type=at_least(0), default=0, help="unnamed-colour scenes added to its train set")
    p.add_argument("--probe-centred", action="store_true", help="also probe the tokens minus their image mean")
    p.add_argument("--skip-vqa", action="store_true", help="only the tower reports (a tower-only folder)")
    add_device_arguments(p, None, "weights dtype (default: the stored one)")
    p.set_defaults(func=run_vila_u_world)


def tower_read_back(pipe, scenes: int) -> dict:
    """Colour and shape read back from the originals and from the tower's round trips, per split."""
    from arvision.data.world import single_object_scenes
    from arvision.eval.shapes import single_object_accuracy, single_object_targets

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


def llm_input_features(pipe):
    """pixels [B, 3, R, R] -> the tower's z_q [B, g*g, C], what the projector hands the LLM."""

    def encode(pixels):
        return pipe.model.vision_tower.encode(pixels)[1].flatten(1, 2)

    return encode


def run_vila_u_world(args: argparse.Namespace) -> int:
    from arvision.eval.feature_probe import attribute_probe, centred, pixel_patches
    from arvision.eval.vila_u_world import world_vqa_accuracy
    from arvision.pipelines.vila_u import VilaUPipeline

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
    return _report(report)


# ----- tokenizer -----


def _add_tokenizer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--size", type=at_least(1), default=256)
    p.add_argument("--world-images", type=at_least(1), default=16)
    p.add_argument("--scale-readback", action="store_true", help="colour/shape read back per scale prefix")
    add_device_argument(p)
    p.set_defaults(func=run_tokenizer)


def run_tokenizer(args: argparse.Namespace) -> int:
    from arvision.data.photos import bundled_photo
    from arvision.data.world import ProceduralWorld, WorldConfig
    from arvision.eval.hart_world import reference_scenes
    from arvision.eval.reconstruction import readback_by_scales, reconstruction_metrics
    from arvision.imaging import pil_to_tensor, resize_center_crop
    from arvision.tokenizers.hart_tokenizer import HybridTokenizer

    tokenizer = HybridTokenizer.from_pretrained(args.model, device=args.device)
    check_tokenizer_size(args.size, tokenizer.config.downsample)
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
        _, images, targets = reference_scenes(args.size)
        report["scale_readback"] = readback_by_scales(tokenizer, images, targets)
    return _report(report)


# ----- fid -----


def _add_fid(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, required=True, help="generated images: a folder, or a .jsonl/.csv listing")
    p.add_argument(
        "--reference",
        type=Path,
        required=True,
        help="reference (real) images, the same forms, or their features (--save-reference-features writes them)",
    )
    p.add_argument(
        "--save-reference-features",
        type=Path,
        metavar="FILE.safetensors",
        help="also write the reference images' features, to pass as --reference next time",
    )
    p.add_argument(
        "--inception",
        type=Path,
        required=True,
        help="the FID Inception-v3 as TorchScript (inception-2015-12-05.pt, as clean-fid and StyleGAN3 load it)",
    )
    p.add_argument("--size", type=at_least(1), default=299, help="images are resized whole to this, as clean-fid does")
    p.add_argument("--batch-size", type=at_least(1), default=50)
    p.add_argument("--workers", type=at_least(0), default=0, help="processes decoding the images (0: this one)")
    p.add_argument("--kid-subsets", type=at_least(1), default=100, help="KID: random subsets averaged")
    p.add_argument(
        "--kid-subset-size", type=at_least(2), default=1000, help="KID: images per subset (at most the smaller set)"
    )
    p.add_argument("--seed", type=int, default=0, help="KID's subset draws")
    add_device_argument(p)
    p.set_defaults(func=run_fid)


def run_fid(args: argparse.Namespace) -> int:
    from arvision.eval.fid import TorchScriptInception, distances, image_features, load_features, save_features

    saved_reference = args.reference.suffix.lower() == ".safetensors"
    if args.save_reference_features is not None:
        if saved_reference:
            raise InputError("--reference is already a features file: --save-reference-features has nothing to save")
        if args.save_reference_features.suffix.lower() != ".safetensors":  # --reference only takes that back
            raise InputError(f"--save-reference-features must end in .safetensors, got {args.save_reference_features}")
        check_output_file(args.save_reference_features, "--save-reference-features")  # before reading the images
    network = TorchScriptInception(args.inception)
    reading = {"size": args.size, "batch_size": args.batch_size, "num_workers": args.workers, "device": args.device}
    sets = {}
    if saved_reference:  # checked against this network and size before the images are read
        sets["reference"] = load_features(args.reference, network_digest=network.digest, size=args.size)
    sets["images"] = image_features(args.images, network, **reading)
    if not saved_reference:
        sets["reference"] = image_features(args.reference, network, **reading)
    if args.save_reference_features is not None:
        save_features(sets["reference"], args.save_reference_features, network_digest=network.digest, size=args.size)
    report = distances(
        sets["images"].features,
        sets["reference"].features,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        seed=args.seed,
    )
    for name, found in sets.items():
        report[name] = {"path": str(getattr(args, name)), "count": len(found.features), "skipped": found.skipped}
    return _report({"inception": str(args.inception), "size": args.size, **report})


# ----- clip-score -----


def _add_clip_score(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images", type=Path, required=True, help="the folder `arvision generate --prompts-file` wrote (00000.png ...)"
    )
    p.add_argument("--prompts-file", type=Path, required=True, help="the prompts it was drawn for, one per line")
    p.add_argument("--clip", type=Path, required=True, help="a local transformers CLIP folder")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    add_device_argument(p)
    p.set_defaults(func=run_clip_score)


def run_clip_score(args: argparse.Namespace) -> int:
    from arvision.data.prompt_files import paired_images, read_prompts
    from arvision.eval.clip_score import clip_scores, load_clip

    pairs = paired_images(args.images, read_prompts(args.prompts_file))
    clip = load_clip(args.clip, args.device)
    scores = clip_scores(clip, [path for path, _ in pairs], [prompt for _, prompt in pairs], batch_size=args.batch_size)
    return _report({"clip": str(args.clip), "clip_score": round(float(scores.mean()), 4), "images": len(pairs)})
