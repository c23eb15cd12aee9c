"""How well an image-understanding model answers colour and shape questions about procedural-world scenes.

Two question sets, both read off exact scene graphs: ``held_out`` asks about the held-out colour-shape
pairs (those the train split never shows) in scenes of the world's ``heldout`` split, ``seen`` about the
other pairs in scenes of the ``val`` split. A held-out scene forces only its first object to be a held-out
pair, so its other objects are mostly seen pairs: the questions about those are scored apart
(``about_seen_pairs``), not in the held-out figure. Only colour and shape questions count ("What color is
the star?", "What shape is the red object?"); an answer is right when its first word is the expected one,
case and punctuation aside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from arvision.data.captions import attribute_subject
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.errors import InputError
from arvision.eval.metrics import wilson_interval

Answer = Callable[[Sequence[Image.Image], Sequence[str]], list[str]]
COLOUR_SHAPE_PREFIXES = ("What color is the", "What shape is the")


@dataclass(frozen=True)
class VQACase:
    """A colour or shape question about one object of a scene: the scene's image, the question, the
    expected answer and the (colour, shape) pair of the object it asks about."""

    image: Image.Image
    question: str
    answer: str
    pair: tuple[str, str]


def colour_shape_cases(split: str, scenes: int, image_size: int, max_objects: int = 2, seed: int = 0) -> list[VQACase]:
    """Every colour/shape question about the first ``scenes`` scenes of ``split``."""
    if scenes < 1:
        raise InputError(f"scenes must be >= 1, got {scenes}")
    world = ProceduralWorld(WorldConfig(image_size=image_size, max_objects=max_objects), seed=seed, split=split)
    cases = []
    for index in range(scenes):
        sample = world.sample(index)
        for question, answer in sample.vqa:
            subject = attribute_subject(question, sample.graph.objects)
            if subject is not None:
                obj = sample.graph.objects[subject]
                cases.append(VQACase(sample.image, question, answer, (obj.colour, obj.shape)))
    return cases


def first_word(text: str) -> str:
    """The first word of an answer, lower-cased and without trailing punctuation ("" for an empty one)."""
    words = text.strip().lower().split()
    return words[0].strip(".,!?;:") if words else ""


def _scores(results: Sequence[tuple[bool, VQACase]]) -> dict:
    """Accuracy of (right, case) results in all, with its 95% Wilson interval, and per question kind."""
    right = sum(ok for ok, _ in results)
    report = {
        "accuracy": right / len(results),
        "interval_95": wilson_interval(right, len(results)),
        "questions": len(results),
    }
    for kind, prefix in zip(("colour", "shape"), COLOUR_SHAPE_PREFIXES):
        picked = [ok for ok, case in results if case.question.startswith(prefix)]
        report[kind] = {"accuracy": sum(picked) / max(len(picked), 1), "questions": len(picked)}
    return report


def world_vqa_accuracy(answer: Answer, image_size: int, scenes: int = 50, max_objects: int = 2) -> dict:
    """``answer(images, questions)`` -> one answer per question. Returns, for ``held_out`` (questions about
    held-out pairs in held-out scenes) and ``seen`` (questions about seen pairs in val scenes), the accuracy
    in all (with its 95% Wilson interval, ``interval_95``), the question count, and the colour and the shape
    questions apart. The other questions of those scenes are scored the same way under ``about_seen_pairs``
    (in ``held_out``) and ``about_held_out_pairs`` (in ``seen``; present only if any: val scenes never
    show a held-out pair)."""
    held_out_pairs = set(WorldConfig().heldout_combos)
    report = {}
    for name, split, other in (("held_out", "heldout", "about_seen_pairs"), ("seen", "val", "about_held_out_pairs")):
        cases = colour_shape_cases(split, scenes, image_size, max_objects)
        replies = answer([c.image for c in cases], [c.question for c in cases])
        if len(replies) != len(cases):
            raise InputError(f"expected {len(cases)} answers, got {len(replies)}")
        results = [(first_word(r) == c.answer, c) for r, c in zip(replies, cases)]
        headline = [(ok, c) for ok, c in results if (c.pair in held_out_pairs) == (name == "held_out")]
        rest = [(ok, c) for ok, c in results if (c.pair in held_out_pairs) != (name == "held_out")]
        if not headline:
            raise InputError(f"no question about a {name.replace('_', '-')} pair in {scenes} scenes; take more")
        report[name] = _scores(headline)
        if rest:
            report[name][other] = _scores(rest)
    return report
