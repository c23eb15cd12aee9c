import json
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from arvision.cli import main
from arvision.tokenizers.hart_tokenizer import HybridTokenizer
from arvision.training import checkpointing

TINY = {
    "max_steps": 12,
    "batch_size": 2,
    "save_every": 1,
    "keep_last": 2,
    "progress": False,
    "model": {
        "tokenizer": {"vocab_size": 16, "z_channels": 4, "ch": 8, "ch_mult": [1, 2], "v_patch_nums": [1, 2, 4, 8]},
        "loss": {"mode": "full"},
    },
    "data": {"resolution": 16, "length": 64},
}


def train_cmd(config_path, out_dir, *extra):
    return [
        sys.executable,
        "-m",
        "arvision",
        "train",
        "tokenizer",
        "--config",
        str(config_path),
        f"out_dir={out_dir}",
        *extra,
    ]


def test_killed_run_resumes_to_identical_weights(tmp_path):
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(TINY))
    subprocess.run(train_cmd(config_path, tmp_path / "a"), check=True, capture_output=True, timeout=300)

    run = subprocess.Popen(train_cmd(config_path, tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while (
        checkpointing.latest_checkpoint(tmp_path / "b" / "checkpoints") is None
        or int(checkpointing.latest_checkpoint(tmp_path / "b" / "checkpoints").name.removeprefix("step_")) < 3
    ):
        assert run.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed_at = int(checkpointing.latest_checkpoint(tmp_path / "b" / "checkpoints").name.removeprefix("step_"))
    assert 3 <= killed_at < TINY["max_steps"]

    subprocess.run(train_cmd(config_path, tmp_path / "b", "--resume"), check=True, capture_output=True, timeout=300)
    expected = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    # The export is a regular tokenizer folder.
    assert HybridTokenizer.from_pretrained(tmp_path / "a" / "final").config.vocab_size == 16
    # So is a checkpoint written out with --export (the latest one holds the final weights).
    assert main(["train", "tokenizer", "--config", str(config_path), f"out_dir={tmp_path / 'a'}", "--export"]) == 0
    exported = load_file(str(tmp_path / "a" / "exports" / "step_00000012" / "model.safetensors"))
    assert all(torch.equal(expected[k], exported[k]) for k in expected)
    # the override after a bare --export is an override, not the checkpoint's name
    assert main(["train", "tokenizer", "--config", str(config_path), "--export", f"out_dir={tmp_path / 'a'}"]) == 0


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "tokenizer", f"out_dir={tmp_path}", "data.source=nowhere", "max_steps=1"]) == 2
    assert "data.source 'nowhere'" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", "tokenizer", f"out_dir={tmp_path}", "-o", str(tmp_path / "x")]) == 2
    assert "-o/--output goes with --export" in capsys.readouterr().err


def test_a_config_file_of_another_task_is_refused_by_name(tmp_path, capsys):
    config = tmp_path / "tok.yaml"
    config.write_text("task: tokenizer\nmodel:\n  loss:\n    mode: full\n")
    assert main(["train", "hart", "--config", str(config), f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "tok.yaml names task 'tokenizer', but this is `arvision train hart`" in err
    assert "unknown config key" not in err
    assert main(["train", "hart", "--config", str(config), f"out_dir={tmp_path}", "task=vila-u"]) == 2
    assert "the override task= names task 'vila-u'" in capsys.readouterr().err


def test_the_tokenizer_trains_on_a_folder_of_images(tmp_path, capsys):
    from PIL import Image

    for i in range(6):
        (tmp_path / "imgs" / "sub").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 18), (40 * i, 100, 200 - 30 * i)).save(tmp_path / "imgs" / "sub" / f"{i}.png")
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps({**TINY, "max_steps": 2, "data": {"resolution": 16}}))
    args = ["train", "tokenizer", "--config", str(config_path), f"out_dir={tmp_path / 'run'}"]
    assert main([*args, "data.source=images", f"data.path={tmp_path / 'imgs'}"]) == 0
    assert HybridTokenizer.from_pretrained(tmp_path / "run" / "final").config.vocab_size == 16
    assert main([*args, "data.source=images", f"out_dir={tmp_path / 'other'}"]) == 2
    assert "data.source 'images' needs data.path" in capsys.readouterr().err
    assert main([*args, "data.policy=stretch", f"out_dir={tmp_path / 'third'}"]) == 2
    assert "unknown crop policy 'stretch'" in capsys.readouterr().err
