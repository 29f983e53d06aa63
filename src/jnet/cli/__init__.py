"""`jnet` command line: parses arguments and calls library functions, nothing more.

Each sub-command group lives in its own module with a ``register(subparsers)`` function that adds
its parsers and sets ``func`` (called with the parsed args; heavy imports happen inside it, so that
``jnet --help`` is fast and creates no files). A :class:`jnet.errors.JnetError` becomes a one-line
message and exit code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from jnet import __version__

# Modules under jnet.cli that register sub-commands, in --help order.
COMMAND_MODULES = ("data", "train", "evaluate", "deploy", "sweep")


def comma_list(text: str) -> list[str]:
    """argparse type for ``A,B,C`` options: the non-empty, stripped items."""
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jnet",
        description="J-Net: high-resolution medical image segmentation from low-resolution inputs.",
    )
    parser.add_argument("--version", action="version", version=f"jnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"jnet.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"jnet.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from jnet.errors import JnetError

    try:
        result = args.func(args)
    except JnetError as e:
        if args.debug:
            raise
        print(f"jnet {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("jnet: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
