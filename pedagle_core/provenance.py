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


def run_environment(dists: tuple[str, ...] = ()) -> dict[str, object]:
    """Where a benchmark or GPU run ran: UTC date, `code_commit`, Python, torch, device name, the installed
    versions of ``dists`` (those that are installed) and ``nvidia-smi``'s driver / name / memory line."""
    import datetime as dt
    import importlib.metadata as md
    import sys

    import torch

    info: dict[str, object] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "commit": code_commit() or "unknown", "python": sys.version.split()[0],
                               "torch": torch.__version__,
                               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    for dist in dists:
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info
