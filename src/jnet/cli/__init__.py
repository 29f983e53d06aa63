"""`jnet` command line: parses arguments and calls library functions, nothing more.

Each sub-command group lives in its own module with a ``register(subparsers)`` function that adds
its parsers and sets ``func`` (called with the parsed args; heavy imports happen inside it, so that
``jnet --help`` is fast and creates no files). A :class:`jnet.errors.JnetError` becomes a one-line
message and exit code 2 (``--debug`` adds the traceback, the code stays 2); so does an OSError that
no library call turned into one. Warnings print as one ``jnet CMD: warning: ...`` line, without
the source location Python adds.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
import warnings
from typing import Iterator

from jnet import __version__

# Modules under jnet.cli that register sub-commands, in --help order.
COMMAND_MODULES = ("data", "train", "evaluate", "deploy", "sweep", "config")


def comma_list(text: str) -> list[str]:
    """argparse type for ``A,B,C`` options: the non-empty, stripped items."""
    return [v.strip() for v in text.split(",") if v.strip()]


@contextlib.contextmanager
def as_options(names: dict[str, str]) -> Iterator[None]:
    """Name config fields by the command-line options that set them in errors of the block
    (``{"data.fold": "--fold"}``: the library checks the field, the user typed the option)."""
    from jnet.errors import ConfigError

    try:
        yield
    except ConfigError as e:
        for field, option in names.items():
            if str(e).startswith(f"{field}:"):
                raise ConfigError(option + str(e)[len(field):]) from e
        raise


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
    from jnet.utils.atomic import describe_os_error

    try:
        with _plain_warnings(args.command, args.debug):
            result = args.func(args)
    except JnetError as e:
        return _fail(args, str(e), e.exit_code)
    except BrokenPipeError:  # `jnet config list | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file error no library call named: still one line, naming the file
        where = f"{e.filename}: " if e.filename else ""
        return _fail(args, f"{where}{describe_os_error(e)}", 2)
    except KeyboardInterrupt:
        print("jnet: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"jnet {args.command}: error: {message}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _plain_warnings(command: str, debug: bool) -> Iterator[None]:
    """Print warnings as ``jnet CMD: warning: message`` (with --debug: Python's own format)."""
    if debug:
        yield
        return
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - stdlib hook
        print(f"jnet {command}: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
