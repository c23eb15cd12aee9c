"""How well an image-understanding model answers colour and shape questions about procedural-world scenes.

Two question sets, both read off exact scene graphs: ``held_out`` asks about scenes of the world's
``heldout`` split (each shows a colour-shape pair the train split never shows), ``seen`` about scenes of
the ``val`` split. Only colour and shape questions count ("What color is the star?", "What shape is the
red object?"); an answer is right when its first word is the expected one, case and punctuation aside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from arvision.data.captions import scene_vqa
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.errors import InputError
from arvision.eval.metrics import wilson_interval

Answer = Callable[[Sequence[Image.Image], Sequence[str]], list[str]]
COLOUR_SHAPE_PREFIXES = ("What color is the", "What shape is the")


@dataclass(frozen=True)
class VQACase:
    image: Image.Image
    question: str
    answer: str


def colour_shape_cases(split: str, scenes: int, image_size: int, max_objects: int = 2, seed: int = 0) -> list[VQACase]:
    """Every colour/shape question about the first ``scenes`` scenes of ``split``."""
    if scenes < 1:
        raise InputError(f"scenes must be >= 1, got {scenes}")
    world = ProceduralWorld(WorldConfig(image_size=image_size, max_objects=max_objects), seed=seed, split=split)
    cases = []
    for index in range(scenes):
        sample = world.sample(index)
        for question, answer in scene_vqa(sample.graph):
            if question.startswith(COLOUR_SHAPE_PREFIXES) and "background" not in question:
                cases.append(VQACase(sample.image, question, answer))
    return cases


def first_word(text: str) -> str:
    words = text.strip().lower().split()
    return words[0].strip(".,!?;:") if words else ""


def world_vqa_accuracy(answer: Answer, image_size: int, scenes: int = 50, max_objects: int = 2) -> dict:
    """``answer(images, questions)`` -> one answer per question. Returns accuracy and counts per set, in
    all (with its 95% Wilson interval, ``interval_95``) and for the colour and the shape questions apart."""
    report = {}
    for name, split in (("held_out", "heldout"), ("seen", "val")):
        cases = colour_shape_cases(split, scenes, image_size, max_objects)
        replies = answer([c.image for c in cases], [c.question for c in cases])
        if len(replies) != len(cases):
            raise InputError(f"expected {len(cases)} answers, got {len(replies)}")
        right = [first_word(r) == c.answer for r, c in zip(replies, cases)]
        report[name] = {
            "accuracy": sum(right) / len(right),
            "interval_95": wilson_interval(sum(right), len(right)),
            "questions": len(right),
        }
        for kind, prefix in zip(("colour", "shape"), COLOUR_SHAPE_PREFIXES):
            picked = [ok for ok, c in zip(right, cases) if c.question.startswith(prefix)]
            report[name][kind] = {"accuracy": sum(picked) / max(len(picked), 1), "questions": len(picked)}
    return report
