"""The `pedagle` console script. Each subcommand lives beside the code it drives and registers itself
through an ``add_parser(subparsers)`` function in one of the modules listed below."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in --help order.
SUBCOMMAND_MODULES = (
    "pedagle_core.formats.cli",      # inspect, convert
    "pedagle_core.engine.cli",       # generate, bench
    "pedagle_core.train.cli",        # train
    "pedagle_conformance.cli",       # conformance record|run
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pedagle",
        description="P-EAGLE (parallel-drafting EAGLE-3) speculative decoding: drafters, checkpoints, "
                    "a reference engine, training and cross-backend conformance.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):  # that part is not in this build
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
