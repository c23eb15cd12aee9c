from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.eval.hart_world import prompt_sets, world_shape_accuracy


def test_prompt_sets_split_the_pairs():
    sets = prompt_sets()
    held = {(c.graph.objects[0].colour, c.graph.objects[0].shape) for c in sets["held_out"]}
    seen = {(c.graph.objects[0].colour, c.graph.objects[0].shape) for c in sets["seen"]}
    assert held == set(WorldConfig().heldout_combos) and not held & seen and len(held | seen) == 40


def test_a_perfect_generator_scores_one_and_a_blank_one_zero():
    world = ProceduralWorld(WorldConfig(image_size=64))
    by_prompt = {c.prompt: world.render(c.graph) for cases in prompt_sets().values() for c in cases}
    perfect = world_shape_accuracy(lambda prompts, seed: [by_prompt[p] for p in prompts], images_per_prompt=1)
    # The checker misreads about 1 in 1000 reference renders (one small pink square on white stripes here).
    assert perfect["held_out"]["both"] == 1.0 and perfect["seen"]["both"] >= 0.98
    blank = world.render(prompt_sets()["seen"][0].graph).convert("L").convert("RGB")
    assert world_shape_accuracy(lambda prompts, seed: [blank] * len(prompts), 1)["held_out"]["both"] == 0.0
