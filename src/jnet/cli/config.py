"""`jnet config list | show NAME`: the configs that ship with jnet."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="list or print the built-in configs (usable as --config NAME)",
        description="The training and sweep configs shipped with jnet. Any command's --config takes "
                    "a NAME from this list, e.g. --config recommended/jnet16.")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="the built-in config names, one line each")
    listing.set_defaults(func=_list)
    show = sub.add_parser("show", help="print a built-in config (redirect it to a file to edit it)")
    show.add_argument("name", metavar="NAME", help="e.g. recommended/jnet16")
    show.set_defaults(func=_show)


def _list(args: argparse.Namespace) -> int:
    from jnet.training.presets import names, summary

    width = max(map(len, names()))
    for name in names():
        print(f"{name:<{width}}  {summary(name)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from jnet.training.presets import locate

    print(locate(args.name).read_text(), end="")
    return 0
