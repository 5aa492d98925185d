"""Process-local state of pedagle's model-runner-V2 hooks, below every other V2 module (imports no backend module):
whether a drafter is being built by pedagle's V2 speculator, whether V2 proposals are recorded, the TP rank.

`v2_patch` installs the hooks and sets this state; `model` (start-up refusals), `v2_speculator` and `proposer` read
it, so none of them imports another for it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator

SPEC_DECODE_PACKAGE = "vllm.v1.worker.gpu.spec_decode"
MARK = "__pedagle_v2_hook__"
"""Attribute set on every function pedagle's V2 hooks install (idempotence, `is_installed`)."""

_building = threading.local()
_recording = False        # the factory was wrapped with a recorder (it writes where PEDAGLE_RECORD_DRAFTS points
#                           at each proposal, so a process may move it between engines, as the job runner does)


@contextlib.contextmanager
def building_for_v2() -> Iterator[None]:
    """Marks the drafter construction of `v2_speculator.PedagleSpeculator.load_draft_model`: model.py refuses a
    pedagle P-EAGLE head under model runner V2 that any other speculator builds (it would draft nothing right)."""
    _building.active = True
    try:
        yield
    finally:
        _building.active = False


def is_building_for_v2() -> bool:
    return bool(getattr(_building, "active", False))


def mark_recording() -> None:
    """V2's speculator factory was wrapped with a recorder in this process (`v2_patch.install`)."""
    global _recording
    _recording = True


def is_installed() -> bool:
    """Whether V2's speculator factory is pedagle's wrapper in this process."""
    package = sys.modules.get(SPEC_DECODE_PACKAGE)
    return package is not None and bool(getattr(getattr(package, "init_speculator", None), MARK, False))


def recording_installed() -> bool:
    """Whether V2 proposals are recorded in this process (to the file ``PEDAGLE_RECORD_DRAFTS`` names)."""
    return _recording and is_installed()


def tp_rank() -> int:
    """This process's tensor-parallel rank (0 before vLLM's parallel state exists: a single process)."""
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except Exception:  # noqa: BLE001 - not initialised (single process)
        return 0


__all__ = ["building_for_v2", "is_building_for_v2", "mark_recording", "is_installed", "recording_installed", "tp_rank",
           "SPEC_DECODE_PACKAGE", "MARK"]
