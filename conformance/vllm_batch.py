"""Run many conformance cases through vLLM in ONE child process (vLLM's start-up is paid once).

`pedagle_backends.vllm.backend.VllmBackend.run_case` starts one child per case; the runner uses this
batch path for the ``vllm`` backend instead (same jobs, same result reshaping through the backend's own
`records_to_case_result`), unless the backend object offers ``run_cases`` itself.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any


def job_for(case: dict[str, Any], record: str) -> dict[str, Any]:
    """The `pedagle_backends.vllm.runner` job of ``VllmBackend.run_case`` for one case dict."""
    if case.get("temperature"):
        raise ValueError(f"temperature = {case['temperature']}; the vLLM conformance runner supports greedy only")
    prompts = [[int(t) for t in p] for p in case["prompt_ids"]]
    K, steps = int(case["K"]), int(case["steps"])
    max_tokens = (steps + 1) * (K + 1) + 1
    mml = case.get("max_model_len") or (max(map(len, prompts)) + max_tokens + 2 * K + 8)
    dtype = case.get("dtype") or "float32"
    return {"target": str(case["target"]), "drafter": str(case["drafter"]), "K": K,
            "parallel": case["mode"] == "parallel", "prompts": prompts, "max_tokens": max_tokens,
            "max_model_len": int(mml), "dtype": str(dtype).removeprefix("torch."), "seed": int(case.get("seed", 0)),
            "record": record, "max_num_seqs": max(len(prompts), 1),
            "enforce_eager": not str(case.get("device", "cpu")).startswith("cuda")}   # CUDA: vLLM's defaults


def run_cases(cases: list[dict[str, Any]], python: str | None = None, log: str | None = None,
              timeout: float = 1800) -> list[dict[str, Any] | Exception]:
    """One result dict (the ``pedagle_run_case`` result) or the exception, per case, in order."""
    from pedagle_backends.vllm.backend import VllmBackend, records_to_case_result
    from pedagle_backends.vllm.runner import run_jobs

    info = VllmBackend().pedagle_backend_info()
    if not info["available"]:
        raise RuntimeError(f"vLLM backend unavailable: {info['reason']}")
    out: list[dict[str, Any] | Exception] = []
    with tempfile.TemporaryDirectory(prefix="pedagle-conformance-vllm-") as tmp:
        jobs, errors = [], {}
        for i, c in enumerate(cases):
            try:
                jobs.append(job_for(c, str(Path(tmp) / f"drafts-{i}.jsonl")))
            except Exception as e:  # noqa: BLE001 - reported per case
                errors[i] = e
                jobs.append(None)
        todo = [j for j in jobs if j is not None]
        log = log or str(Path(tmp) / "vllm.log")          # kept so that a crash reports vLLM's last lines
        results = run_jobs(todo, plugin=True, python=python or sys.executable, log=log, timeout=timeout) if todo else []
        it = iter(results)
        for i, (c, j) in enumerate(zip(cases, jobs)):
            if j is None:
                out.append(errors[i])
                continue
            res = next(it)
            if "error" in res:
                out.append(RuntimeError(f"vLLM run failed: {res['error']}\n{res.get('traceback', '')}"))
                continue
            try:
                out.append(records_to_case_result(res, j["prompts"], j["K"], c["mode"], int(c["steps"])))
            except Exception as e:  # noqa: BLE001
                out.append(e)
    return out


__all__ = ["run_cases", "job_for"]
