"""Per-step timing of a draft step inside an engine, behind an environment switch (engine-independent part).

An engine hook (``pedagle_backends.sglang.step_timer``: ``PEDAGLE_SGLANG_TIME_DRAFT``;
``pedagle_backends.vllm.step_timer``: ``PEDAGLE_VLLM_TIME_DRAFT``) wraps the method that runs one draft step
with `timed`; when the hook's variable names a file, every call is bracketed by two CUDA events recorded on the
current stream, one JSON line per call:

    {**info, "gpu_ms": GPU time between the events, "cpu_ms": host time of the call,
     "t": time.time() when the call returned}

(``info``: what the hook describes, e.g. ``kind``, ``B`` (requests), ``K``). ``gpu_ms`` is the elapsed time on
the GPU's timeline between the two events: the step's kernels (or its CUDA-graph replay) and any gaps between
them (a host-bound step shows as gaps). The events are read without blocking the step: a call's line is written
once its end event has completed (checked at the next call, and at exit), so at most the last few calls of a
killed process are lost. Without CUDA, ``gpu_ms`` is null (``cpu_ms`` is the measure). Calls made while the
current stream is being captured into a CUDA graph are not timed (events of a capture are not timings). Without
the variable nothing is recorded and the wrapper costs one environment lookup.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import time
from typing import Any, Callable, Iterator

TIMED_MARK = "__pedagle_timed__"


def _cuda_timing() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def capturing() -> bool:
    """Whether the current CUDA stream is being captured into a graph (never on the CPU)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())


class StepTimer:
    """CUDA-event brackets around calls, written as JSON lines to ``path`` (append)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pending: list[tuple[Any, Any, dict[str, Any]]] = []
        self._f = open(path, "a", buffering=1)

    def begin(self) -> tuple[Any, float]:
        start = None
        if _cuda_timing():
            import torch

            start = torch.cuda.Event(enable_timing=True)
            start.record()
        return start, time.perf_counter()

    def end(self, token: tuple[Any, float], **info: Any) -> None:
        start, t0 = token
        info = {**info, "cpu_ms": 1e3 * (time.perf_counter() - t0), "t": time.time()}
        if start is None:
            self._write({**info, "gpu_ms": None})
            return
        import torch

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
        if not self._f.closed:
            self._f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            self.drain(block=True)
        finally:
            self._f.close()

    @contextlib.contextmanager
    def step(self, **info: Any) -> Iterator[dict[str, Any]]:
        """``with timer.step(kind=...) as info: ...`` (``info`` may be completed inside the block)."""
        extra: dict[str, Any] = dict(info)
        token = self.begin()
        yield extra
        self.end(token, **extra)


_TIMERS: dict[str, StepTimer] = {}


def timer_for(env: str) -> StepTimer | None:
    """The process's timer of the file named by ``$env`` (created on first use, closed at exit), else None."""
    path = os.environ.get(env)
    if not path:
        return None
    t = _TIMERS.get(path)
    if t is None:
        t = _TIMERS[path] = StepTimer(path)
        atexit.register(t.close)
    return t


def timed(fn: Callable[..., Any], get_timer: Callable[[], StepTimer | None],
          describe: Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any] | None]) -> Callable[..., Any]:
    """``fn`` bracketed by ``get_timer()`` (looked up per call: None, nothing is timed and ``describe`` is not
    called). ``describe(args, kwargs)``, before the call: the line's fields, or None for a call not to time.
    Calls during a CUDA-graph capture are never timed."""
    if getattr(fn, TIMED_MARK, False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = get_timer()
        info = None if t is None or capturing() else describe(args, kwargs)
        if info is None:
            return fn(*args, **kwargs)
        token = t.begin()                                   # type: ignore[union-attr]
        out = fn(*args, **kwargs)
        t.end(token, **info)                                # type: ignore[union-attr]
        return out

    setattr(wrapper, TIMED_MARK, True)
    return wrapper


def read(path: str) -> list[dict[str, Any]]:
    """The lines of a timing file."""
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


__all__ = ["StepTimer", "timer_for", "timed", "capturing", "read", "TIMED_MARK"]
