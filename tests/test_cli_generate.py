"""``arvision generate``: checks before the model loads, and the options it hands to each pipeline (recorded by
stand-ins for the pipelines' loaders; real generation runs in test_pipelines_hart / test_cli_vila_u)."""

import io
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from arvision.cli import main
from arvision.pipelines.hart import HartPipeline
from arvision.pipelines.vila_u import VilaUPipeline
from hart_common import HART_TINY
from vilau_common import FIXTURE as VILA_U_TINY


class _Pipeline:
    """Records how the CLI loads and calls a pipeline; every call returns blank images."""

    def __init__(self):
        self.loads, self.calls = [], []
        self.device = torch.device("cpu")

    def from_pretrained(self, folder, **kwargs):
        self.loads.append(kwargs)
        return self

    def _images(self, n):
        return [Image.new("RGB", (8, 8))] * n

    def __call__(self, prompt, **kwargs):  # HartPipeline
        self.calls.append(kwargs)
        return SimpleNamespace(images=self._images(len(prompt) * kwargs["num_images_per_prompt"]))

    def generate_image(self, prompt, n, seed, **kwargs):  # VilaUPipeline
        self.calls.append(kwargs)
        return self._images(len(prompt) * n)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["   "], "prompt 0 is empty"),
        (["a cat", "--negative-prompt", " "], "--negative-prompt is empty"),
        (["a cat", "--top-p", "2"], "top_p must be within"),
        (["a cat", "--temperature", "-1"], "temperature must be 0 (greedy) or a finite number"),
        (["a cat", "--top-k", "-2"], "top_k must be >= 0"),
        (["a cat", "--cfg", "1e9"], "--cfg must be within [0, 10000]"),
        (["a cat", "--seed", str(2**63 - 1), "-n", "2"], f"--seed must be within 0..{2**63 - 2} for 2 results"),
        (["a cat", "--seed", "-1"], "--seed must be within 0.."),  # the pipelines' range, which a negative leaves
        (["a cat", "--strength", "0.5"], "--strength needs --image"),
        (["a cat", "--image", "start.png", "--strength", "2"], "--strength needs --image and a value within 0..1"),
        (["a cat", "--image", "no-such-start.png"], "image file not found: no-such-start.png"),
        ([], "give a prompt or --prompts-file"),
        (["--prompts-file", "no-such-prompts.txt"], "prompts file not found: no-such-prompts.txt"),
    ],
)
def test_bad_prompts_and_sampling_are_refused_before_the_model_loads(tmp_path, capsys, extra, message):
    # the model folder does not exist: reaching the loader would report that instead
    args = ["generate", *extra, "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "o.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "missing") not in err


def test_hart_gets_the_sampling_flags_given_and_its_own_defaults_otherwise(tmp_path, monkeypatch):
    pipe = _Pipeline()
    monkeypatch.setattr(HartPipeline, "from_pretrained", pipe.from_pretrained)
    base = ["generate", "a cat", "--model", str(HART_TINY), "--quiet", "-o", str(tmp_path / "o.png")]
    assert main(base) == 0
    assert pipe.loads[0]["torch_dtype"] == torch.float32
    # guidance_scale and top_k are left to the pipeline (its folder may set them), as are top_p and temperature
    assert not {"guidance_scale", "top_k", "top_p", "temperature"} & set(pipe.calls[0])
    assert pipe.calls[0]["more_smooth"] is None  # the folder's (on for an official release)
    flags = ["--cfg", "2", "--top-k", "5", "--top-p", "0.8", "--temperature", "0.5", "--more-smooth"]
    assert main([*base, *flags, "--guidance-schedule", "constant", "--dtype", "bfloat16"]) == 0
    assert pipe.loads[1]["torch_dtype"] == torch.bfloat16
    call = pipe.calls[1]
    assert (call["guidance_scale"], call["top_k"], call["top_p"], call["temperature"]) == (2.0, 5, 0.8, 0.5)
    assert call["guidance_schedule"] == "constant" and "guidance_schedule" not in pipe.calls[0]
    assert call["more_smooth"] is True
    assert main([*base, "--no-more-smooth"]) == 0 and pipe.calls[2]["more_smooth"] is False


def test_hart_image_to_image_gets_the_image_and_strength(tmp_path, monkeypatch):
    pipe = _Pipeline()
    monkeypatch.setattr(HartPipeline, "from_pretrained", pipe.from_pretrained)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "start.png")
    base = ["generate", "a cat", "--model", str(HART_TINY), "--quiet", "-o", str(tmp_path / "o.png")]
    assert main([*base, "--image", str(tmp_path / "start.png"), "--strength", "0.3"]) == 0
    call = pipe.calls[0]
    assert call["strength"] == 0.3 and call["image"].size == (40, 30)
    assert call["image"].getpixel((0, 0)) == (255, 0, 0)
    assert main(base) == 0 and pipe.calls[1]["image"] is None and pipe.calls[1]["strength"] is None


def test_vila_u_loads_in_its_stored_dtype_unless_told(tmp_path, monkeypatch, capsys):
    pipe = _Pipeline()
    monkeypatch.setattr(VilaUPipeline, "from_pretrained", pipe.from_pretrained)
    base = ["generate", "a cat", "--model", str(VILA_U_TINY), "--quiet", "-o", str(tmp_path / "o.png")]
    assert main(base) == 0
    assert pipe.loads[0]["dtype"] is None and pipe.calls[0] == {}
    assert main([*base, "--dtype", "float32", "--top-k", "7", "--top-p", "0.5", "--temperature", "0"]) == 0
    assert pipe.loads[1]["dtype"] == torch.float32
    assert pipe.calls[1] == {"top_k": 7, "top_p": 0.5, "temperature": 0.0}
    assert main([*base, "--more-smooth"]) == 2
    assert "--more-smooth applies to HART models only" in capsys.readouterr().err
    assert main([*base, "--guidance-schedule", "linear"]) == 2
    assert "--guidance-schedule applies to HART models only" in capsys.readouterr().err


def test_image_i_of_a_seeded_run_is_the_run_of_seed_plus_i(tmp_path, tiny_qwen2_24):
    import numpy as np

    base = ["generate", "a red cube", "--model", str(HART_TINY), "--text-encoder", str(tiny_qwen2_24), "--quiet"]
    assert main([*base, "--seed", "5", "-n", "3", "-o", str(tmp_path / "batch.png")]) == 0
    assert main([*base, "--seed", "7", "-o", str(tmp_path / "alone.png")]) == 0
    third = np.asarray(Image.open(tmp_path / "batch-002.png"), dtype=int)
    alone = np.asarray(Image.open(tmp_path / "alone.png"), dtype=int)
    assert np.abs(third - alone).max() <= 1  # batched float sums round differently, by one level at most
    first = np.asarray(Image.open(tmp_path / "batch-000.png"), dtype=int)
    assert np.abs(first - alone).max() > 10


@pytest.mark.parametrize(
    "lines, extra, message",
    [
        ("a cat\n", ["a dog"], "give a prompt or --prompts-file"),
        ("\n  \n", [], "no prompts in"),
        ("a cat\n", ["--grid"], "--grid draws one prompt's images together"),
        ("a cat\n", ["--batch-size", "0"], "--batch-size must be at least 1"),
        ("a cat\n<UTF>", [], "not UTF-8 text"),
    ],
)
def test_a_prompts_file_is_checked_before_the_model_loads(tmp_path, capsys, lines, extra, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(lines.replace("<UTF>", "").encode() + (b"\xff\n" if "<UTF>" in lines else b""))
    out = tmp_path / "images"
    args = ["generate", *extra, "--prompts-file", str(prompts), "--model", str(tmp_path / "missing"), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "missing") not in err and not out.exists()
    assert main([*args[:-1], str(tmp_path / "grid.png")]) == 2  # -o names a folder in this mode


def test_a_prompts_file_draws_every_image_from_its_own_seed_and_a_rerun_keeps_what_is_there(
    tmp_path, tiny_qwen2_24, capsys
):
    import numpy as np

    (tmp_path / "prompts.txt").write_text("a red cube\n\na blue ball\na green cone\n")
    model = ["--model", str(HART_TINY), "--text-encoder", str(tiny_qwen2_24), "--quiet"]
    out = tmp_path / "images"
    args = ["generate", "--prompts-file", str(tmp_path / "prompts.txt"), *model, "-n", "2", "--batch-size", "2"]
    assert main([*args, "--seed", "10", "-o", str(out)]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == ["00000_0.png", "00000_1.png", "00001_0.png", "00001_1.png", "00002_0.png", "00002_1.png"]
    assert "6 images in" in capsys.readouterr().out
    # prompt 2 ("a green cone", after a blank line), image 1: seed 10 + 2 * 2 + 1
    assert main(["generate", "a green cone", *model, "--seed", "15", "-o", str(tmp_path / "alone.png")]) == 0
    alone = np.asarray(Image.open(tmp_path / "alone.png"), dtype=int)
    assert np.abs(np.asarray(Image.open(out / "00002_1.png"), dtype=int) - alone).max() <= 1
    assert np.abs(np.asarray(Image.open(out / "00002_0.png"), dtype=int) - alone).max() > 10
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    (out / "00001_0.png").unlink()  # as if the run had been killed before prompt 1 was written
    capsys.readouterr()
    assert main([*args, "--seed", "10", "-o", str(out)]) == 0
    assert "(2 drawn now)" in capsys.readouterr().out
    after = {path.name: path.read_bytes() for path in out.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before if name != "00001_0.png")  # kept, not redrawn
    redrawn, first = (np.asarray(Image.open(io.BytesIO(d["00001_0.png"])), dtype=int) for d in (after, before))
    assert np.abs(redrawn - first).max() <= 1  # drawn in a batch of one this time


def test_a_finished_prompts_file_run_does_not_load_the_model_again(tmp_path, monkeypatch, capsys):
    pipe = _Pipeline()
    monkeypatch.setattr(HartPipeline, "from_pretrained", pipe.from_pretrained)
    (tmp_path / "prompts.txt").write_text("a cat\na dog\na bird\n")
    args = ["generate", "--prompts-file", str(tmp_path / "prompts.txt"), "--model", str(HART_TINY), "--quiet"]
    assert main([*args, "--batch-size", "2", "-o", str(tmp_path / "out")]) == 0
    assert len(pipe.loads) == 1 and len(pipe.calls) == 2  # batches of 2 and 1 prompts
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    assert len(pipe.loads) == 1 and "(0 drawn now)" in capsys.readouterr().out
    (tmp_path / "out" / "00001.png").unlink()
    (tmp_path / "out" / "00001.png").mkdir()  # a folder where an image it must draw goes: named before the load
    assert main([*args, "-o", str(tmp_path / "out")]) == 2
    assert f"cannot write -o {tmp_path / 'out' / '00001.png'}: it is a folder" in capsys.readouterr().err
    assert len(pipe.loads) == 1


@pytest.mark.parametrize(
    "extra, output, message",
    [
        ([], "folder.png", "cannot write -o {d}/folder.png: it is a folder"),
        (["-n", "2"], "many.png", "cannot write -o {d}/many-001.png: it is a folder"),
        ([], "afile/g.png", "cannot write -o {d}/afile/g.png: {d}/afile is a file, not a folder"),
        (["--prompts-file", "prompts.txt"], "afile/sub", "cannot write -o {d}/afile/sub: {d}/afile is a file"),
        (["--prompts-file", "prompts.txt"], "afile", "cannot write -o {d}/afile: it is a file, not a folder"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, extra, output, message):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "many-001.png").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "prompts.txt").write_text("a cat\n")
    extra = [str(tmp_path / e) if e.endswith(".txt") else e for e in extra]
    prompt = [] if "--prompts-file" in extra else ["a cat"]
    args = ["generate", *prompt, *extra, "--model", str(tmp_path / "missing"), "-o", str(tmp_path / output)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(d=tmp_path) in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag", ["--image", "--prompts-file"])
def test_an_input_file_given_as_a_folder_is_named_as_one(tmp_path, capsys, flag):
    prompt = ["a cat"] if flag == "--image" else []
    out = tmp_path / ("o.png" if flag == "--image" else "o")
    args = ["generate", *prompt, flag, str(tmp_path), "--model", str(tmp_path / "missing"), "-o", str(out)]
    assert main(args) == 2
    what = "an image file" if flag == "--image" else "a prompts file"  # named by the readers, before the load
    assert f"{tmp_path} is a folder, not {what}" in capsys.readouterr().err
