"""The built-in procedural world: an infinite, seeded stream of captioned scenes and 8-frame videos.

Sample ``i`` of a split is a pure function of ``(seed, split, i)``: any worker or rank can draw it
without shared state, and a resumed run sees the same data.

Splits: ``train`` and ``val`` are disjoint random streams that never show a held-out colour-shape pair;
``heldout`` scenes always contain one (the compositional test). :func:`held_out_single_object_prompts`
lists the single-object prompts the evaluation uses. ``WorldConfig.unnamed_colour_fraction`` mixes in
train/val scenes whose objects are painted in colours that have no name, their words naming shapes only:
shape supervision that cannot be tied to a colour, the lever that lets readers name the shape of held-out
pairs (see the VILA-U model card).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from arvision.data.captions import article, scene_captions, scene_vqa, video_captions, video_vqa
from arvision.data.render import render_scene
from arvision.data.scenes import (
    BACKGROUND_COLOURS,
    BACKGROUND_KINDS,
    COLOURS,
    DEFAULT_HELDOUT_COMBOS,
    SHAPES,
    SIZES,
    Background,
    SceneGraph,
    SceneObject,
    VideoScene,
    sample_background,
    sample_objects,
    sample_unnamed_objects,
    sample_video_scene,
)
from arvision.errors import InputError

SPLITS = {"train": 0, "val": 1, "heldout": 2}
# The world's own generator streams: 0 scenes, 1 videos, these; datasets use 2..99.
UNNAMED_STREAM, SCENE_VQA_STREAM, VIDEO_VQA_STREAM = 100, 101, 102
# Changes whenever the same seed and config would give other samples, so caches of an older world rebuild.
# 2: existence near misses drawn uniformly (and within the split's pairs), unnamed paints far in CIELAB too,
# positions asked only when clear.
WORLD_VERSION = 2


@dataclass
class WorldConfig:
    """How the world draws and renders scenes."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    video_frames: int = 8
    video_max_objects: int = 2
    supersample: int = 4
    heldout_combos: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT_COMBOS
    # Share of train/val scenes whose objects are painted in unnamed colours, their words naming shapes only
    # (scenes.sample_unnamed_objects). The held-out split never has them; at 0 the scenes are those of
    # earlier versions, and at any value the other scenes keep their draws.
    unnamed_colour_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 1024:
            raise InputError(f"image_size must be within 32..1024 pixels, got {self.image_size}")
        if self.video_frames < 2 or self.supersample < 1:
            raise InputError("video_frames must be at least 2 and supersample at least 1")
        if not 1 <= self.min_objects <= self.max_objects <= 4 or not 1 <= self.video_max_objects <= 4:
            raise InputError("object counts must satisfy 1 <= min_objects <= max_objects <= 4")
        if not 0.0 <= self.unnamed_colour_fraction <= 1.0:
            raise InputError(f"unnamed_colour_fraction must be in [0, 1], got {self.unnamed_colour_fraction}")
        self.heldout_combos = tuple(tuple(c) for c in self.heldout_combos)
        for colour, shape in self.heldout_combos:
            if colour not in COLOURS or shape not in SHAPES:
                raise InputError(f"unknown held-out pair {colour!r} {shape!r}")


@dataclass(frozen=True)
class WorldSample:
    """One scene: the RGB image, its exact graph, several captions and question-answer pairs."""

    index: int
    image: Image.Image
    graph: SceneGraph
    captions: list[str]
    vqa: list[tuple[str, str]]


@dataclass(frozen=True)
class WorldVideo:
    """``num_frames`` RGB frames of objects in straight-line motion, with the motion's graph and words."""

    index: int
    frames: list[Image.Image]
    scene: VideoScene
    captions: list[str]
    vqa: list[tuple[str, str]]


class ProceduralWorld:
    """Index -> sample, for one split of one seeded world. ``len`` is unbounded, so datasets pick a length."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 0, split: str = "train") -> None:
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
        if seed < 0:
            raise InputError(f"the world's seed must be >= 0, got {seed}")
        self.config = config or WorldConfig()
        self.seed, self.split = seed, split
        allowed = list(itertools.product(COLOURS, SHAPES))
        heldout = list(self.config.heldout_combos)
        self._combos = allowed if split == "heldout" else [c for c in allowed if c not in heldout]
        self._forced = heldout if split == "heldout" else None
        # The pairs this split's text may name: a train question never names a held-out pair, even as a "no".
        self._nameable = None if split == "heldout" else frozenset(self._combos)
        if split == "heldout" and not heldout:
            raise InputError("the heldout split needs at least one held-out colour-shape pair")
        if len(self._combos) < max(self.config.max_objects, self.config.video_max_objects):
            raise InputError("too many held-out pairs: a scene needs one distinct colour-shape pair per object")

    def fingerprint(self) -> dict[str, Any]:
        """What fixes every sample: the config, seed and split (JSON-able)."""
        return {
            "version": WORLD_VERSION,
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "split": self.split,
        }

    def rng(self, index: int, stream: int) -> np.random.Generator:
        """The generator for sample ``index`` (stream 0: scenes, 1: videos, 100-102: paints and VQA; 2..99:
        datasets)."""
        if index < 0:
            raise IndexError(f"negative sample index {index}")
        return np.random.default_rng([self.seed, SPLITS[self.split], index, stream])

    def scene(self, index: int) -> SceneGraph:
        rng = self.rng(index, 0)
        cfg = self.config
        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        paint_rng = self.rng(index, UNNAMED_STREAM)
        if self.split != "heldout" and paint_rng.random() < cfg.unnamed_colour_fraction:
            objects = sample_unnamed_objects(rng, count, paint_rng)
        else:
            objects = sample_objects(rng, count, self._combos, first_from=self._forced)
        return SceneGraph(tuple(objects), sample_background(rng))

    def render(self, graph: SceneGraph) -> Image.Image:
        return render_scene(graph, self.config.image_size, self.config.supersample)

    def sample(self, index: int) -> WorldSample:
        graph = self.scene(index)
        vqa = scene_vqa(graph, self.rng(index, SCENE_VQA_STREAM), allowed_pairs=self._nameable)
        return WorldSample(index, self.render(graph), graph, scene_captions(graph), vqa)

    def video_scene(self, index: int) -> VideoScene:
        rng = self.rng(index, 1)
        count = int(rng.integers(1, self.config.video_max_objects + 1))
        return sample_video_scene(rng, count, self._combos, self.config.video_frames, first_from=self._forced)

    def video(self, index: int) -> WorldVideo:
        scene = self.video_scene(index)
        frames = [self.render(scene.frame(k)) for k in range(scene.num_frames)]
        vqa = video_vqa(scene, self.rng(index, VIDEO_VQA_STREAM), allowed_pairs=self._nameable)
        return WorldVideo(index, frames, scene, video_captions(scene), vqa)


@dataclass(frozen=True)
class PromptCase:
    """A prompt and the exact scene graph of a reference rendering of it (object centred)."""

    prompt: str
    graph: SceneGraph


def single_object_prompts(combos: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> list[PromptCase]:
    """For each colour-shape pair: "a red star" (drawn large), "a small red star", "a large red star".

    Backgrounds cycle through the kinds and colours, with fixed texture seeds, so the list is fixed.
    """
    cases = []
    backgrounds = itertools.cycle(itertools.product(BACKGROUND_KINDS, BACKGROUND_COLOURS))
    for k, (colour, shape) in enumerate(combos):
        for size, prompt in (
            ("large", article(f"{colour} {shape}")),
            *((s, article(f"{s} {colour} {shape}")) for s in SIZES),
        ):
            kind, bg_colour = next(backgrounds)
            obj = SceneObject(shape, colour, size, (0.5, 0.5))
            cases.append(PromptCase(prompt, SceneGraph((obj,), Background(kind, bg_colour, seed=k))))
    return cases


def held_out_single_object_prompts(config: WorldConfig | None = None) -> list[PromptCase]:
    """The single-object prompts for the colour-shape pairs that the train split never shows."""
    return single_object_prompts((config or WorldConfig()).heldout_combos)


def single_object_scenes(image_size: int, split: str, count: int, unnamed: bool = False) -> list[WorldSample]:
    """The first ``count`` scenes of ``split`` with one object each (the evaluations' reference sets); with
    ``unnamed``, every object in an unnamed colour (``split`` train or val)."""
    config = WorldConfig(image_size=image_size, max_objects=1, unnamed_colour_fraction=float(unnamed))
    world = ProceduralWorld(config, split=split)
    return [world.sample(i) for i in range(count)]
