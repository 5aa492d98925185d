"""argparse formatters of the ``pedagle`` commands: descriptions wrapped, epilogs (exit status tables, JSON
layouts) kept as written."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph texts; a text with line breaks (an epilog table) is printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class DefaultsHelpFormatter(HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`HelpFormatter` that also appends each option's default to its help."""


__all__ = ["HelpFormatter", "DefaultsHelpFormatter"]
