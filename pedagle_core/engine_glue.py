"""Small engine-independent helpers that more than one serving-engine backend needs.

Nothing here imports an engine. Today: version-range checks (each backend states the engine releases it
supports and refuses others with a clear message) and the JSONL draft recorder format shared by the
backends' ``PEDAGLE_RECORD_DRAFTS`` option.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

RECORD_ENV = "PEDAGLE_RECORD_DRAFTS"

_OPS = (">=", "<=", "==", "!=", "<", ">")


def parse_version(version: str) -> tuple[int, int, int]:
    """'0.5.23', '0.5.23.post1', '0.32.0+cpu' -> (major, minor, patch); missing parts are 0."""
    out = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits) if digits else 0)
    while len(out) < 3:
        out.append(0)
    return out[0], out[1], out[2]


def version_in_range(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies every comma-separated clause of ``spec`` (e.g. '>=0.5.23,<0.5.24')."""
    v = parse_version(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op = next((o for o in _OPS if clause.startswith(o)), None)
        if op is None:
            raise ValueError(f"version spec clause {clause!r}; expected one of {_OPS} followed by a version")
        b = parse_version(clause[len(op):].strip())
        ok = {">=": v >= b, "<=": v <= b, "==": v == b, "!=": v != b, "<": v < b, ">": v > b}[op]
        if not ok:
            return False
    return True


class DraftRecordWriter:
    """Appends one JSON object per drafting step to the JSONL file ``PEDAGLE_RECORD_DRAFTS`` names (read at
    every write, so a process may point it elsewhere between jobs; ``os.devnull`` discards). Every record
    gets ``step`` (a per-writer counter) and ``pid``."""

    def __init__(self, default_path: str | os.PathLike | None = None) -> None:
        self.default_path = str(default_path) if default_path is not None else None
        self.step = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> str | None:
        return os.environ.get(RECORD_ENV) or self.default_path

    def write(self, record: dict[str, Any]) -> None:
        path = self.path
        with self._lock:
            record = {"step": self.step, "pid": os.getpid(), **record}
            self.step += 1
            if not path or path == os.devnull:
                return
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


__all__ = ["RECORD_ENV", "parse_version", "version_in_range", "DraftRecordWriter"]
