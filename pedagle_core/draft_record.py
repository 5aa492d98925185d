"""The JSONL draft record shared by the backends' ``PEDAGLE_RECORD_DRAFTS`` option: one JSON object per
drafting step, compared step by step with pedagle's reference engine by the conformance suite."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

RECORD_ENV = "PEDAGLE_RECORD_DRAFTS"


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


__all__ = ["RECORD_ENV", "DraftRecordWriter"]
