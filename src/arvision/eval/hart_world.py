"""How well a text-to-image pipeline draws single world objects: the right shape in the right colour.

Two prompt sets: the compositional hold-out (colour-shape pairs the world's train split never shows)
and the seen pairs (every other pair). Each prompt is generated ``images_per_prompt`` times with fixed
seeds and read back by :mod:`arvision.eval.shapes`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from arvision.data.render import render_scene
from arvision.data.scenes import COLOURS, SHAPES
from arvision.data.world import PromptCase, WorldConfig, single_object_prompts
from arvision.errors import InputError
from arvision.eval.metrics import wilson_interval
from arvision.eval.shapes import detection_accuracy, main_object, single_object_accuracy, single_object_targets
from arvision.imaging import pil_to_tensor, tensor_to_pil

Generate = Callable[[Sequence[str], int], list[Image.Image]]


def prompt_sets(config: WorldConfig | None = None) -> dict[str, list[PromptCase]]:
    """The single-object prompts (:func:`~arvision.data.world.single_object_prompts`) of the held-out
    colour-shape pairs (``held_out``) and of every other pair (``seen``)."""
    config = config or WorldConfig()
    held_out = set(config.heldout_combos)
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out]
    return {"held_out": single_object_prompts(sorted(held_out)), "seen": single_object_prompts(seen)}


def world_shape_accuracy(
    generate: Generate, images_per_prompt: int = 2, config: WorldConfig | None = None, first_seed: int = 0
) -> dict:
    """``generate(prompts, seed)`` -> one image per prompt, for seeds ``first_seed ..
    first_seed + images_per_prompt - 1``. Returns, per prompt set, the accuracies (and the 95% Wilson
    interval of "both", ``both_interval_95``), the image count, ``by_shape``: for each prompted shape, the
    fraction drawn right in the right colour (where a model's failures concentrate), and ``drawn``: for each
    "colour shape" pair, how often each shape was read back ("none": no object found), which shows what a
    model draws instead of a pair it never saw."""
    report = {}
    for name, cases in prompt_sets(config).items():
        prompts = [case.prompt for case in cases]
        targets = single_object_targets(case.graph for case in cases) * images_per_prompt
        seeds = range(first_seed, first_seed + images_per_prompt)
        images = [image for seed in seeds for image in generate(prompts, seed)]
        detected = [main_object(image) for image in images]
        accuracy = detection_accuracy(detected, targets)
        drawn: dict[str, Counter] = defaultdict(Counter)
        by_shape: dict[str, list[int]] = defaultdict(list)  # the images prompted with each shape
        for index, ((colour, shape), found) in enumerate(zip(targets, detected, strict=True)):
            drawn[f"{colour} {shape}"][found.shape if found else "none"] += 1
            by_shape[shape].append(index)
        report[name] = {
            **accuracy,
            "both_interval_95": wilson_interval(round(accuracy["both"] * len(images)), len(images)),
            "images": len(images),
            "by_shape": {
                shape: detection_accuracy([detected[i] for i in picked], [targets[i] for i in picked])["both"]
                for shape, picked in sorted(by_shape.items())
            },
            "drawn": {pair: dict(counts.most_common()) for pair, counts in sorted(drawn.items())},
        }
    return report


def reference_scenes(size: int) -> tuple[list[PromptCase], list[Image.Image], list[tuple[str, str]]]:
    """The single-object prompts of every colour-shape pair (held-out and seen together), their reference
    renders at ``size`` and (colour, shape) targets: what the tokenizer and prefix read-backs decode."""
    cases = single_object_prompts([(colour, shape) for colour in COLOURS for shape in SHAPES])
    return cases, [render_scene(case.graph, size) for case in cases], single_object_targets(c.graph for c in cases)


@torch.no_grad()
def prefix_readback(
    pipe: Any, prefix_scales: Sequence[int], images_per_prompt: int = 2, first_seed: int = 0, size: int = 64
) -> dict[str, dict[str, float]]:
    """Which scales of a text-to-image HART (a :class:`~arvision.pipelines.hart.HartPipeline`) lose the object.

    The reference renders of :func:`reference_scenes` (those of ``arvision eval tokenizer --scale-readback``)
    are tokenized; for each K of ``prefix_scales`` the pipeline
    is given the true codes of the first K scales, draws the rest with its sampling (seeds as in
    :func:`world_shape_accuracy`), and the images are read back. Per K: the right shape in the right colour
    with the residual head (``both``) and without it (``both_discrete_only``). ``references``: the renders' own
    codes decoded without (``discrete``) and with their true residual (``hybrid``), what a perfect generator
    would reach.
    """
    cases, renders, targets = reference_scenes(size)
    prompts = [case.prompt for case in cases]
    tokenizer = pipe.tokenizer
    device = next(tokenizer.parameters()).device
    encoded = tokenizer.encode(pil_to_tensor(renders).to(device))
    for scales in prefix_scales:  # before any of the slow generation
        if not 0 <= scales <= len(encoded.indices):
            raise InputError(f"prefix scales must be within 0..{len(encoded.indices)}, got {scales}")
    references = {
        "discrete": single_object_accuracy(
            tensor_to_pil(tokenizer.decode(tokenizer.indices_to_latent(encoded.indices))), targets
        ),
        "hybrid": single_object_accuracy(tensor_to_pil(tokenizer.decode(encoded.latent)), targets),
    }
    report: dict[str, Any] = {"references": {k: v["both"] for k, v in references.items()}}
    seeds = range(first_seed, first_seed + images_per_prompt)
    for scales in prefix_scales:
        result = {}
        for key, discrete_only in (("both", False), ("both_discrete_only", True)):
            images = [
                image
                for seed in seeds
                for image in pipe(
                    prompts,
                    height=size,
                    width=size,
                    seed=seed,
                    prefix_indices=encoded.indices[:scales],
                    discrete_only=discrete_only,
                    progress=False,
                ).images
            ]
            result[key] = single_object_accuracy(images, targets * images_per_prompt)["both"]
        report[f"prefix_{scales}"] = result
    return report
