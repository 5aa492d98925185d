"""Which code produced a result: the commit recorded in benchmark and training JSON files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def code_commit(explicit: str | None = None) -> str | None:
    """The commit of this checkout: ``explicit`` if given, else ``$PEDAGLE_COMMIT`` (set where the tree travels
    without .git, e.g. GPU runs), else ``git rev-parse HEAD`` with ``+dirty`` when tracked files changed;
    None when none of these is available."""
    if explicit:
        return explicit
    if os.environ.get("PEDAGLE_COMMIT"):
        return os.environ["PEDAGLE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                             timeout=5)
        sha = out.stdout.strip()
        if out.returncode or len(sha) != 40:      # e.g. a copied tree whose .git has no objects
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git
        return None
