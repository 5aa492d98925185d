"""Timing of the draft step inside vLLM's model runner V2, behind an environment switch: the vLLM hook of
`pedagle_core.engine.step_timer` (the CUDA-event timer, its line format and `read` are there).

``PEDAGLE_VLLM_TIME_DRAFT=path.jsonl`` (read where the plugin registers, i.e. in every vLLM process; with
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` that is the one process): `v2_patch`'s wrapper of V2's speculator factory
(``vllm.v1.worker.gpu.spec_decode.init_speculator``) passes every speculator it builds to `time_speculator`, so
that each one (pedagle's `v2_speculator.PedagleSpeculator` for P-EAGLE heads, vLLM's for the others) has
its ``propose`` bracketed by two CUDA events on the current stream. Under FULL CUDA graphs ``propose`` prepares
the inputs eagerly and replays the graph: the events measure the whole of it. One JSON line per real call
(dummy runs and calls during a graph capture are not timed):

    {"kind": "propose", "B": requests, "T": target rows, "K": drafts per request,
     "uniform": T == B * (K + 1) (a decode step; False: prefill rows in the batch),
     "gpu_ms": ..., "cpu_ms": ..., "t": ...}

Without the variable nothing is wrapped. Model runner V1 (pedagle's proposer hooks) is not timed here.
"""

from __future__ import annotations

from typing import Any

from pedagle_core.engine.step_timer import TIMED_MARK, read, timed, timer_for

TIME_ENV = "PEDAGLE_VLLM_TIME_DRAFT"


def timer() -> Any:
    """The process's timer when ``PEDAGLE_VLLM_TIME_DRAFT`` is set, else None."""
    return timer_for(TIME_ENV)


def _num(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def describe_call(speculator: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The line's fields of a ``propose(*args, **kwargs)`` call (bound method: no ``self``); None for dummy runs
    (memory profiling, graph warm-up, DP/EP sync)."""
    if kwargs.get("dummy_run"):
        return None
    batch = kwargs.get("input_batch", args[0] if args else None)
    B, T = _num(getattr(batch, "num_reqs", None)), _num(getattr(batch, "num_tokens", None))
    K = _num(getattr(speculator, "K", None) or getattr(speculator, "num_speculative_steps", None))
    return {"kind": "propose", "B": B, "T": T, "K": K,
            "uniform": None if None in (B, T, K) else T == B * (K + 1)}  # type: ignore[operator]


def time_speculator(speculator: Any) -> Any:
    """Wrap this speculator's ``propose`` with the timer (instance attribute; idempotent)."""
    if speculator is None or getattr(speculator.propose, TIMED_MARK, False):
        return speculator
    speculator.propose = timed(speculator.propose, timer, lambda args, kwargs: describe_call(speculator, args, kwargs))
    return speculator


__all__ = ["TIME_ENV", "time_speculator", "describe_call", "timer", "read"]
