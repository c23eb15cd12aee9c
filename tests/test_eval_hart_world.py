import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from arvision.data.scenes import SHAPES
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.defaults import default_model_path
from arvision.errors import InputError
from arvision.eval.hart_world import prefix_readback, prompt_sets, world_shape_accuracy
from arvision.imaging import tensor_to_pil
from arvision.tokenizers.hart_tokenizer import HybridTokenizer


def test_prompt_sets_split_the_pairs():
    sets = prompt_sets()
    held = {(c.graph.objects[0].colour, c.graph.objects[0].shape) for c in sets["held_out"]}
    seen = {(c.graph.objects[0].colour, c.graph.objects[0].shape) for c in sets["seen"]}
    assert held == set(WorldConfig().heldout_combos) and not held & seen and len(held | seen) == 40
    # one object per prompt: every image of a set is about a pair of that set, none is mixed in
    assert all(len(c.graph.objects) == 1 for cases in sets.values() for c in cases)


def test_a_perfect_generator_scores_one_and_a_blank_one_zero():
    world = ProceduralWorld(WorldConfig(image_size=64))
    by_prompt = {c.prompt: world.render(c.graph) for cases in prompt_sets().values() for c in cases}
    perfect = world_shape_accuracy(lambda prompts, seed: [by_prompt[p] for p in prompts], images_per_prompt=1)
    # The checker misreads about 1 in 1000 reference renders (one small pink square on white stripes here).
    assert perfect["held_out"]["both"] == 1.0 and perfect["seen"]["both"] >= 0.98
    low, high = perfect["held_out"]["both_interval_95"]
    assert high == 1.0 and 0.85 < low < 1.0  # 24 of 24 right still leaves room below 1
    assert perfect["held_out"]["by_shape"] == {shape: 1.0 for shape in sorted(SHAPES)}
    blank = world.render(prompt_sets()["seen"][0].graph).convert("L").convert("RGB")
    assert world_shape_accuracy(lambda prompts, seed: [blank] * len(prompts), 1)["held_out"]["both"] == 0.0


def test_drawn_counts_the_shapes_read_back_for_each_pair():
    world = ProceduralWorld(WorldConfig(image_size=64))
    sets = prompt_sets()
    perfect = {c.prompt: world.render(c.graph) for cases in sets.values() for c in cases}
    # A generator that draws each held-out pair as a seen shape of the same colour (the failure the
    # compositional hold-out probes for): always that colour's first seen shape, at the prompt's size.
    substitute = {}
    for case in sets["seen"]:
        colour = case.graph.objects[0].colour
        substitute.setdefault(colour, case.graph.objects[0].shape)
    by_prompt = {
        c.prompt: perfect[c.prompt.replace(c.graph.objects[0].shape, substitute[c.graph.objects[0].colour])]
        for c in sets["held_out"]
    }
    report = world_shape_accuracy(lambda prompts, seed: [by_prompt.get(p, perfect[p]) for p in prompts], 2)
    held_out = report["held_out"]
    assert held_out["shape"] == 0.0 and held_out["colour"] == 1.0 and held_out["images"] == 48
    assert held_out["by_shape"] == {shape: 0.0 for shape in sorted(SHAPES)}
    seen = report["seen"]["by_shape"]  # drawn right; the checker misreads one of the 21 square renders
    assert set(seen) == set(SHAPES) and min(seen.values()) >= 20 / 21
    assert held_out["drawn"] == {
        f"{colour} {shape}": {substitute[colour]: 6} for colour, shape in WorldConfig().heldout_combos
    }


class _PrefixOnly:
    """A stand-in pipeline that draws nothing: the decoded codes when given every scale, else blank images."""

    def __init__(self):
        self.tokenizer = HybridTokenizer.from_pretrained(default_model_path("hart") / "tokenizer")
        self.calls = []

    def __call__(self, prompts, *, height, width, seed, prefix_indices, discrete_only, progress):
        self.calls.append((len(prompts), seed, len(prefix_indices), discrete_only))
        if len(prefix_indices) < 10:
            return type("Out", (), {"images": [Image.new("RGB", (width, height))] * len(prompts)})
        latent = self.tokenizer.indices_to_latent(prefix_indices)
        return type("Out", (), {"images": tensor_to_pil(self.tokenizer.decode(latent))})


def test_prefix_readback_gives_the_true_codes_and_reads_back_what_comes_out():
    pipe = _PrefixOnly()
    report = prefix_readback(pipe, [0, 10], images_per_prompt=1, first_seed=5)
    assert report["prefix_0"] == {"both": 0.0, "both_discrete_only": 0.0}
    # every scale given: the references' own codes, decoded as the tokenizer decodes them
    assert report["prefix_10"]["both"] == report["references"]["discrete"] > 0.7
    assert report["references"]["hybrid"] >= report["references"]["discrete"]
    assert {call[:2] for call in pipe.calls} == {(120, 5)}
    assert {call[2:] for call in pipe.calls} == {(0, False), (0, True), (10, False), (10, True)}
    with pytest.raises(InputError, match=r"within 0..10, got 11"):
        prefix_readback(pipe, [11])


def run_script(*args: str) -> subprocess.CompletedProcess:
    script = Path(__file__).parents[1] / "scripts" / "eval_hart_world.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)


def test_eval_script_reports_its_settings_and_names_errors_in_one_line(hart_fixture_dir):
    settings = run_script("--model", str(hart_fixture_dir), "--images-per-prompt", "0")
    assert settings.returncode == 0, settings.stderr
    assert json.loads(settings.stdout)["diffusion_steps"] == 8  # a number, not the config's string "8"
    # the tiny fixture is class-conditional: it has no text encoder for the captions
    refused = run_script("--model", str(hart_fixture_dir), "--images-per-prompt", "0", "--caption-use", "4")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("arvision eval: error: this pipeline has no text encoder")


def test_the_installed_cli_runs_the_same_evaluation(hart_fixture_dir, capsys):
    from arvision.cli import main

    assert main(["eval", "hart-world", "--model", str(hart_fixture_dir), "--images-per-prompt", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(hart_fixture_dir) and report["top_k"] == "official"


def test_a_grid_it_cannot_write_is_refused_before_the_model_loads(tmp_path, capsys):
    from arvision.cli import main

    (tmp_path / "dir.png").mkdir()
    (tmp_path / "afile").write_text("x")
    base = ["eval", "hart-world", "--model", str(tmp_path / "missing"), "--grid"]
    for output, message in (
        ("dir.png", "it is a folder"),
        ("afile/g.png", f"{tmp_path / 'afile'} is a file"),
        ("grid.txt", "'.txt' is not an image format PIL writes"),
    ):
        assert main([*base, str(tmp_path / output)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"cannot write --grid {tmp_path / output}: {message}" in err and len(err.splitlines()) == 1


def test_the_grid_goes_into_a_new_folder(tmp_path, capsys):
    from arvision.cli import main

    grid = tmp_path / "new" / "grid.png"
    model = str(default_model_path("hart"))
    args = ["eval", "hart-world", "--model", model, "--images-per-prompt", "0", "--size", "32"]
    assert main([*args, "--grid", str(grid)]) == 0
    assert Image.open(grid).size[0] > 32  # the held-out prompts side by side


def test_a_first_seed_out_of_range_is_named_before_the_model_loads(tmp_path, capsys):
    from arvision.cli import main

    base = ["eval", "hart-world", "--model", str(tmp_path / "missing"), "--first-seed"]
    assert main([*base, str(10**23)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--first-seed must be within" in err and f"for 2 results, got {10**23}" in err and len(err.splitlines()) == 1
    assert main([*base, str(2**64), "--images-per-prompt", "0"]) == 2  # the grid still draws one
    assert "--first-seed must be within" in capsys.readouterr().err
