"""``arvision train TASK --config FILE [key=value ...] [--resume]``: run the shared training loop.

``--export [CHECKPOINT]`` trains nothing: it writes a saved checkpoint (default: the run's latest) as a
model folder that ``from_pretrained`` and ``--model`` take, to look at a run before it ends.

Launch with ``torchrun --nproc_per_node=N -m arvision train ...`` for DDP/FSDP2 on several processes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from arvision.errors import InputError
from arvision.training.config import load_config, parse_overrides
from arvision.training.loop import TrainConfig, Trainer
from arvision.training.tasks import TASK_NAMES, build_task


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a tokenizer or generator (torchrun for several processes)")
    p.add_argument("task", choices=TASK_NAMES, help="what to train")
    p.add_argument("--config", type=Path, default=None, help="YAML/TOML/JSON file with TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    p.add_argument(
        "--export",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="only write a checkpoint (default: the latest in out_dir) as a model folder",
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="with --export: the folder to write")
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested keys (optim.lr=3e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.export is not None and "=" in args.export and not Path(args.export).exists():
        # `--export out_dir=runs/x`: the optional CHECKPOINT took an override
        args.overrides, args.export = [args.export, *args.overrides], "latest"
    if args.output is not None and args.export is None:
        raise InputError("-o/--output goes with --export; a training run writes its weights to OUT_DIR/final")
    config = load_config(TrainConfig, args.config, args.overrides, base={"task": args.task})
    if config.task != args.task:  # its model and data sections would only be reported as unknown keys
        where = "the override task=" if "task" in parse_overrides(args.overrides) else f"the config file {args.config}"
        raise InputError(
            f"{where} names task {config.task!r}, but this is `arvision train {args.task}`: "
            f"run `arvision train {config.task}` with it, or use a {args.task} config"
        )
    task = build_task(config.task, config.model, config.data, seed=config.seed)
    trainer = Trainer(config, task)
    first_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, one line for the whole job
    if args.export is not None:
        folder = trainer.export(None if args.export == "latest" else args.export, args.output)
        if first_rank:
            print(f"checkpoint exported to {folder}")
        return 0
    final = trainer.run(resume=args.resume)
    if first_rank:
        print(f"trained weights written to {final}")
    return 0
