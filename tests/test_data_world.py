import math
import re

import numpy as np
import pytest
import torch

from arvision.data import (
    COLOURS,
    SHAPES,
    ProceduralWorld,
    WorldConfig,
    WorldImages,
    WorldVideos,
    WorldVQA,
    held_out_single_object_prompts,
)
from arvision.data.render import render_scene
from arvision.data.scenes import RELATION_MARGIN, SceneGraph, SceneObject, has_clear_position, position_name
from arvision.errors import InputError

SIZE = 64
COL, SHP = "|".join(COLOURS), "|".join(SHAPES)
NAME = rf"(?:({COL}) )?({SHP})"  # objects in unnamed colours are named by their shape alone
OBJ = rf"an? (?:(small|large) )?{NAME}"
NUMBER_WORDS = ["zero", "one", "two", "three", "four"]


@pytest.fixture(scope="module")
def world():
    return ProceduralWorld(WorldConfig(image_size=SIZE), seed=3)


@pytest.fixture(scope="module")
def samples(world):
    return [world.sample(i) for i in range(40)]


@pytest.fixture(scope="module", params=["named", "unnamed"])
def both_kinds(request, samples):
    """The named samples, then scenes whose objects are all in unnamed colours."""
    if request.param == "named":
        return samples
    world = ProceduralWorld(WorldConfig(image_size=SIZE, unnamed_colour_fraction=1.0), seed=3)
    return [world.sample(i) for i in range(30)]


def find(graph: SceneGraph, colour: str, shape: str) -> int:
    colour = colour or None  # re.findall gives "" for an absent colour word, a match object None
    matches = [i for i, o in enumerate(graph.objects) if (o.colour, o.shape) == (colour, shape)]
    assert len(matches) == 1, f"{colour} {shape} should name exactly one object"
    return matches[0]


def measured_centre(image: np.ndarray, obj: SceneObject) -> tuple[float, float]:
    """Centre of the bounding box of the pixels that have exactly the object's colour near it."""
    h, w = image.shape[:2]
    ys, xs = np.nonzero((image == obj.rgb).all(-1))
    near = np.hypot((xs + 0.5) / w - obj.centre[0], (ys + 0.5) / h - obj.centre[1]) <= obj.reach
    xs, ys = xs[near], ys[near]
    assert len(xs) > 4, f"{obj.name} is not visible"
    return ((xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h)


def relation_from_pixels(a: tuple[float, float], b: tuple[float, float]) -> set[str]:
    slack = RELATION_MARGIN - 2.5 / SIZE  # the measured centres are good to about a pixel
    dx, dy = b[0] - a[0], b[1] - a[1]
    return {
        r
        for r, ok in (("left of", dx > slack), ("right of", -dx > slack), ("above", dy > slack), ("below", -dy > slack))
        if ok
    }


def test_same_seed_and_index_give_identical_samples_and_others_differ(world, samples):
    again = ProceduralWorld(WorldConfig(image_size=SIZE), seed=3).sample(5)
    assert again.graph == samples[5].graph
    assert np.array_equal(np.asarray(again.image), np.asarray(samples[5].image))
    assert again.captions == samples[5].captions and again.vqa == samples[5].vqa
    other_seed = ProceduralWorld(WorldConfig(image_size=SIZE), seed=4).sample(5)
    assert other_seed.graph != samples[5].graph
    assert not np.array_equal(np.asarray(other_seed.image), np.asarray(samples[5].image))
    assert len({s.graph for s in samples}) == len(samples)


def test_scenes_use_the_whole_vocabulary(samples):
    objects = [o for s in samples for o in s.graph.objects]
    assert {len(s.graph.objects) for s in samples} == {1, 2, 3, 4}
    assert {o.shape for o in objects} == set(SHAPES)
    assert len({o.colour for o in objects}) >= 7
    assert {o.size for o in objects} == {"small", "large"}
    assert {s.graph.background.kind for s in samples} == {"gradient", "stripes", "noise"}


def test_objects_are_drawn_where_the_graph_says_in_their_colour_without_overlap(both_kinds):
    samples = both_kinds
    for s in samples:
        image = np.asarray(s.image)
        objs = s.graph.objects
        for obj in objs:
            x, y = obj.interior_point()
            assert tuple(image[int(y * SIZE), int(x * SIZE)]) == obj.rgb
            cx, cy = measured_centre(image, obj)
            assert abs(cx - obj.centre[0]) < 1.5 / SIZE and abs(cy - obj.centre[1]) < 1.5 / SIZE
            x0, y0, x1, y1 = obj.bbox
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        for i, a in enumerate(objs):
            for b in objs[i + 1 :]:
                assert math.dist(a.centre, b.centre) > a.reach + b.reach
        # Every pair is related along at least one axis, and the graph's relations are the measured ones.
        centres = [measured_centre(image, o) for o in objs]
        for i in range(len(objs)):
            for j in range(len(objs)):
                if i != j:
                    graph_rels = {r.relation for r in s.graph.relations if (r.subject, r.object) == (i, j)}
                    assert graph_rels and graph_rels <= relation_from_pixels(centres[i], centres[j])


@pytest.mark.parametrize(
    "shape, fill",
    [
        ("square", 1.0),
        ("circle", math.pi / 4),
        ("triangle", 0.5),
        ("ring", math.pi / 4 * (1 - 0.55**2)),
        ("star", 0.38),
    ],
)
def test_each_shape_fills_its_box_as_that_shape_does(shape, fill):
    from arvision.data.scenes import Background

    obj = SceneObject(shape, "red", "large", (0.5, 0.5))
    image = np.asarray(render_scene(SceneGraph((obj,), Background("noise", "grey", 0)), 128))
    ys, xs = np.nonzero((image == obj.rgb).all(-1))
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    assert abs(len(xs) / box - fill) < 0.06
    assert (tuple(image[64, 64]) == obj.rgb) == (shape != "ring")


def test_captions_mention_exactly_the_graph(both_kinds):
    samples = both_kinds
    for s in samples:
        g = s.graph
        assert len(s.captions) >= 3 and len(set(s.captions)) == len(s.captions)
        for caption in s.captions:
            mentioned = set()
            for size, colour, shape in re.findall(OBJ, caption):
                obj = g.objects[find(g, colour, shape)]
                assert size in ("", obj.size), caption
                mentioned.add(obj)
            assert mentioned == set(g.objects), caption
            for m in re.finditer(rf"{OBJ} (left of|right of|above|below) {OBJ}", caption):
                i, j = find(g, m[2], m[3]), find(g, m[6], m[7])
                assert g.holds(i, m[4], j), caption
            if m := re.match(r"(\w+) objects: ", caption):
                assert NUMBER_WORDS.index(m[1]) == len(g.objects)
            if m := re.search(r"on an? (striped |noisy )?(\w+)( gradient)? background", caption):
                kind = {"striped ": "stripes", "noisy ": "noise"}.get(m[1], "gradient" if m[3] else None)
                assert (kind, m[2]) == (g.background.kind, g.background.colour), caption
            if m := re.search(r"(?:in|at|on) the ((?:top |bottom )?(?:left|right)|top|bottom|center)$", caption):
                x, y = g.objects[0].centre
                row = "top " if y < 1 / 3 else "bottom " if y > 2 / 3 else ""
                col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
                assert m[1] == ((row + col).strip() or "center"), caption


def oracle(graph: SceneGraph, question: str, directions=None) -> str:
    """The answer worked out from the graph, independently of the caption code."""
    objs = graph.objects
    if question == "How many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(rf"How many ({SHP})s are there\?", question):
        return str(sum(o.shape == m[1] for o in objs))
    if m := re.fullmatch(rf"What color is the ({SHP})\?", question):
        (obj,) = [o for o in objs if o.shape == m[1]]
        return obj.colour
    if m := re.fullmatch(rf"What shape is the ({COL}) object\?", question):
        (obj,) = [o for o in objs if o.colour == m[1]]
        return obj.shape
    if m := re.fullmatch(rf"Is the {NAME} large or small\?", question):
        return objs[find(graph, m[1], m[2])].size
    if m := re.fullmatch(rf"Where is the {NAME}\?", question):
        x, y = objs[find(graph, m[1], m[2])].centre
        row = "top " if y < 1 / 3 else "bottom " if y > 2 / 3 else ""
        col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
        return (row + col).strip() or "center"
    if m := re.fullmatch(rf"Is there an? {NAME}\?", question):
        return "yes" if any((o.colour, o.shape) == (m[1], m[2]) for o in objs) else "no"
    if m := re.fullmatch(rf"Is the {NAME} (left of|right of|above|below) the {NAME}\?", question):
        a, b = objs[find(graph, m[1], m[2])].centre, objs[find(graph, m[4], m[5])].centre
        diff = {"left of": b[0] - a[0], "right of": a[0] - b[0], "above": b[1] - a[1], "below": a[1] - b[1]}[m[3]]
        assert abs(diff) > RELATION_MARGIN, "yes/no relation questions must be decisive"
        return "yes" if diff > 0 else "no"
    if question == "What color is the object?":
        return objs[0].colour
    if question == "What shape is the object?":
        return objs[0].shape
    if question == "What color is the background?":
        return graph.background.colour
    if directions and (m := re.fullmatch(rf"Which way is the ({COL}) ({SHP}) moving\?", question)):
        return directions[find(graph, m[1], m[2])]
    raise AssertionError(f"unexpected question: {question}")


def test_every_vqa_answer_follows_from_the_graph(both_kinds):
    samples = both_kinds
    kinds = set()
    for s in samples:
        for question, answer in s.vqa:
            assert oracle(s.graph, question) == answer, question
            kinds.add(question.split(" the ")[0].split(" are ")[0])
        answers = [a for _, a in s.vqa]
        assert "yes" in answers and "no" in answers
    assert len(kinds) >= 7


def test_videos_move_objects_in_the_named_direction(world):
    checked = 0
    for index in range(12):
        video = world.video(index)
        start = video.scene.start
        assert len(video.frames) == 8
        assert all(oracle(start, q, video.scene.directions) == a for q, a in video.vqa)
        for obj, direction, distance, caption_part in zip(
            start.objects,
            video.scene.directions,
            video.scene.distances,
            video.captions[0].split(" and "),
            strict=True,
        ):
            assert caption_part.endswith(
                f"{obj.name} moving "
                + {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}[direction]
            )
            if sum(o.rgb == obj.rgb for o in start.objects) > 1:
                continue
            centres = []
            for frame in video.frames:
                ys, xs = np.nonzero((np.asarray(frame) == obj.rgb).all(-1))
                centres.append(((xs.min() + xs.max() + 1) / 2 / SIZE, (ys.min() + ys.max() + 1) / 2 / SIZE))
            dx, dy = np.diff(np.array(centres), axis=0).T
            along, across = {"right": (dx, dy), "left": (-dx, dy), "down": (dy, dx), "up": (-dy, dx)}[direction]
            assert (along > 0).all() and np.abs(across).max() < 1.5 / SIZE
            assert abs(along.sum() - distance) < 2 / SIZE
            checked += 1
    assert checked >= 10
    assert {d for i in range(12) for d in world.video_scene(i).directions} == {"left", "right", "up", "down"}


def test_splits_are_disjoint_and_hold_out_their_pairs():
    cfg = WorldConfig(image_size=SIZE)
    heldout = set(cfg.heldout_combos)
    assert len(heldout) == 8 and {c for c, _ in heldout} == set(COLOURS) and {s for _, s in heldout} == set(SHAPES)
    train, val, test = (ProceduralWorld(cfg, seed=0, split=s) for s in ("train", "val", "heldout"))
    for i in range(150):
        for w in (train, val):
            assert not {(o.colour, o.shape) for o in w.scene(i).objects} & heldout
        assert {(o.colour, o.shape) for o in test.scene(i).objects} & heldout
        assert train.scene(i) != val.scene(i)
    video_pairs = {(o.colour, o.shape) for i in range(30) for o in train.video_scene(i).start.objects}
    assert not video_pairs & heldout and len(video_pairs) > 10
    with pytest.raises(InputError):
        ProceduralWorld(cfg, split="test")


def test_held_out_single_object_prompts():
    cases = held_out_single_object_prompts()
    assert len(cases) == 24 and len({c.prompt for c in cases}) == 24
    heldout = set(WorldConfig().heldout_combos)
    for case in cases:
        (obj,) = case.graph.objects
        assert (obj.colour, obj.shape) in heldout
        assert re.fullmatch(rf"an? (?:{obj.size} )?{obj.colour} {obj.shape}", case.prompt)
        image = np.asarray(render_scene(case.graph, SIZE))
        x, y = obj.interior_point()
        assert tuple(image[int(y * SIZE), int(x * SIZE)]) == obj.rgb
    assert held_out_single_object_prompts() == cases


def test_config_is_validated():
    with pytest.raises(InputError):
        WorldConfig(image_size=8)
    with pytest.raises(InputError):
        WorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(InputError):
        WorldConfig(heldout_combos=(("mauve", "circle"),))
    all_but_two = [(c, s) for c in COLOURS for s in SHAPES][2:]
    with pytest.raises(InputError, match="too many held-out"):
        ProceduralWorld(WorldConfig(heldout_combos=all_but_two))


def test_torch_datasets_are_deterministic_per_index(world, samples):
    images, vqa, videos = WorldImages(world, length=10), WorldVQA(world, length=10), WorldVideos(world, length=3)
    item = images[5]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"], torch.from_numpy(np.array(samples[5].image)).permute(2, 0, 1) / 127.5 - 1)
    assert item["caption"] in samples[5].captions
    # Global RNG state must not matter: a resumed or distributed run sees the same item.
    torch.manual_seed(0)
    np.random.seed(0)
    first = [images[i]["caption"] for i in range(10)]
    torch.manual_seed(1)
    np.random.seed(1)
    assert [images[i]["caption"] for i in range(10)] == first
    assert len(set(first)) > 1
    turns = vqa[5]["turns"]
    assert 1 <= len(turns) <= 3 and set(turns) <= set(samples[5].vqa) and vqa[5]["turns"] == turns
    frames = videos[2]["frames"]
    assert frames.shape == (8, 3, SIZE, SIZE) and videos[2]["caption"] in world.video(2).captions
    with pytest.raises(IndexError):
        images[10]


def test_multi_turn_items_never_give_a_colour_or_shape_answer_away(world):
    vqa = WorldVQA(world, length=200, turns_per_item=8)
    attribute_turns = dropped = 0
    for index in range(200):
        graph, turns = world.sample(index).graph, vqa[index]["turns"]
        full_names = [f"{o.colour} {o.shape}" for o in graph.objects]
        earlier = ""
        for question, answer in turns:
            shape_asked = re.fullmatch(rf"What color is the ({SHP})\?", question)
            colour_asked = re.fullmatch(rf"What shape is the ({COL}) object\?", question)
            if shape_asked or colour_asked:
                attribute_turns += 1
                word = (shape_asked or colour_asked).group(1)
                subject = next(n for n in full_names if word in n.split())
                # neither the object's full name nor the other attribute's answer came before
                assert subject not in earlier, (question, earlier)
                other = subject.split()[0] if shape_asked else subject.split()[1]
                assert f"{other} object?" not in earlier and f"the {other}?" not in earlier
            earlier += f" {question} {answer}"
        dropped += min(8, len(world.sample(index).vqa)) - len(turns)
    assert attribute_turns > 100 and dropped > 0  # the check ran, and the rule had work to do


def test_attribute_fraction_sets_the_share_of_colour_and_shape_only_items(world):
    from arvision.data.captions import attribute_subject

    plain, focused = WorldVQA(world, length=300, turns_per_item=2), WorldVQA(world, 300, 2, attribute_fraction=0.5)

    def attribute_only(item) -> bool:
        objects = world.sample(item["index"]).graph.objects
        return all(attribute_subject(q, objects) is not None for q, _ in item["turns"])

    share = sum(attribute_only(focused[i]) for i in range(300)) / 300
    assert 0.5 < share < 0.75  # half by the draw, plus plain draws that happen to hit two such questions
    assert sum(attribute_only(plain[i]) for i in range(300)) / 300 < 0.1
    assert [plain[i]["turns"] for i in range(20)] == [WorldVQA(world, 300, 2)[i]["turns"] for i in range(20)]
    assert [focused[i]["turns"] for i in range(20)] == [focused[i]["turns"] for i in range(20)]
    with pytest.raises(InputError, match="attribute_fraction"):
        WorldVQA(world, 10, 1, attribute_fraction=1.5)


def test_attribute_subject_names_the_object_asked_about():
    from arvision.data.captions import attribute_subject

    objects = [SceneObject("circle", "red", "small", (0.3, 0.5)), SceneObject("star", "blue", "large", (0.7, 0.5))]
    assert attribute_subject("What color is the star?", objects) == 1
    assert attribute_subject("What shape is the red object?", objects) == 0
    assert attribute_subject("What color is the object?", objects[:1]) == 0
    assert attribute_subject("What color is the background?", objects) is None
    assert attribute_subject("Is there a red circle?", objects) is None


def test_graphs_reject_words_outside_the_vocabulary_and_ambiguous_objects():
    from arvision.data.scenes import Background

    bg = Background("noise", "grey", 0)
    with pytest.raises(InputError, match="vocabulary"):
        SceneGraph((SceneObject("hexagon", "red", "small", (0.5, 0.5)),), bg)
    twins = (SceneObject("circle", "red", "small", (0.2, 0.2)), SceneObject("circle", "red", "large", (0.7, 0.7)))
    with pytest.raises(InputError, match="distinct"):
        SceneGraph(twins, bg)


def test_batches_collate_with_the_default_collate(world):
    batch = next(iter(torch.utils.data.DataLoader(WorldImages(world, length=8), batch_size=4)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and len(batch["caption"]) == 4
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_the_readme_example_pairs_are_in_training():
    heldout = set(WorldConfig().heldout_combos)
    assert not {("red", "circle"), ("blue", "square"), ("green", "star")} & heldout


def test_graphs_round_trip_through_json(samples):
    import json

    for s in samples[:10]:
        data = json.loads(json.dumps(s.graph.to_dict()))
        assert SceneGraph.from_dict(data) == s.graph
        assert len(data["relations"]) == len(s.graph.relations) and data["objects"][0]["colour"] in COLOURS


def test_unnamed_colour_scenes_name_shapes_only_and_leave_the_other_scenes_as_they_were():
    from arvision.data.scenes import is_unnamed_paint

    plain = ProceduralWorld(WorldConfig(image_size=32), seed=5)
    mixed = ProceduralWorld(WorldConfig(image_size=32, unnamed_colour_fraction=0.3), seed=5)
    unnamed = 0
    for i in range(200):
        graph = mixed.scene(i)
        if graph.objects[0].colour is not None:
            assert graph == plain.scene(i)
            continue
        unnamed += 1
        assert all(o.colour is None and is_unnamed_paint(o.paint) for o in graph.objects)
        assert len({o.shape for o in graph.objects}) == len(graph.objects)
        sample = mixed.sample(i)
        words = " ".join(sample.captions + [a for _, a in sample.vqa]).split()
        assert not set(words) & set(COLOURS), sample.captions
        assert not any(q.startswith("What color is the") and "background" not in q for q, _ in sample.vqa)
    assert 40 <= unnamed <= 80  # 30% of 200
    held_out = ProceduralWorld(WorldConfig(image_size=32, unnamed_colour_fraction=1.0), split="heldout")
    pairs = set(WorldConfig().heldout_combos)
    assert all((held_out.scene(i).objects[0].colour, held_out.scene(i).objects[0].shape) in pairs for i in range(20))


def test_unnamed_paints_are_checked():
    from arvision.data.scenes import Background

    bg = Background("noise", "grey", 0)
    ok = SceneObject("star", None, "small", (0.5, 0.5), paint=(120, 60, 20))
    assert SceneGraph.from_dict(SceneGraph((ok,), bg).to_dict()).objects[0] == ok
    for obj, message in (
        (SceneObject("star", None, "small", (0.5, 0.5), paint=(225, 45, 35)), "too close"),  # next to red
        # 67 apart in RGB, but it reads as red (delta E 26)
        (SceneObject("star", None, "small", (0.5, 0.5), paint=(255, 0, 0)), "too close"),
        (SceneObject("star", "red", "small", (0.5, 0.5), paint=(120, 60, 20)), "not both"),
        (SceneObject("star", None, "small", (0.5, 0.5)), "or neither"),
    ):
        with pytest.raises(InputError, match=message):
            SceneGraph((obj,), bg)
    with pytest.raises(InputError, match="unnamed_colour_fraction"):
        WorldConfig(unnamed_colour_fraction=1.5)


def test_a_negative_seed_is_named():
    with pytest.raises(InputError, match="seed must be >= 0, got -1"):
        ProceduralWorld(seed=-1)


def test_existence_near_misses_do_not_give_the_answer_away_nor_name_held_out_pairs():
    world = ProceduralWorld(WorldConfig(image_size=32, max_objects=2), seed=0, split="train")
    heldout = {f"{c} {s}" for c, s in world.config.heldout_combos}
    answers_by_colour: dict[str, set[str]] = {}
    for index in range(300):
        for question, answer in world.sample(index).vqa:
            if question.startswith("Is there ") and len(question.split()) == 5:  # "Is there a red star?"
                pair = question.removesuffix("?").split(" ", 3)[3]
                assert pair not in heldout, question  # not even as a "no"
                answers_by_colour.setdefault(pair.split()[0], set()).add(answer)
    # Every colour is asked about with both answers: the colour word alone does not tell them apart.
    assert set(answers_by_colour) == set(COLOURS)
    assert all(answers == {"yes", "no"} for answers in answers_by_colour.values()), answers_by_colour


def test_unnamed_scenes_get_shape_only_near_misses():
    world = ProceduralWorld(WorldConfig(image_size=32, unnamed_colour_fraction=1.0), seed=0)
    for index in range(20):
        sample = world.sample(index)
        shapes = {o.shape for o in sample.graph.objects}
        misses = [q for q, a in sample.vqa if a == "no" and len(q.split()) == 4 and q.startswith("Is there")]
        assert len(misses) == 1 and misses[0].removesuffix("?").split()[-1] not in shapes


def test_positions_are_named_only_away_from_the_thirds():
    world = ProceduralWorld(WorldConfig(image_size=32, max_objects=1), seed=0)
    asked = skipped = 0
    for index in range(200):
        sample = world.sample(index)
        obj = sample.graph.objects[0]
        where = [a for q, a in sample.vqa if q.startswith("Where is")]
        if has_clear_position(obj.centre):
            asked += 1
            assert where == [position_name(obj.centre)]
        else:
            skipped += 1
            assert where == [] and not any(
                c.endswith(("left", "right", "top", "bottom", "center")) for c in sample.captions
            )
    assert asked > 100 and skipped > 0
