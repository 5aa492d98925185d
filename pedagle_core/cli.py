"""The `pedagle` console script. Each subcommand lives beside the code it drives and registers itself
through an ``add_parser(subparsers)`` function in one of the modules listed below."""

from __future__ import annotations

import argparse
import importlib
import sys

from .helpformat import HelpFormatter

# Modules that contribute subcommands, in --help order.
SUBCOMMAND_MODULES = (
    "pedagle_core.formats.cli",      # inspect, convert
    "pedagle_core.engine.cli",       # generate, bench
    "pedagle_core.train.cli",        # train
    "pedagle_conformance.cli",       # conformance record|run
)


EXIT_CODES = """exit status (every subcommand):
  0  success
  1  failure: a check found a problem (inspect/convert: a checkpoint generate would refuse; conformance
     run: a case differs; conformance record --verify: a recording differs), or an internal error (a
     traceback: please report it)
  2  usage error: a bad argument, input file or checkpoint; one line on stderr names it"""


def version_text() -> str:
    """`pedagle --version`: pedagle's version and where it runs from, with the versions that matter."""
    import importlib.metadata as md
    import platform
    from pathlib import Path

    from . import __version__

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    where = Path(__file__).resolve().parent.parent
    return (f"pedagle {__version__} ({where}; python {platform.python_version()}, torch {v('torch')}, "
            f"transformers {v('transformers')})")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _show_warnings_once() -> None:
    """Warnings on stderr as ``pedagle: warning: MESSAGE``, each message once, without Python's source line."""
    import warnings

    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text in seen:
            return
        seen.add(text)
        print(f"pedagle: warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pedagle",
        description="P-EAGLE (parallel-drafting EAGLE-3) speculative decoding: drafters, checkpoints, "
                    "a reference engine, training and cross-backend conformance.",
        epilog=EXIT_CODES + "\n\n`pedagle COMMAND --help` describes each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print pedagle's version, where it is installed from, and the torch/transformers "
                             "versions, then exit")
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
    _show_warnings_once()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
