"""``arvision recipe FILE``: run a training recipe's stages in order (:mod:`arvision.training.recipe`).

Each stage runs as its own ``arvision train`` process (under ``torchrun`` with ``--nproc-per-node N``), so
every stage starts from a clean process, as the commands of a model card would. Stages already done are
skipped and an interrupted one resumes: after a crash or a kill, the same command continues.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from arvision.errors import ArvisionError
from arvision.training.checkpointing import latest_checkpoint
from arvision.training.recipe import load_recipe, stage_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recipe", help="train a model's stages in order (resumable; configs/recipes/)")
    p.add_argument("recipe", type=Path, help="recipe file (YAML/TOML/JSON): out_dir and a list of stages")
    p.add_argument("--nproc-per-node", type=int, default=1, help="run each stage under torchrun with N processes")
    p.add_argument("--until", metavar="STAGE", default=None, help="stop after this stage (default: the last)")
    p.add_argument("--dry-run", action="store_true", help="print each stage's command and state, run nothing")
    p.set_defaults(func=run)


def stage_command(arguments: list[str], nproc_per_node: int) -> list[str]:
    if nproc_per_node > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
        return [sys.executable, *launcher, "-m", "arvision", "train", *arguments]
    return [sys.executable, "-m", "arvision", "train", *arguments]


def run_stage(command: list[str]) -> int:
    """Run a stage's process to its end -> its exit status. A SIGTERM to the recipe (``kill``, a supervisor,
    ``docker stop``) is passed on, so the stage stops with it instead of training on alone (a terminal's
    Ctrl-C reaches both already)."""
    stage = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stage.send_signal(signum))
    try:
        return stage.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    if args.nproc_per_node < 1:
        raise ArvisionError("--nproc-per-node must be at least 1")
    recipe = load_recipe(args.recipe)
    names = [stage.name for stage in recipe.stages]
    if args.until is not None and args.until not in names:
        raise ArvisionError(f"--until {args.until}: the recipe's stages are {', '.join(names)}")
    last = names.index(args.until) if args.until is not None else len(names) - 1
    for number, stage in enumerate(recipe.stages[: last + 1], start=1):
        label = f"stage {number}/{len(recipe.stages)} {stage.name!r}"
        done = recipe.model_folder(stage.name)
        if done.is_dir():
            print(f"{label}: done ({done})")
            continue
        arguments = stage_arguments(recipe, stage)
        if latest_checkpoint(recipe.stage_dir(stage.name) / "checkpoints") is not None:
            arguments.append("--resume")
        command = stage_command(arguments, args.nproc_per_node)
        print(f"{label}: {shlex.join(command[1:])}", flush=True)
        if args.dry_run:
            continue
        code = run_stage(command)
        if code != 0:
            raise ArvisionError(f"{label} failed (exit status {code}); run the same command again to resume it")
    if not args.dry_run:
        print(f"model: {recipe.model_folder(names[last])}")
    return 0
