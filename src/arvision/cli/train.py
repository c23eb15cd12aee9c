"""``arvision train TASK --config FILE [key=value ...] [--resume]``: run the shared training loop.

Launch with ``torchrun --nproc_per_node=N -m arvision train ...`` for DDP/FSDP2 on several processes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arvision.training.config import load_config
from arvision.training.loop import TrainConfig, Trainer
from arvision.training.tasks import TASK_NAMES, build_task


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a tokenizer or generator (torchrun for several processes)")
    p.add_argument("task", choices=TASK_NAMES, help="what to train")
    p.add_argument("--config", type=Path, default=None, help="YAML/TOML/JSON file with TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested keys (optim.lr=3e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(TrainConfig, args.config, args.overrides, base={"task": args.task})
    config.task = args.task  # the command line names the task, whatever the file says
    task = build_task(config.task, config.model, config.data, seed=config.seed)
    final = Trainer(config, task).run(resume=args.resume)
    print(f"trained weights written to {final}")
    return 0
