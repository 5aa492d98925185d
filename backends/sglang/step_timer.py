"""Timing of PEAGLE's decode draft step inside SGLang's worker, behind an environment switch.

``PEDAGLE_SGLANG_TIME_DRAFT=path.jsonl`` (read in the scheduler process): every call of the instrumented
method (`instrument`: the draft worker's ``_draft_extend_for_decode``, i.e. the draft step of a decode
iteration: step input, expansion, layout, the drafter forward, greedy readout) is bracketed by two CUDA
events; one JSON line per call:

    {"kind": "decode", "B": requests, "K": drafts, "gpu_ms": GPU time between the events,
     "cpu_ms": host time of the call, "t": time.time() when the call returned}

``gpu_ms`` is the elapsed time on the GPU's timeline between the two events: the draft step's kernels and
any gaps between them (a host-bound step shows as gaps). The events are read without blocking the step:
a call's line is written once its end event has completed (checked at the next call, and at exit), so at
most the last few calls of a killed process are lost. Without CUDA, ``gpu_ms`` is null. Without the
variable, nothing is wrapped and nothing is recorded.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import time
from typing import Any, Callable

TIME_ENV = "PEDAGLE_SGLANG_TIME_DRAFT"


class DraftStepTimer:
    """CUDA-event brackets around calls, written as JSON lines to ``path`` (append)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pending: list[tuple[Any, Any, dict[str, Any]]] = []
        self._f = open(path, "a", buffering=1)

    def begin(self) -> tuple[Any, float]:
        import torch

        start = None
        if torch.cuda.is_available():
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        return start, time.perf_counter()

    def end(self, token: tuple[Any, float], **info: Any) -> None:
        import torch

        start, t0 = token
        info = {**info, "cpu_ms": 1e3 * (time.perf_counter() - t0), "t": time.time()}
        if start is None:
            self._write({**info, "gpu_ms": None})
            return
        stop = torch.cuda.Event(enable_timing=True)
        stop.record()
        self._pending.append((start, stop, info))
        self.drain(block=False)

    def drain(self, block: bool) -> None:
        """Write the lines of the calls whose end event completed (all of them when ``block``)."""
        keep = []
        for start, stop, info in self._pending:
            if block:
                stop.synchronize()
            if block or stop.query():
                self._write({**info, "gpu_ms": start.elapsed_time(stop)})
            else:
                keep.append((start, stop, info))
        self._pending = keep

    def _write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        try:
            self.drain(block=True)
        finally:
            self._f.close()


_TIMER: DraftStepTimer | None = None


def timer() -> DraftStepTimer | None:
    """The process's timer when ``PEDAGLE_SGLANG_TIME_DRAFT`` is set (created on first use), else None."""
    global _TIMER
    path = os.environ.get(TIME_ENV)
    if not path:
        return None
    if _TIMER is None:
        _TIMER = DraftStepTimer(path)
        atexit.register(_TIMER.close)
    return _TIMER


def _batch_size(batch: Any) -> int | None:
    seq = getattr(batch, "seq_lens", None)
    return int(seq.shape[0]) if seq is not None and hasattr(seq, "shape") else None


def timed_method(fn: Callable[..., Any], kind: str = "decode") -> Callable[..., Any]:
    """``fn(self, batch, ...)`` bracketed by the timer (looked up per call: no timer, no cost but a lookup)."""

    @functools.wraps(fn)
    def wrapper(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        t = timer()
        if t is None or getattr(getattr(batch, "forward_mode", None), "is_idle", lambda: False)():
            return fn(self, batch, *args, **kwargs)
        token = t.begin()
        out = fn(self, batch, *args, **kwargs)
        t.end(token, kind=kind, B=_batch_size(batch), K=getattr(self, "K", None))
        return out

    wrapper.__pedagle_timed__ = True  # type: ignore[attr-defined]
    return wrapper


def instrument(cls: type, method: str = "_draft_extend_for_decode") -> type:
    """Time ``cls.method`` when ``PEDAGLE_SGLANG_TIME_DRAFT`` is set in the process that imports ``cls``."""
    fn = getattr(cls, method)
    if os.environ.get(TIME_ENV) and not getattr(fn, "__pedagle_timed__", False):
        setattr(cls, method, timed_method(fn))
    return cls


def read(path: str) -> list[dict[str, Any]]:
    """The lines of a timing file."""
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


__all__ = ["TIME_ENV", "DraftStepTimer", "timer", "timed_method", "instrument", "read"]
