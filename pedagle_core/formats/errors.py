"""Errors and problem reports of the checkpoint readers and writers."""

from __future__ import annotations

from dataclasses import dataclass


class CheckpointError(ValueError):
    """A checkpoint cannot be read, written or used as asked.

    The message names the file, the field or tensor, and the expected value, e.g.
    ``/ckpt/model.safetensors: tensor 'fc.weight' has shape [64, 256]; expected [64, 384] = ...``.
    """


@dataclass(frozen=True)
class Problem:
    """One finding of a structural check: ``level`` is "error" or "warning"."""

    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def raise_first_error(problems: list[Problem]) -> None:
    """Raise `CheckpointError` for the first error in ``problems`` (all errors when several)."""
    errors = [p.message for p in problems if p.level == "error"]
    if len(errors) == 1:
        raise CheckpointError(errors[0])
    if errors:
        raise CheckpointError(f"{len(errors)} problems:\n  " + "\n  ".join(errors))
