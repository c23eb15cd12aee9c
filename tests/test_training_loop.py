import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from arvision.errors import CheckpointError, InputError
from arvision.training import checkpointing
from arvision.training.loop import (
    EMA,
    OptimConfig,
    ShardedBatchSampler,
    Trainer,
    TrainingDiverged,
    learning_rate,
    steps_within,
)
from toy_task import SlowToyTask, ToyModel, ToyTask, toy_config


def final_weights(out_dir):
    return load_file(str(out_dir / "final" / "model.safetensors"))


def checkpoint_names(out_dir):
    return [p.name for p in checkpointing.checkpoint_dirs(out_dir / "checkpoints")]


def logged_steps(out_dir):
    return [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_learning_rate_warmup_then_cosine():
    optim = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [learning_rate(s, 104, optim) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(54, 104, optim) == pytest.approx(0.55)
    assert learning_rate(104, 104, optim) == pytest.approx(0.1)


def test_batch_sampler_shards_and_resumes_exactly():
    single = ShardedBatchSampler(10, 4, seed=3)
    ranks = [ShardedBatchSampler(10, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for g in range(6):
        assert single.batch(g) == ranks[0].batch(g) + ranks[1].batch(g)
    first_epoch = [i for g in range(5) for i in ShardedBatchSampler(10, 2, seed=3).batch(g)]
    assert sorted(first_epoch) == list(range(10))
    resumed = iter(ShardedBatchSampler(10, 4, seed=3, start_batch=4))
    assert next(resumed) == single.batch(4)


def test_ema_follows_the_formula_with_a_warmed_up_decay():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    assert [ema.decay_at(s) for s in (0, 8, 80, 1000)] == [0.1, 0.5, 0.9, 0.9]
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(step=1000)
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * before + 0.1 * (before + 1.0))
    # Early on the average follows the weights closely: 9/10 of the first update is the new weights.
    fresh = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.add_(1.0)
    fresh.update(step=0)
    torch.testing.assert_close(fresh.shadow["weight"], 0.1 * (before + 1.0) + 0.9 * (before + 2.0))


def test_training_lowers_the_loss_and_logs(tmp_path):
    config = toy_config(tmp_path, max_steps=30, log_every=5, save_every=10)
    Trainer(config, ToyTask()).run()
    records = [eval(line, {"nan": math.nan}) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert records[-1]["loss"] < records[0]["loss"] / 2
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path / "checkpoints")] == [
        "step_00000010",
        "step_00000020",
        "step_00000030",
    ]


def test_crash_and_resume_is_bit_for_bit(tmp_path):
    Trainer(toy_config(tmp_path / "a", save_every=2, ema_decay=0.5), ToyTask(dropout=0.2)).run()
    crashed = toy_config(tmp_path / "b", save_every=2, ema_decay=0.5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, ToyTask(dropout=0.2, fail_at_call=4)).run()
    assert checkpointing.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000002"
    Trainer(crashed, ToyTask(dropout=0.2)).run(resume=True)
    expected, resumed = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_export_writes_a_checkpoints_weights_with_its_ema(tmp_path):
    config = toy_config(tmp_path, max_steps=4, save_every=2, ema_decay=0.5)
    Trainer(config, ToyTask(dropout=0.2)).run()
    last = Trainer(config, ToyTask(dropout=0.2)).export()
    assert last == tmp_path / "exports" / "step_00000004"
    final, exported = final_weights(tmp_path), load_file(str(last / "model.safetensors"))
    assert final.keys() == exported.keys()
    assert all(torch.equal(final[k], exported[k]) for k in final)
    earlier = Trainer(config, ToyTask()).export(tmp_path / "checkpoints" / "step_00000002", tmp_path / "at2")
    assert not torch.equal(load_file(str(earlier / "model.safetensors"))["blocks.1.weight"], final["blocks.1.weight"])
    by_name = Trainer(config, ToyTask()).export("step_00000002", tmp_path / "at2_by_name")  # in the run's folder
    assert load_file(str(by_name / "model.safetensors")).keys() == final.keys()
    with pytest.raises(CheckpointError, match=r"checkpoint not found: step_00000003 \(nor in .*checkpoints\)"):
        Trainer(config, ToyTask()).export("step_00000003")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        Trainer(config, ToyTask()).export(tmp_path / "exports")
    with pytest.raises(CheckpointError, match="no checkpoint to export"):
        Trainer(toy_config(tmp_path / "empty"), ToyTask()).export()
    # the default folder is the run's own and is replaced; a folder of the caller's is never wiped
    assert Trainer(config, ToyTask()).export() == last
    with pytest.raises(InputError, match="exists and is not empty"):
        Trainer(config, ToyTask()).export(None, tmp_path / "checkpoints")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = toy_config(tmp_path, save_every=2)
    # the 4th step fails: metrics.jsonl and the checkpoints would call it step 4
    with pytest.raises(TrainingDiverged, match=r"step 4; stopped.*step_00000002"):
        Trainer(config, ToyTask(nan_at_call=4)).run()
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path / "checkpoints")] == ["step_00000002"]


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_nan_gradient_of_a_finite_loss_stops_before_the_weights_take_it(tmp_path, grad_clip):
    # The NaN gradient comes at step 4, the last before a save: applied, it would be saved as step_00000004.
    optim = OptimConfig(lr=0.05, warmup_steps=1, grad_clip=grad_clip)
    config = toy_config(tmp_path, save_every=2, log_every=1, optim=optim)
    with pytest.raises(TrainingDiverged, match=r"gradient norm is not finite at step 4.*step_00000002"):
        Trainer(config, ToyTask(nan_grad_at_call=4)).run()
    assert checkpoint_names(tmp_path) == ["step_00000002"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["grad_norm"] > 0 for r in records)


def test_failed_checkpoint_write_leaves_previous_one_intact(tmp_path, monkeypatch):
    config = toy_config(tmp_path, save_every=2, keep_last=1)
    real_save, calls = checkpointing.dcp.save, []

    def flaky_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpointing.dcp, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        Trainer(config, ToyTask()).run()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]
    state = checkpointing.read_json(root / "step_00000002" / checkpointing.STATE_FILE)
    assert state == {"step": 2, "seed": 0, "batch_size": 4, "grad_accum": 1, "world_size": 1}


def test_keep_last_prunes_old_checkpoints(tmp_path):
    Trainer(toy_config(tmp_path, max_steps=6, save_every=1, keep_last=2), ToyTask()).run()
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path / "checkpoints")] == [
        "step_00000005",
        "step_00000006",
    ]


def test_time_limit_stops_checkpoints_and_exports(tmp_path, monkeypatch):
    import arvision.training.loop as loop

    clock = iter(range(0, 10_000, 10))  # every reading of the clock advances it by 10 s
    monkeypatch.setattr(loop.time, "time", lambda: float(next(clock)))
    config = toy_config(tmp_path, max_steps=30, log_every=50, save_every=50, max_time_s=25)
    final = Trainer(config, ToyTask()).run()
    records = [eval(line, {"nan": math.nan}) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # the clock reads 10, 20, 30 s after steps 1-3: step 3 is past 25 s, and is logged off the log_every grid
    assert [r["step"] for r in records] == [3]
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path / "checkpoints")] == ["step_00000003"]
    assert (final / "model.safetensors").is_file()
    # the schedule still spans max_steps: --resume continues the same run to the end
    monkeypatch.setattr(loop.time, "time", lambda: 0.0)
    config.max_time_s = 0
    Trainer(config, ToyTask()).run(resume=True)
    assert checkpointing.checkpoint_dirs(tmp_path / "checkpoints")[-1].name == "step_00000030"


def test_stop_at_step_cuts_the_schedule_short_and_resumes_bit_for_bit(tmp_path):
    Trainer(toy_config(tmp_path / "full", max_steps=12, save_every=50), ToyTask()).run()
    config = toy_config(tmp_path / "cut", max_steps=12, save_every=50, stop_at_step=5)
    cut = Trainer(config, ToyTask()).run()
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 5 and (cut / "model.safetensors").is_file()
    # the learning rate of a 12-step schedule, not of a 5-step one
    assert records[-1]["lr"] == pytest.approx(learning_rate(4, 12, config.optim))
    assert checkpointing.checkpoint_dirs(tmp_path / "cut" / "checkpoints")[-1].name == "step_00000005"
    # resumed with the same stop: nothing to train, the same export
    before = final_weights(tmp_path / "cut")
    Trainer(config, ToyTask()).run(resume=True)
    assert all(torch.equal(before[k], v) for k, v in final_weights(tmp_path / "cut").items())
    config.stop_at_step = 0
    Trainer(config, ToyTask()).run(resume=True)
    for key, value in final_weights(tmp_path / "full").items():
        assert torch.equal(final_weights(tmp_path / "cut")[key], value), key


class ToyTaskWithAnIdleLayer(ToyTask):
    """A layer that never gets a gradient (as a scale a low-resolution tokenizer run never reaches)."""

    def build_model(self) -> nn.Module:
        model = super().build_model()
        model.idle = nn.Linear(4, 4)
        return model


def test_a_parameter_without_optimizer_state_resumes_bit_for_bit(tmp_path):
    Trainer(toy_config(tmp_path / "full", max_steps=6, save_every=50), ToyTaskWithAnIdleLayer()).run()
    config = toy_config(tmp_path / "cut", max_steps=6, save_every=50, stop_at_step=3)
    Trainer(config, ToyTaskWithAnIdleLayer()).run()
    config.stop_at_step = 0
    Trainer(config, ToyTaskWithAnIdleLayer()).run(resume=True)  # its checkpoint holds no state for idle.*
    for key, value in final_weights(tmp_path / "full").items():
        assert torch.equal(final_weights(tmp_path / "cut")[key], value), key


def test_export_dtype_rounds_the_exported_weights_only(tmp_path):
    config = toy_config(tmp_path, max_steps=3, save_every=3, export_dtype="float16")
    final = Trainer(config, ToyTask()).run()
    weights = final_weights(tmp_path)
    assert {v.dtype for v in weights.values()} == {torch.float16}
    full = toy_config(tmp_path / "fp32", max_steps=3, save_every=3)
    reference = final_weights(Trainer(full, ToyTask()).run().parent)
    for key, value in reference.items():
        assert value.dtype == torch.float32 and torch.equal(weights[key], value.half()), key
    left = [p.name for p in final.parent.iterdir() if p.name.startswith(".")]
    assert left == [".lock"], "no temporary folder left, only the run's lock file"


def test_a_failed_export_leaves_the_previous_final_folder(tmp_path):
    Trainer(toy_config(tmp_path, max_steps=2, save_every=2), ToyTask()).run()
    before = final_weights(tmp_path)

    class BrokenExport(ToyTask):
        def export(self, weights, folder):
            (folder / "partial.txt").write_text("half written")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Trainer(toy_config(tmp_path, max_steps=4, save_every=2), BrokenExport()).run(resume=True)
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["model.safetensors"]
    assert all(torch.equal(before[k], v) for k, v in final_weights(tmp_path).items())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".final")]


def test_steps_within_fits_the_time_left_between_step_and_max_steps():
    assert steps_within(budget_s=100, elapsed_s=20, step=10, steps_per_s=2.0, max_steps=1000) == 170
    assert steps_within(budget_s=100, elapsed_s=20, step=10, steps_per_s=2.0, max_steps=50) == 50
    assert steps_within(budget_s=100, elapsed_s=120, step=10, steps_per_s=2.0, max_steps=1000) == 10


def fake_clock(monkeypatch) -> list[float]:
    import arvision.training.loop as loop

    clock = [0.0]
    monkeypatch.setattr(loop.time, "time", lambda: clock[0])
    return clock


def test_time_budget_sizes_the_schedule_to_end_in_time(tmp_path, monkeypatch):
    # 10 s per step: the calibration measures 0.1 steps/s over steps 2..22, when 220 s of the 500 are gone,
    # so 28 more steps fit and the cosine ends at step 50.
    clock = fake_clock(monkeypatch)
    config = toy_config(tmp_path, max_steps=1000, log_every=5, save_every=1000, time_budget_s=500)
    Trainer(config, SlowToyTask(clock, 10.0)).run()
    records = [eval(line, {"nan": math.nan}) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 50
    assert records[-1]["lr"] == pytest.approx(learning_rate(49, 50, config.optim))
    latest = checkpointing.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step_00000050"
    assert json.loads((latest / checkpointing.STATE_FILE).read_text())["schedule_steps"] == 50
    # max_steps caps the sized schedule
    clock[0] = 0.0
    config = toy_config(tmp_path / "capped", max_steps=30, log_every=5, save_every=1000, time_budget_s=500)
    Trainer(config, SlowToyTask(clock, 10.0)).run()
    lines = (tmp_path / "capped" / "metrics.jsonl").read_text().splitlines()
    assert eval(lines[-1], {"nan": math.nan})["step"] == 30


def test_time_budget_shorter_than_the_warmup_is_reported(tmp_path, monkeypatch, capsys):
    clock = fake_clock(monkeypatch)
    config = toy_config(tmp_path, max_steps=1000, log_every=1000, time_budget_s=300)
    config.optim.warmup_steps = 100
    Trainer(config, SlowToyTask(clock, 10.0)).run()
    out = capsys.readouterr().out
    assert "30 steps fit" in out and "30 steps do not pass optim.warmup_steps=100" in out


def test_a_schedule_shorter_than_the_warmup_is_reported(tmp_path, capsys):
    config = toy_config(tmp_path, max_steps=3)
    config.optim.warmup_steps = 100
    Trainer(config, ToyTask()).run()
    assert "3 steps do not pass optim.warmup_steps=100" in capsys.readouterr().out


def test_a_run_refuses_the_folder_another_run_is_training_in(tmp_path):
    import fcntl
    import os

    config = toy_config(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with (tmp_path / "run" / ".lock").open("a+") as held:  # what the other run holds while it trains
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(InputError, match=r"run is in use by another training run \(process 4242\)"):
            Trainer(config, ToyTask()).run()
        assert not (tmp_path / "run" / "checkpoints").exists()
    Trainer(config, ToyTask()).run()  # released (as the system releases a killed run's lock): it trains
    assert (tmp_path / "run" / ".lock").read_text() == f"{os.getpid()}\n"


def test_out_dir_expands_a_home_and_names_a_file_in_the_way(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    Trainer(toy_config("~/runs/toy"), ToyTask()).run()
    assert (tmp_path / "runs" / "toy" / "final").is_dir()
    (tmp_path / "notes.txt").write_text("")
    for out_dir in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "sub"):
        with pytest.raises(InputError, match=f"cannot use out_dir {out_dir}"):
            Trainer(toy_config(out_dir), ToyTask()).run()


def test_time_budget_resume_keeps_the_sized_schedule_bit_for_bit(tmp_path, monkeypatch):
    clock = fake_clock(monkeypatch)
    options = dict(max_steps=1000, save_every=10, keep_last=10, ema_decay=0.5, time_budget_s=500)
    Trainer(toy_config(tmp_path / "a", **options), SlowToyTask(clock, 10.0, dropout=0.2)).run()
    clock[0] = 0.0
    crashed = toy_config(tmp_path / "b", **options)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, SlowToyTask(clock, 10.0, dropout=0.2, fail_at_call=35)).run()
    assert checkpointing.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000030"
    clock[0] = 0.0  # and a faster machine: the resumed run must not size a new schedule
    Trainer(crashed, SlowToyTask(clock, 1.0, dropout=0.2)).run(resume=True)
    assert checkpointing.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000050"
    expected, resumed = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


class TwoNetworkTask(ToyTask):
    """The toy regression plus a second network (a stand-in for a GAN's discriminator) whose loss term has
    ``weight`` times the scale; each is a clip group."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def build_model(self):
        model = ToyModel()
        model.critic = torch.nn.Linear(4, 1)
        return model

    def loss(self, model, batch, generator):
        loss, logs = super().loss(model, batch, generator)
        return loss + self.weight * model.critic(batch[0]).square().mean(), logs

    def clip_groups(self, model):
        return {"model": list(model.blocks.parameters()), "critic": list(model.critic.parameters())}


def test_clip_groups_clip_each_network_on_its_own(tmp_path):
    weights, logs = {}, {}
    for weight in (1.0, 1e9):
        out = tmp_path / str(weight)
        optim = OptimConfig(lr=0.05, warmup_steps=1, grad_clip=0.1)
        Trainer(toy_config(out, max_steps=3, log_every=1, optim=optim), TwoNetworkTask(weight)).run()
        weights[weight] = final_weights(out)
        logs[weight] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm_critic"] > 1e6 for r in logs[1e9])
    assert [r["grad_norm"] for r in logs[1.0]] == [r["grad_norm"] for r in logs[1e9]]
    # In one norm with the critic's, the regression's gradients would shrink by ~1e9, and its Adam steps with them.
    for key in ("blocks.0.weight", "blocks.1.bias"):
        torch.testing.assert_close(weights[1.0][key], weights[1e9][key], rtol=0, atol=0)


def test_clip_groups_must_hold_every_trainable_parameter(tmp_path):
    class Partial(TwoNetworkTask):
        def clip_groups(self, model):
            return {"model": list(model.blocks.parameters())}

    with pytest.raises(ValueError, match="clip_groups must hold every trainable parameter"):
        Trainer(toy_config(tmp_path), Partial(1.0)).run()


def test_a_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    Trainer(toy_config(tmp_path, max_steps=8, save_every=2, keep_last=3), ToyTask()).run()
    before = final_weights(tmp_path)
    # A second run there would have its checkpoints pruned among the first's, and a resume would mix the two.
    with pytest.raises(InputError, match="holds the checkpoints of an earlier run: pass --resume"):
        Trainer(toy_config(tmp_path, max_steps=4, save_every=2, seed=1), ToyTask()).run()
    assert checkpoint_names(tmp_path) == ["step_00000004", "step_00000006", "step_00000008"]
    assert all(torch.equal(before[k], v) for k, v in final_weights(tmp_path).items())


def test_a_run_stopped_before_its_first_checkpoint_starts_afresh(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Trainer(toy_config(tmp_path, save_every=5, log_every=1), ToyTask(fail_at_call=3)).run()
    assert checkpoint_names(tmp_path) == [] and logged_steps(tmp_path) == [1, 2]
    Trainer(toy_config(tmp_path, max_steps=3, log_every=1), ToyTask()).run()
    assert logged_steps(tmp_path) == [1, 2, 3]


def test_resume_rewinds_the_metrics_and_keeps_the_first_config(tmp_path):
    config = toy_config(tmp_path, save_every=2, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, ToyTask(fail_at_call=4)).run()
    assert logged_steps(tmp_path) == [1, 2, 3]
    with (tmp_path / "metrics.jsonl").open("a") as log:
        log.write('{"step": 4, "lo')  # a record cut short by the kill
    config.max_steps = 6
    Trainer(config, ToyTask()).run(resume=True)
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert json.loads((tmp_path / "config.json").read_text())["max_steps"] == 5
    assert json.loads((tmp_path / "config.resume_00000002.json").read_text())["max_steps"] == 6


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("batch_size", 2, "batch_size=2: it was written with batch_size=4"),
        ("grad_accum", 2, "grad_accum=2: it was written with grad_accum=1"),
        ("seed", 1, "seed=1: it was written with seed=0"),
        ("world_size", None, "world_size=1: it was written with world_size=2"),
    ],
)
def test_resume_refuses_another_data_layout(tmp_path, name, value, message):
    Trainer(toy_config(tmp_path, max_steps=2, save_every=2), ToyTask()).run()
    config = toy_config(tmp_path, max_steps=4, save_every=2)
    if value is None:  # as if written by two processes: the number of processes is not a setting
        state_file = tmp_path / "checkpoints" / "step_00000002" / checkpointing.STATE_FILE
        state_file.write_text(json.dumps({**json.loads(state_file.read_text()), name: 2}))
    else:
        setattr(config, name, value)
    with pytest.raises(InputError, match=message):
        Trainer(config, ToyTask()).run(resume=True)
    assert checkpoint_names(tmp_path) == ["step_00000002"]


def test_only_step_folders_named_by_a_number_are_checkpoints(tmp_path):
    Trainer(toy_config(tmp_path, max_steps=4, save_every=2, keep_last=1), ToyTask()).run()
    root = tmp_path / "checkpoints"
    shutil.copytree(root / "step_00000004", root / "step_00000004.bak")
    assert checkpoint_names(tmp_path) == ["step_00000004"]
    Trainer(toy_config(tmp_path, max_steps=6, save_every=2, keep_last=1), ToyTask()).run(resume=True)
    assert checkpoint_names(tmp_path) == ["step_00000006"]
    assert (root / "step_00000004.bak" / checkpointing.STATE_FILE).is_file(), "a stray folder is not pruned"


class TiedToyTask(ToyTask):
    """The toy model with its first layer registered twice, as a language model's head tied to its embedding."""

    def build_model(self):
        model = ToyModel()
        model.alias = model.blocks[0]
        return model


def test_ema_export_writes_the_average_under_every_name_of_a_tied_weight(tmp_path):
    Trainer(toy_config(tmp_path / "raw"), TiedToyTask()).run()
    Trainer(toy_config(tmp_path / "ema", ema_decay=0.9), TiedToyTask()).run()
    raw, ema = final_weights(tmp_path / "raw"), final_weights(tmp_path / "ema")
    assert not torch.equal(ema["blocks.0.weight"], raw["blocks.0.weight"])
    assert torch.equal(ema["alias.weight"], ema["blocks.0.weight"])
    assert torch.equal(ema["alias.bias"], ema["blocks.0.bias"])
