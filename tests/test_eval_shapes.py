import numpy as np
import pytest
from PIL import Image

from arvision.data.scenes import COLOURS, SHAPES
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.errors import InputError
from arvision.eval.shapes import (
    classify_shape,
    detect_objects,
    main_object,
    single_object_accuracy,
    single_object_targets,
)


def test_reads_every_colour_and_shape_of_rendered_single_object_scenes():
    world = ProceduralWorld(WorldConfig(image_size=64, max_objects=1), seed=11, split="val")
    samples = [world.sample(i) for i in range(80)]
    targets = single_object_targets(s.graph for s in samples)
    assert {c for c, _ in targets} == set(COLOURS) and {s for _, s in targets} == set(SHAPES)
    assert single_object_accuracy([s.image for s in samples], targets) == {"colour": 1.0, "shape": 1.0, "both": 1.0}


def test_reports_positions_and_nothing_on_plain_backgrounds():
    world = ProceduralWorld(WorldConfig(image_size=64, max_objects=1), seed=3, split="val")
    sample = world.sample(0)
    found = main_object(sample.image)
    (gx, gy), (dx, dy) = sample.graph.objects[0].centre, found.centre
    assert abs(gx - dx) < 0.05 and abs(gy - dy) < 0.05
    grey = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    assert detect_objects(grey) == [] and main_object(grey) is None
    assert single_object_accuracy([grey], [("red", "circle")])["both"] == 0.0


def test_shape_rules():
    assert classify_shape(0.5, 0.6, 0, 0.0) == "ring"
    assert classify_shape(0.45, 0.6, 1, 0.0) == "star"
    assert classify_shape(0.95, 0.98, 1, 1.0) == "square"
    assert classify_shape(0.85, 0.98, 1, 0.0) == "circle"
    assert classify_shape(0.78, 0.97, 1, 0.0) == "circle"
    assert classify_shape(0.5, 0.95, 1, 0.5) == "triangle"


def test_mismatched_targets_are_refused():
    with pytest.raises(InputError):
        single_object_accuracy([], [])
