"""Pick, per launch shape, the fastest of a few implementations by timing them once on the device.

Used by `skinny_gemm` (Triton split-K GEMM variants vs cuBLAS) and `decode_attention` (split-count /
tile variants). The first call with a new key times every candidate on the real inputs and remembers
the winner; later calls reuse it. Both callers time candidates as a step meets them, each as a CUDA
graph of back-to-back calls (`time_graphs`; the GEMMs over rotating weight copies); `time_candidates`
(isolated calls with CUDA events, L2 flushed before each) is the fallback where capture fails. Nothing is timed while a
CUDA graph is being captured or torch.compile traces: those calls take the caller's ``fallback``
(a choice that is always valid, e.g. cuBLAS). Every decision is kept in `decisions()` for reports.

Candidates must be pure functions of their inputs (they run several times).
"""

from __future__ import annotations

import statistics
from typing import Callable, Hashable, Sequence

import torch

_TABLE: dict[tuple, int] = {}
_DECISIONS: list[dict] = []
_FLUSH: dict[int, torch.Tensor] = {}
FLUSH_BYTES = 256 << 20          # > L2 of any current GPU (H100/H200: 50/60 MB)
MARGIN = 0.02                    # a non-fallback candidate must beat the fallback by this fraction


def compiling() -> bool:
    """True while torch.compile traces (dispatch through Python-side tables must stay out of the trace)."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:                                     # older torch
        return False


def tracing() -> bool:
    """True while a CUDA graph is captured or torch.compile traces (no timing, no host syncs)."""
    return compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _flush_buffer(device: torch.device) -> torch.Tensor:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _FLUSH:
        _FLUSH[idx] = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    return _FLUSH[idx]


def time_candidates(fns: Sequence[Callable[[], object]], device: torch.device, reps: int = 9,
                    flush: bool = True) -> list[float]:
    """Median ms of each function (CUDA events around each call). The candidates take turns, one call
    each per round (drift hits all alike); before each call L2 is flushed by READING a buffer larger than
    it (a write flush leaves dirty lines whose write-back then competes with the timed reads). A function
    that raises (e.g. a tile shape the compiler rejects) gets infinity."""
    buf = _flush_buffer(device).view(torch.float32) if flush else None
    ok = []
    for fn in fns:
        try:
            fn()                                              # compile / warm
            fn()
            ok.append(True)
        except Exception:                                     # noqa: BLE001 - a variant that fails to build loses
            ok.append(False)
    times: list[list[float]] = [[] for _ in fns]
    sink = torch.empty((), dtype=torch.float32, device=device)
    for _ in range(reps):
        ev = []
        for i, fn in enumerate(fns):
            if not ok[i]:
                continue
            if buf is not None:
                sink.copy_(buf.amax())
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            ev.append((i, s, e))
        torch.cuda.synchronize()
        for i, s, e in ev:
            times[i].append(s.elapsed_time(e))
    return [statistics.median(t) if ok[i] else float("inf") for i, t in enumerate(times)]


def time_graphs(fns: Sequence[Callable[[], object]], device: torch.device, repeat: int = 8,
                reps: int = 7) -> list[float]:
    """Per-call ms of each function as a step meets it: a CUDA graph of ``repeat`` back-to-back calls,
    replayed in turns with the other candidates (median of ``reps`` replays, divided by ``repeat``). No
    host launch overhead is timed (isolated event timing of a ~10 us launch mostly measured it). Data
    smaller than L2 stay warm between the calls; callers with weights that must stream from HBM rotate
    copies themselves (`skinny_gemm.time_in_graphs`). A function that fails to build or capture gets
    infinity. Each function runs twice before capture (compile, workspaces, handles)."""
    graphs: list = []
    for fn in fns:
        try:
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                fn()
                fn()
            torch.cuda.current_stream(device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(repeat):
                    fn()
            g.replay()
            graphs.append(g)
        except Exception:                                     # noqa: BLE001 - this candidate loses
            graphs.append(None)
    torch.cuda.synchronize(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, g in enumerate(graphs):
            if g is None:
                continue
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            times[i].append(a.elapsed_time(b) / repeat)
    del graphs
    return [statistics.median(t) if t else float("inf") for t in times]


def choose(kind: str, key: Hashable, names: Sequence[str], fns: Sequence[Callable[[], object]],
           device: torch.device, fallback: int = 0, margin: float = MARGIN,
           timer: Callable[[Sequence[Callable[[], object]], torch.device], list[float]] | None = None) -> int:
    """Index of the fastest candidate for ``(kind, key)`` (timed on first use, then cached).
    ``fallback`` is returned, untimed, while tracing; it also wins unless beaten by ``margin``.
    ``timer(fns, device)`` replaces `time_candidates` (e.g. a caller's graph-based timing)."""
    full = (kind, device.index, key)
    hit = _TABLE.get(full)
    if hit is not None:
        return hit
    if tracing() or device.type != "cuda":
        return fallback
    times = (timer or time_candidates)(fns, device)
    _FLUSH.clear()                                             # the flush buffer is not kept between choices
    if times[fallback] == float("inf"):
        raise RuntimeError(f"measured_choice: the fallback {names[fallback]!r} of {kind} {key!r} failed")
    best = min(range(len(times)), key=times.__getitem__)
    if best != fallback and times[best] > (1 - margin) * times[fallback]:
        best = fallback
    _TABLE[full] = best
    fields = list(key) if isinstance(key, tuple) else [key]
    fields = [k if isinstance(k, (int, float, bool, str)) or k is None else str(k) for k in fields]
    _DECISIONS.append({"kind": kind, "key": fields, "chosen": names[best],
                       "times_ms": {n: round(t, 5) for n, t in zip(names, times)}})
    return best


def decisions(kind: str | None = None) -> list[dict]:
    """Every decision made so far (optionally of one kind): key, chosen candidate, each candidate's time."""
    return [d for d in _DECISIONS if kind is None or d["kind"] == kind]


def reset() -> None:
    """Forget every decision (tests, benchmarks that compare fresh runs)."""
    _TABLE.clear()
    _DECISIONS.clear()


def force(kind: str, key: Hashable, device: torch.device, index: int) -> None:
    """Pin the choice for ``(kind, key)`` (tests; a caller that measured elsewhere)."""
    _TABLE[(kind, device.index, key)] = index
