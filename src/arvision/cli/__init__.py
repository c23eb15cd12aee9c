"""The ``arvision`` command line: one module per sub-command, registered in ``COMMANDS``.

Every sub-command module exposes ``add_parser(subparsers)`` that registers itself and sets
``func``, a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from arvision.errors import ArvisionError

COMMANDS: list[str] = ["reconstruct", "generate", "describe", "generate_video", "train", "recipe", "evaluate", "serve"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="arvision", description="Autoregressive visual generation and understanding (HART, VILA-U)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"arvision.cli.{name}").add_parser(sub)
    return parser


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``minimum`` (argparse names the option and exits 2 otherwise)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return whole_number


def report_errors(prog: str, run: Callable[[], int | None]) -> int:
    """``run()``'s exit code; an :class:`ArvisionError` is printed as one line, ``prog: error: message``, with
    exit code 2 (argparse's for bad arguments), and Ctrl-C as "interrupted" with 130. The scripts use it too."""
    try:
        return int(run() or 0)
    except ArvisionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides"):  # only train's free-form key=value overrides take extra arguments
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return report_errors(f"arvision {args.command}", lambda: args.func(args))
