"""Timing of PEAGLE's decode draft step inside SGLang's worker, behind an environment switch: the SGLang hook of
`pedagle_core.engine.step_timer` (the CUDA-event timer, its line format and `read` are there).

``PEDAGLE_SGLANG_TIME_DRAFT=path.jsonl`` (read in the scheduler process): every call of the instrumented
method (`instrument`: the draft worker's ``_draft_extend_for_decode``, i.e. the draft step of a decode
iteration: step input, expansion, layout, the drafter forward, greedy readout) is bracketed by two CUDA
events; one JSON line per call:

    {"kind": "decode", "B": requests, "K": drafts, "gpu_ms": GPU time between the events,
     "cpu_ms": host time of the call, "t": time.time() when the call returned}

Idle batches are not timed. Without CUDA, ``gpu_ms`` is null. Without the variable, nothing is wrapped and
nothing is recorded.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from pedagle_core.engine.step_timer import TIMED_MARK, StepTimer, read, timed, timer_for

TIME_ENV = "PEDAGLE_SGLANG_TIME_DRAFT"


def timer() -> StepTimer | None:
    """The process's timer when ``PEDAGLE_SGLANG_TIME_DRAFT`` is set (created on first use), else None."""
    return timer_for(TIME_ENV)


def _batch_size(batch: Any) -> int | None:
    seq = getattr(batch, "seq_lens", None)
    return int(seq.shape[0]) if seq is not None and hasattr(seq, "shape") else None


def timed_method(fn: Callable[..., Any], kind: str = "decode") -> Callable[..., Any]:
    """``fn(self, batch, ...)`` bracketed by the timer (looked up per call: no timer, no cost but a lookup); idle
    batches are not timed."""

    def describe(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        batch = args[1] if len(args) > 1 else kwargs.get("batch")
        if getattr(getattr(batch, "forward_mode", None), "is_idle", lambda: False)():
            return None
        return {"kind": kind, "B": _batch_size(batch), "K": getattr(args[0], "K", None)}

    return timed(fn, timer, describe)


def instrument(cls: type, method: str = "_draft_extend_for_decode") -> type:
    """Time ``cls.method`` when ``PEDAGLE_SGLANG_TIME_DRAFT`` is set in the process that imports ``cls``."""
    fn = getattr(cls, method)
    if os.environ.get(TIME_ENV) and not getattr(fn, TIMED_MARK, False):
        setattr(cls, method, timed_method(fn))
    return cls


__all__ = ["TIME_ENV", "timer", "timed_method", "instrument", "read"]
