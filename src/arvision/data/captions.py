"""Captions and VQA pairs read off a scene graph: every word is a fact of the graph.

Answers are short and canonical (a colour or shape name, a digit, "yes"/"no", a position or direction
word), so a checker can compare strings.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import numpy as np

from arvision.data.scenes import (
    COLOURS,
    SHAPES,
    SceneGraph,
    SceneObject,
    VideoScene,
    has_clear_position,
    main_relation,
    position_name,
)

NUMBERS = ("zero", "one", "two", "three", "four", "five")
MOTION_PHRASES = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


def background_phrase(graph: SceneGraph) -> str:
    bg = graph.background
    return {
        "gradient": f"a {bg.colour} gradient background",
        "stripes": f"a striped {bg.colour} background",
        "noise": f"a noisy {bg.colour} background",
    }[bg.kind]


def position_phrase(obj: SceneObject) -> str:
    """ "in the top left", "at the top", "on the left", "in the center", ..."""
    name = position_name(obj.centre)
    if " " in name or name == "center":
        return f"in the {name}"
    return f"at the {name}" if name in ("top", "bottom") else f"on the {name}"


def article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _a(obj: SceneObject, size: bool = False) -> str:
    return article(f"{obj.size} {obj.name}" if size else obj.name)


def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_captions(graph: SceneGraph) -> list[str]:
    """Several phrasings of the same scene, from the shortest to the most detailed."""
    objs = graph.objects
    bg = background_phrase(graph)
    if len(objs) == 1:
        o = objs[0]
        captions = [_a(o), _a(o, size=True), f"{_a(o, size=True)} on {bg}"]
        return captions + ([f"{_a(o)} {position_phrase(o)}"] if has_clear_position(o.centre) else [])
    pairs = []  # consecutive pairs with their clearest relation: "a red circle left of a blue square"
    for i in range(0, len(objs) - 1, 2):
        pairs.append(f"{_a(objs[i])} {main_relation(objs[i], objs[i + 1])} {_a(objs[i + 1])}")
    if len(objs) % 2:
        pairs.append(_a(objs[-1]))
    captions = [
        ", and ".join(pairs),
        f"{NUMBERS[len(objs)]} objects: {_listing([_a(o) for o in objs])}",
        f"{_listing([_a(o, size=True) for o in objs])} on {bg}",
    ]
    if len(objs) == 2:
        captions.append(f"{_a(objs[1])} {main_relation(objs[1], objs[0])} {_a(objs[0])}")
    return captions


def _plural(shape: str) -> str:
    return shape + "s"


def _first_absent(vocabulary: tuple[str, ...], used: list[str]) -> str | None:
    return next((v for v in vocabulary if v not in used), None)


def scene_vqa(
    graph: SceneGraph,
    rng: np.random.Generator,
    spatial: bool = True,
    allowed_pairs: Collection[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Question-answer pairs about colour, shape, count, size, existence and, if ``spatial``, position.

    ``rng`` draws the near misses of the existence questions ("Is there a red star?" "no"), uniformly over
    the colours absent with that shape, so that no colour word gives the answer away; ``allowed_pairs`` (a
    split's colour-shape pairs) keeps them to pairs the split may name. "Where is" is asked only of objects
    with a clear position (:func:`~arvision.data.scenes.has_clear_position`).
    """
    objs = graph.objects
    shapes = [o.shape for o in objs]
    colours = [o.colour for o in objs]
    present = {(o.colour, o.shape) for o in objs}
    qa = [("How many objects are there?", str(len(objs)))]
    for shape in SHAPES:
        if shape in shapes or shape == _first_absent(SHAPES, shapes):
            qa.append((f"How many {_plural(shape)} are there?", str(shapes.count(shape))))
    for o in objs:
        # An object in an unnamed colour (o.colour None) is asked nothing about its colour; the near miss
        # below ("Is there a red star?" "no") still holds for it.
        if shapes.count(o.shape) == 1 and o.colour is not None:
            qa.append((f"What color is the {o.shape}?", o.colour))
        if colours.count(o.colour) == 1 and o.colour is not None:
            qa.append((f"What shape is the {o.colour} object?", o.shape))
        qa.append((f"Is the {o.name} large or small?", o.size))
        if spatial and has_clear_position(o.centre):
            qa.append((f"Where is the {o.name}?", position_name(o.centre)))
        qa.append((f"Is there {_a(o)}?", "yes"))
        # A near miss: the same shape in a colour that is not in the scene.
        nameable = [(c, o.shape) for c in COLOURS if allowed_pairs is None or (c, o.shape) in allowed_pairs]
        others = [c for c, _ in nameable if (c, o.shape) not in present]
        if others:
            other = others[rng.integers(len(others))]
            qa.append((f"Is there {article(f'{other} {o.shape}')}?", "no"))
    absent_shapes = [shape for shape in SHAPES if shape not in shapes]
    if any(o.colour is None for o in objs) and absent_shapes:
        # Unnamed scenes name shapes only: their near miss is a shape that is not there.
        qa.append((f"Is there {article(absent_shapes[rng.integers(len(absent_shapes))])}?", "no"))
    if len(objs) == 1:
        o = objs[0]
        if o.colour is not None:
            qa.append(("What color is the object?", o.colour))
        qa.append(("What shape is the object?", o.shape))
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            if spatial and i < j:
                rel = main_relation(a, b)
                qa.append((f"Is the {a.name} {rel} the {b.name}?", "yes"))
                qa.append((f"Is the {b.name} {rel} the {a.name}?", "no"))
    qa.append(("What color is the background?", graph.background.colour))
    return qa


_ATTRIBUTE_QUESTION = re.compile(r"What (?:color|shape) is the (\w+)(?: object)?\?")


def attribute_subject(question: str, objects: Sequence[SceneObject]) -> int | None:
    """Index of the object a colour or shape question of :func:`scene_vqa` asks about ("What color is the
    star?", "What shape is the red object?", "What color is the object?"); None for any other question."""
    match = _ATTRIBUTE_QUESTION.fullmatch(question)
    if match is None or match.group(1) == "background":
        return None
    word = match.group(1)
    if word == "object":
        return 0 if len(objects) == 1 else None
    return next((i for i, o in enumerate(objects) if word in (o.shape, o.colour)), None)


def without_answer_leaks(turns: Sequence[tuple[str, str]], graph: SceneGraph) -> list[tuple[str, str]]:
    """The turns of one conversation about ``graph``, ordered so that no colour or shape answer can be read
    off an earlier turn: the colour/shape questions first, at most one per object (the others dropped:
    "What shape is the red object? star" gives away "What color is the star?"), then the rest, whose
    questions name objects in full ("Is there a red star?")."""
    attribute, other, asked = [], [], set()
    for question, answer in turns:
        subject = attribute_subject(question, graph.objects)
        if subject is None:
            other.append((question, answer))
        elif subject not in asked:
            asked.add(subject)
            attribute.append((question, answer))
    return attribute + other


def video_captions(video: VideoScene) -> list[str]:
    """Phrasings that name each object's motion: "a green star moving to the right", ..."""
    objs = video.start.objects
    moving = [f"{_a(o)} moving {MOTION_PHRASES[d]}" for o, d in zip(objs, video.directions, strict=True)]
    sized = [f"{_a(o, size=True)} moving {MOTION_PHRASES[d]}" for o, d in zip(objs, video.directions, strict=True)]
    return [_listing(moving), f"{_listing(sized)} on {background_phrase(video.start)}"]


def video_vqa(
    video: VideoScene, rng: np.random.Generator, allowed_pairs: Collection[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """Motion questions plus the questions whose answers hold in every frame (no positions); ``rng`` and
    ``allowed_pairs`` as in :func:`scene_vqa`."""
    objs = video.start.objects
    qa = [(f"Which way is the {o.name} moving?", d) for o, d in zip(objs, video.directions, strict=True)]
    return qa + scene_vqa(video.start, rng, spatial=False, allowed_pairs=allowed_pairs)
