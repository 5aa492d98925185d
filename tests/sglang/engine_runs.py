"""Shared SGLang-engine runs of the PEAGLE engine tests (test_engine_peagle*.py), cached per pytest process.

An engine start costs ~50 s on two CPU cores, so every configuration (target, drafter, K, dtype, engine
options) is started ONCE and serves every prompt set the tests need (`run`); the tests then read the cached
results. Prompts come from the tiny-code target's held-out prompts (its tokenizer), cut to chosen lengths.
The engines run in a child process (`pedagle_backends.sglang.runner.run_jobs`) with the CPU-engine set-up of
`pedagle_backends.sglang.cpu` (SGLang's CPU engine, pedagle's CPU ``sgl_kernel`` ops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny-code"
TARGET, PEAGLE, EAGLE3 = TINY / "target", TINY / "peagle", TINY / "eagle3"

# One engine geometry for every float32 run of tiny-code, so target-only and PEAGLE runs compare token for token:
CONTEXT = 128          # context_length: the max-context request ends exactly here
CHUNK = 48             # chunked_prefill_size: LONG_PROMPT is prefilled in several chunks
LONG_PROMPT = 100
MAXCTX_PROMPT = 100    # + max_context_new(K) new tokens = the longest request the engine admits


def max_context_new(K: int) -> int:
    """New tokens that take a MAXCTX_PROMPT prompt to the engine's limit: SGLang admits input + max_new_tokens <=
    context_length - (K + 1) under EAGLE-style speculation (it reserves K+1 draft slots per request), CONTEXT for
    target-only (K = 0)."""
    return CONTEXT - MAXCTX_PROMPT - (K + 1 if K else 0)


def prompts(lengths: list[int], start: int = 0) -> list[list[int]]:
    """Held-out tiny-code prompts (tokenised) cut to ``lengths``; prompt i comes from held-out line start+i,
    repeated when a line is shorter than asked."""
    from pedagle_core.engine.prompts import heldout_prompts

    return heldout_prompts(TARGET, lengths, start)


@dataclass
class Job:
    """One ``generate`` call of a run: prompts, max new tokens per prompt, temperature."""

    name: str
    prompts: list[list[int]]
    max_new: list[int]
    temperature: float = 0.0
    seed: int | None = None


@dataclass
class Run:
    """A finished engine run: per job its outputs / meta / rids; the worker's draft records; timings."""

    key: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    start_s: float = 0.0
    total_s: float = 0.0
    error: str | None = None

    def config(self) -> dict[str, Any] | None:
        from pedagle_backends.sglang.runner import config_record

        return config_record(self.records)


_RUNS: dict[str, Run] = {}
TIMINGS: list[tuple[str, float, float]] = []     # (key, start seconds, total seconds), printed by the tests


@dataclass
class Spec:
    """One engine configuration and the jobs it serves."""

    target: Path
    drafter: Path | None
    K: int
    jobs: list[Job]
    dtype: str = "float32"
    algorithm: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)      # environment of the engine (SGLang's scheduler inherits it)


def run_many(specs: dict[str, Spec]) -> dict[str, Run]:
    """Start every not-yet-cached configuration once, all in ONE child process (`runner.run_jobs`: SGLang's CPU
    engine must be set up before SGLang is imported, and the child pays SGLang's import once); cached by key."""
    from pedagle_backends.sglang import ALGORITHM
    from pedagle_backends.sglang.runner import run_jobs

    todo = [k for k in specs if k not in _RUNS]
    jobs = []
    for k in todo:
        sp = specs[k]
        jobs.append({"target": str(sp.target), "drafter": None if sp.drafter is None else str(sp.drafter),
                     "K": sp.K, "algorithm": sp.algorithm or ALGORITHM, "dtype": sp.dtype, "engine": sp.engine,
                     "env": sp.env,
                     "calls": [{"name": f"{k}-{j.name}", "prompts": j.prompts, "max_new_tokens": j.max_new,
                                "temperature": j.temperature, "seed": j.seed} for j in sp.jobs]})
    for k, res in zip(todo, _run_jobs_amx_default(run_jobs, jobs)):
        r = Run(k)
        if "error" in res:
            r.error = res["error"]
        else:
            r.results = {j.name: res["calls"][f"{k}-{j.name}"] for j in specs[k].jobs}
            r.records, r.start_s, r.total_s = res["records"], res["start_s"], res["total_s"]
            TIMINGS.append((k, r.start_s, r.total_s))
            print(f"[engine run {k}] start {r.start_s:.0f} s, total {r.total_s:.0f} s")
        _RUNS[k] = r
    out = {k: _RUNS[k] for k in specs}
    for k, r in out.items():
        assert r.error is None, f"engine run {k} failed: {r.error}"
    return out


AMX_DEFAULT = "0"   # PEDAGLE_SGLANG_CPU_AMX of the engine tests unless set: SGLang's plain layers on any CPU


def _run_jobs_amx_default(run_jobs: Any, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`runner.run_jobs` with ``PEDAGLE_SGLANG_CPU_AMX`` defaulting to `AMX_DEFAULT` in the engine process (the main
    run keeps SGLang's non-AMX branches even on a CPU with AMX; test_engine_amx starts its engines with 1)."""
    import os

    from pedagle_backends.sglang.cpu import AMX_ENV

    if not jobs:
        return []
    unset = AMX_ENV not in os.environ
    if unset:
        os.environ[AMX_ENV] = AMX_DEFAULT
    try:
        return run_jobs(jobs, device="cpu")
    finally:
        if unset:
            os.environ.pop(AMX_ENV, None)


def cached(key: str) -> Run | None:
    """A finished run of this process, if there is one."""
    r = _RUNS.get(key)
    return r if r is not None and r.error is None else None


def run(key: str, target: Path, drafter: Path | None, K: int, jobs: list[Job], dtype: str = "float32",
        algorithm: str | None = None, **engine: Any) -> Run:
    """One configuration (`run_many` with one entry)."""
    return run_many({key: Spec(target, drafter, K, jobs, dtype, algorithm, engine)})[key]


def steps_of(run_: Run, job: str) -> list[list[dict[str, Any]]]:
    from pedagle_backends.sglang.runner import per_request_steps

    return per_request_steps(run_.records, run_.results[job]["rids"], run_.results[job]["outputs"])


def case_result(run_: Run, job: str, K: int, steps: int) -> dict[str, Any]:
    from pedagle_backends.sglang.runner import to_case_result

    gen = dict(run_.results[job])
    gen["records"] = run_.records
    return to_case_result(gen, K, steps)


def target_margin(prefix: list[int], model=None) -> tuple[float, list[int]]:
    """The float32 target's top-1 minus top-2 logit after ``prefix`` (and the two ids): how close the target's
    greedy choice there is to a tie."""
    import torch

    model = model or float32_target()
    with torch.no_grad():
        logits = model(torch.tensor([prefix])).logits[0, -1].float()
    top = logits.topk(2)
    return float(top.values[0] - top.values[1]), top.indices.tolist()


_F32: dict[str, Any] = {}


def float32_target():
    if "m" not in _F32:
        import torch
        from transformers import AutoModelForCausalLM

        _F32["m"] = AutoModelForCausalLM.from_pretrained(str(TARGET), torch_dtype=torch.float32).eval()
    return _F32["m"]


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def mean_accepted(steps: list[list[dict[str, Any]]]) -> float:
    acc = [s["accepted"] for req in steps for s in req if s["accepted"] is not None]
    return sum(acc) / len(acc) if acc else math.nan


__all__ = ["Job", "Run", "Spec", "cached", "run", "run_many", "prompts", "steps_of", "case_result", "target_margin", "float32_target",
           "first_difference", "mean_accepted", "TIMINGS", "TARGET", "PEAGLE", "EAGLE3", "CONTEXT", "CHUNK",
           "LONG_PROMPT", "MAXCTX_PROMPT", "max_context_new"]
