"""The ``arvision`` command line: one module per sub-command, registered in ``COMMANDS``.

Every sub-command module exposes ``add_parser(subparsers)`` that registers itself and sets
``func``, a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from arvision.errors import ArvisionError

COMMANDS: list[str] = ["reconstruct", "generate", "describe", "generate_video", "train", "recipe"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="arvision", description="Autoregressive visual generation and understanding (HART, VILA-U)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"arvision.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides"):
            build_parser().parse_args(argv)  # reports the unknown arguments and exits
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except ArvisionError as exc:
        print(f"arvision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
