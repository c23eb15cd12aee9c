"""A tiny regression task for testing the training loop without a real model (also run under torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from arvision.checkpoint import save_state_dict
from arvision.training.loop import OptimConfig, TrainConfig, Trainer
from arvision.training.tasks import TrainingTask


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 16), nn.Linear(16, 1)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.dropout(torch.tanh(self.blocks[0](x)))
        return F.mse_loss(self.blocks[1](h).squeeze(-1), y)


class ToyData(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int):
        x = torch.randn(4, generator=torch.Generator().manual_seed(index))
        return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0])


class ToyTask(TrainingTask):
    name = "toy"

    def __init__(
        self,
        dropout: float = 0.0,
        fail_at_call: int | None = None,
        nan_at_call: int | None = None,
        nan_grad_at_call: int | None = None,
    ):
        self.dropout, self.fail_at_call, self.nan_at_call = dropout, fail_at_call, nan_at_call
        self.nan_grad_at_call = nan_grad_at_call
        self.calls = 0

    def build_model(self) -> nn.Module:
        return ToyModel(self.dropout)

    def build_dataset(self) -> Dataset:
        return ToyData()

    def loss(self, model, batch, generator):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt("simulated crash")
        x, y = batch
        scale = 1 + torch.rand((), generator=generator)  # batch-level randomness, restored on resume
        loss = model(x, y) * scale
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        if self.calls == self.nan_grad_at_call:  # a finite loss (+ 0) whose gradient is 0 * inf = NaN
            loss = loss + torch.sqrt(next(model.parameters()).sum() * 0)
        return loss, {"scale": scale.item()}

    def shard_units(self, model):
        return list(model.blocks)

    def export(self, weights, folder: Path) -> None:
        save_state_dict(weights, Path(folder) / "model.safetensors")


class SlowToyTask(ToyTask):
    """Each step takes ``seconds_per_step`` of a fake clock (``clock[0]``) that the training loop reads."""

    def __init__(self, clock: list[float], seconds_per_step: float, **options):
        super().__init__(**options)
        self.clock, self.seconds_per_step = clock, seconds_per_step

    def loss(self, model, batch, generator):
        self.clock[0] += self.seconds_per_step
        return super().loss(model, batch, generator)


def toy_config(
    out_dir, parallel: str = "none", batch_size: int = 4, ema_decay: float = 0.0, **overrides
) -> TrainConfig:
    config = TrainConfig(
        task="toy",
        out_dir=str(out_dir),
        max_steps=5,
        batch_size=batch_size,
        parallel=parallel,
        save_every=5,
        ema_decay=ema_decay,
        progress=False,
        optim=OptimConfig(lr=0.05, warmup_steps=1),
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


if __name__ == "__main__":
    # torchrun entry: python toy_task.py OUT_DIR PARALLEL BATCH EMA [failing_rank=R] [budget=SECONDS] [resume=1]
    # failing_rank: that rank raises at its second step. budget: time_budget_s on a fake clock whose steps take
    # 10 s on rank 0 and 5% longer on each further rank. resume: continue from OUT_DIR's latest checkpoint.
    out, parallel, batch, ema = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    options = dict(arg.split("=") for arg in sys.argv[5:])
    rank = int(os.environ["RANK"])
    config = toy_config(out, parallel, batch, ema)
    task = ToyTask(fail_at_call=2 if options.get("failing_rank") == str(rank) else None)
    if "budget" in options:
        import arvision.training.loop as loop

        clock = [0.0]
        loop.time = SimpleNamespace(time=lambda: clock[0])
        task = SlowToyTask(clock, 10.0 * (1 + rank / 20))
        config.max_steps, config.save_every, config.time_budget_s = 1000, 1000, float(options["budget"])
    Trainer(config, task).run(resume=options.get("resume") == "1")
