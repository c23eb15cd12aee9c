"""Two gloo processes under torchrun must train the same weights as one process with the doubled batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arvision.training import checkpointing
from arvision.training.loop import Trainer
from toy_task import ToyTask, toy_config

TOY_SCRIPT = Path(__file__).parent / "toy_task.py"


def torchrun(out_dir: Path, parallel: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # torchrun's module under this interpreter: a torchrun script on PATH may belong to another environment
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*launcher, str(TOY_SCRIPT), str(out_dir), parallel, "2", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    Trainer(toy_config(out, batch_size=4, ema_decay=0.5), ToyTask()).run()
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun gloo test")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_run_matches_single_process(tmp_path, single_process, parallel):
    result = torchrun(tmp_path, parallel)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert weights.keys() == single_process.keys()
    for key, value in single_process.items():
        torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-5, msg=key)
    shards = sorted(p.name for p in (tmp_path / "checkpoints" / "step_00000005").iterdir())
    assert "rng_rank0.pt" in shards and "rng_rank1.pt" in shards and ".metadata" in shards


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun gloo test")
def test_an_error_on_one_rank_ends_the_run_instead_of_hanging_it(tmp_path):
    # Rank 1 raises at its second step while rank 0 waits in DDP's gradient all-reduce: a barrier on the way
    # out of the failing rank would hang both until gloo's 30-minute timeout.
    result = torchrun(tmp_path, "ddp", "failing_rank=1", timeout=90)
    assert result.returncode != 0
    assert "simulated crash" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun gloo test")
def test_ranks_with_different_clocks_size_one_time_budget_schedule(tmp_path):
    # Steps take 10 s on rank 0's clock and 10.5 s on rank 1's: of the 500 s, rank 0 fits 50 steps, rank 1 47.
    # Ranks that sized different schedules would stop at different steps and break each other's collectives.
    result = torchrun(tmp_path, "ddp", "budget=500", timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    latest = checkpointing.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step_00000047"
    assert json.loads((latest / checkpointing.STATE_FILE).read_text())["schedule_steps"] == 47


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun gloo test")
def test_a_resume_on_more_ranks_is_refused_by_every_rank(tmp_path):
    # Checked before the collective load: rank 1, which has no RNG file in a one-process checkpoint, must not
    # fail alone while rank 0 waits for it inside the load.
    config = toy_config(tmp_path, batch_size=2, ema_decay=0.5)
    config.stop_at_step = 3
    Trainer(config, ToyTask()).run()
    result = torchrun(tmp_path, "ddp", "resume=1", timeout=90)
    assert result.returncode != 0
    assert result.stderr.count("with world_size=2: it was written with world_size=1") == 2, result.stderr[-3000:]
