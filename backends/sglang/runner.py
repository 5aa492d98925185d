"""Run jobs through ``sglang.Engine`` (PEAGLE, SGLang's own EAGLE3, or target-only) and shape the result like
pedagle's conformance result (`pedagle_core.hooks`). Used by `backend.SglangBackend.run_case`, the engine tests
(tests/sglang/test_engine_*.py) and ``bench/sglang_gpu_e2e.py``.

Where the engine runs: on a CUDA GPU with SGLang's own kernels, or on a CPU with SGLang's CPU engine
(``SGLANG_USE_CPU_ENGINE=1``, ``device="cpu"``) and pedagle's test-support CPU ``sgl_kernel`` ops (the SGLang
test environment, `cpu_engine_available`); ``engine_extra`` carries what the caller's environment needs.

Drafts come from the PEAGLE worker's recorder (``PEDAGLE_RECORD_DRAFTS``): one record per draft step with the
request ids (``rid``), so each request's drafting steps are recovered in order: step 0 after its prefill,
step s after its s-th verify, whose ``accept_lens - 1`` is the number of drafts of step s-1 accepted. The first
record of a run (``kind: "config"``) says what the engine ran with (the target's aux capture layers, the draft
runner's sliding window, radix cache on/off).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from pedagle_core.draft_record import RECORD_ENV

from . import ALGORITHM


def engine_kwargs(target: str, drafter: str | None, K: int, dtype: str = "float32", max_model_len: int | None = None,
                  algorithm: str = ALGORITHM, **extra: Any) -> dict[str, Any]:
    """``sglang.Engine`` keyword arguments: greedy-friendly defaults (page size 1, overlap off, fixed seed),
    the speculative settings for ``algorithm`` (PEAGLE, or SGLang's own EAGLE3 chain with ``drafter``), then
    ``extra`` (it wins: e.g. ``disable_radix_cache``, ``max_total_tokens``, ``chunked_prefill_size``)."""
    kw: dict[str, Any] = dict(model_path=str(target), dtype=dtype, skip_tokenizer_init=True, page_size=1,
                              disable_overlap_schedule=True, random_seed=0, disable_cuda_graph=True)
    if max_model_len:
        kw["context_length"] = int(max_model_len)
    if drafter is not None:
        kw.update(speculative_algorithm=algorithm, speculative_draft_model_path=str(drafter),
                  speculative_num_draft_tokens=K + 1)
        if algorithm != ALGORITHM:                      # SGLang's own EAGLE / EAGLE3: a chain of K drafts
            kw.update(speculative_num_steps=K, speculative_eagle_topk=1)
    kw.update(extra)
    return kw


class EngineSession:
    """One ``sglang.Engine`` (a context manager) serving several ``generate`` calls; PEAGLE's draft records
    of all of them land in one JSONL file (``records()``)."""

    def __init__(self, target: str, drafter: str | None = None, K: int = 3, record: str | None = None,
                 algorithm: str = ALGORITHM, **engine_extra: Any) -> None:
        self.kwargs = engine_kwargs(target, drafter, K, algorithm=algorithm, **engine_extra)
        self.recording = drafter is not None and algorithm == ALGORITHM
        self._tmp = None
        if self.recording and record is None:
            fd, record = tempfile.mkstemp(prefix="pedagle-sglang-", suffix=".jsonl")
            os.close(fd)
            self._tmp = record
        self.record = record
        self.engine = None
        self._env_before: str | None = None
        self._n = 0

    def __enter__(self) -> "EngineSession":
        import sglang

        if self.recording:
            Path(self.record).write_text("")
            self._env_before = os.environ.get(RECORD_ENV)
            os.environ[RECORD_ENV] = str(self.record)     # inherited by SGLang's scheduler process
        try:
            self.engine = sglang.Engine(**self.kwargs)
        except BaseException:
            self._restore_env()
            raise
        return self

    def _restore_env(self) -> None:
        if self.recording:
            if self._env_before is None:
                os.environ.pop(RECORD_ENV, None)
            else:
                os.environ[RECORD_ENV] = self._env_before

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.engine is not None:
                self.engine.shutdown()
        finally:
            self.engine = None
            self._restore_env()

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
                 temperature: float = 0.0, seed: int | None = None, rid_prefix: str = "pedagle") -> dict[str, Any]:
        """Generate (EOS ignored) for every prompt; ``max_new_tokens`` per prompt or one for all. Returns
        ``{"outputs": [[ids]], "meta": [...], "rids": [...]}``."""
        n = len(prompts)
        mnt = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
        if len(mnt) != n:
            raise ValueError(f"max_new_tokens: {len(mnt)} values for {n} prompts")
        rids = [f"{rid_prefix}-{self._n}-{i}" for i in range(n)]
        self._n += 1
        params = []
        for i in range(n):
            p = {"temperature": float(temperature), "max_new_tokens": mnt[i], "ignore_eos": True}
            if temperature and seed is not None:
                p["sampling_seed"] = int(seed) + i
            params.append(p)
        outs = self.engine.generate(input_ids=[list(map(int, p)) for p in prompts], rid=rids, sampling_params=params)
        return {"outputs": [list(o["output_ids"]) for o in outs], "meta": [o.get("meta_info", {}) for o in outs],
                "rids": rids}

    def records(self) -> list[dict[str, Any]]:
        if not self.recording or not self.record or not Path(self.record).exists():
            return []
        return [json.loads(line) for line in Path(self.record).read_text().splitlines() if line.strip()]

    def close_record(self) -> None:
        if self._tmp is not None and Path(self._tmp).exists():
            os.unlink(self._tmp)


def generate(target: str, drafter: str | None, prompts: Sequence[Sequence[int]], max_new_tokens: int, K: int = 3,
             record: str | None = None, **engine_extra: Any) -> dict[str, Any]:
    """Greedy generation (EOS ignored) of every prompt in one engine; returns outputs, per-request meta info and,
    for PEAGLE, the draft records. Runs in this process (SGLang starts its own scheduler subprocess)."""
    session = EngineSession(target, drafter, K, record=record, **engine_extra)
    try:
        with session:
            gen = session.generate(prompts, max_new_tokens)
        gen["records"] = session.records()
    finally:
        session.close_record()
    return gen


# ---------------------------------------------------------------------------------------------- jobs in a child
def run_job(job: dict[str, Any], device_kwargs: dict[str, Any]) -> dict[str, Any]:
    """One engine job (in this process): ``{"target", "drafter" (None: target only), "K", "algorithm", "dtype",
    "engine": {extra Engine kwargs}, "env": {variables set while the engine runs}?, "calls": [{"name", "prompts",
    "max_new_tokens", "temperature"?, "seed"?}]}`` -> ``{"start_s", "total_s", "calls": {name: generate result},
    "records": [...]}``. ``env`` reaches SGLang's scheduler process (it inherits this process's environment)."""
    import time

    t0 = time.perf_counter()
    session = EngineSession(job["target"], job.get("drafter"), int(job.get("K", 1)),
                            algorithm=job.get("algorithm") or ALGORITHM, dtype=job.get("dtype", "float32"),
                            **{**device_kwargs, **(job.get("engine") or {})})
    out: dict[str, Any] = {"calls": {}}
    env = {str(k): str(v) for k, v in (job.get("env") or {}).items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with session:
            out["start_s"] = time.perf_counter() - t0
            for c in job["calls"]:
                t1 = time.perf_counter()
                out["calls"][c["name"]] = session.generate(c["prompts"], c["max_new_tokens"],
                                                           temperature=float(c.get("temperature", 0.0)),
                                                           seed=c.get("seed"), rid_prefix=c["name"])
                out["calls"][c["name"]]["seconds"] = time.perf_counter() - t1
        out["records"] = session.records()
    finally:
        session.close_record()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out["total_s"] = time.perf_counter() - t0
    return out


def run_jobs(jobs: list[dict[str, Any]], device: str = "cpu", python: str | None = None, timeout: float = 3600,
             log: str | None = None) -> list[dict[str, Any]]:
    """Run engine jobs one after another in ONE child process (``python -m pedagle_backends.sglang.runner``):
    SGLang's CPU engine must be set up before SGLang is first imported (`cpu.engine_kwargs`), which a process
    that already imported SGLang cannot do, and one child pays SGLang's import once. Returns one result per job
    (`run_job`), or ``{"error": ...}`` for a job that failed or was not reached."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="pedagle-sglang-jobs-") as tmp:
        inp, outp = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps({"device": device, "jobs": jobs}))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.run([python or sys.executable, "-m", "pedagle_backends.sglang.runner", str(inp),
                                   str(outp)], env=env, capture_output=True, text=True, timeout=timeout)
            tail = (proc.stdout + proc.stderr)[-6000:]
            if log:
                Path(log).write_text(proc.stdout + proc.stderr)
            rc = proc.returncode
        except subprocess.TimeoutExpired as e:
            rc, tail = None, f"timed out after {timeout} s: {str(e.stderr or '')[-4000:]}"
        done = json.loads(outp.read_text())["results"] if outp.exists() else []
    why = f"the SGLang engine process ended (exit {rc}) before this job finished; its last output:\n{tail}"
    return [done[i] if i < len(done) else {"error": why} for i in range(len(jobs))]


ENGINE_ARGS_ENV = "PEDAGLE_SGLANG_ENGINE_ARGS"


def extra_engine_args() -> dict[str, Any]:
    """``sglang.Engine`` keywords for every job of a child, from ``$PEDAGLE_SGLANG_ENGINE_ARGS`` (a JSON object, e.g.
    ``{"attention_backend": "triton"}`` on a GPU without FA3); a job's own ``engine`` keywords win."""
    raw = os.environ.get(ENGINE_ARGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        val = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"${ENGINE_ARGS_ENV}: not JSON ({e}); expected an object of sglang.Engine keywords, e.g. "
                         '\'{"attention_backend": "triton"}\'') from None
    if not isinstance(val, dict):
        raise ValueError(f"${ENGINE_ARGS_ENV}: {type(val).__name__}; expected a JSON object of sglang.Engine keywords")
    return val


def _child(in_path: str, out_path: str) -> None:
    job_file = json.loads(Path(in_path).read_text())
    device_kwargs: dict[str, Any] = {}
    import torch

    if job_file.get("device", "cpu") == "cpu" or not torch.cuda.is_available():
        from . import cpu

        device_kwargs = cpu.engine_kwargs()          # before SGLang is imported
    device_kwargs.update(extra_engine_args())
    results: list[dict[str, Any]] = []
    for job in job_file["jobs"]:
        try:
            results.append(run_job(job, device_kwargs))
        except Exception as e:  # noqa: BLE001 - reported per job
            import traceback

            results.append({"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"})
        Path(out_path).write_text(json.dumps({"results": results}))     # what finished survives a crash later


def config_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The worker's ``kind: "config"`` record of a run (None when there is none)."""
    return next((r for r in records if r.get("kind") == "config"), None)


def per_request_steps(records: list[dict[str, Any]], rids: Sequence[str],
                      outputs: Sequence[Sequence[int]] | None = None) -> list[list[dict[str, Any]]]:
    """For each request (in ``rids`` order), its draft steps in order: {"drafts": [K], "accepted": n | None}
    where ``accepted`` is how many drafts of the PREVIOUS step its verify accepted (None for step 0). The draft
    steps after a non-final prefill chunk (``chunked``) are left out: no verify follows them.

    With ``outputs`` (each request's output ids), a request's steps end where its output was complete: a decode
    step that started after the tokens before it (1 per prefill, accepted + 1 per verify) already covered the
    output ran on a request that had finished. SGLang's overlap scheduler does that: a request finishing at step N
    can still be in step N+1, launched before step N's result was processed (SGLang drops that step's tokens;
    0.5.23 leaves out a request one token short of max_new_tokens, 0.5.17 does not). Without ``outputs`` such steps
    are kept."""
    index = {r: i for i, r in enumerate(rids)}
    steps: list[list[dict[str, Any]]] = [[] for _ in rids]
    emitted = [0] * len(rids)
    done = [False] * len(rids)
    for rec in records:
        chunked = rec.get("chunked") or []
        for j, rid in enumerate(rec.get("rids") or []):
            if rid not in index or (j < len(chunked) and chunked[j]):
                continue
            b = index[rid]
            acc = None
            if rec.get("kind") == "decode":
                acc = int(rec["accept_lens"][j]) - 1
                if outputs is not None and emitted[b] >= len(outputs[b]):
                    done[b] = True                  # the request had finished: an in-flight step, dropped
            if done[b]:
                continue
            emitted[b] += 1 if acc is None else acc + 1
            steps[b].append({"drafts": rec["drafts"][j], "accepted": acc})
    return steps


def to_case_result(gen: dict[str, Any], K: int, steps: int) -> dict[str, Any]:
    """The conformance result dict (see `pedagle_core.hooks`) of the first ``steps`` verify steps."""
    per_req = per_request_steps(gen["records"], gen["rids"], gen.get("outputs"))
    B = len(per_req)
    drafts: list[list[Any]] = []
    accepted: list[list[Any]] = []
    per_pos = [0] * K
    for s in range(steps):
        drafts.append([per_req[b][s]["drafts"] if s < len(per_req[b]) else None for b in range(B)])
        row = []
        for b in range(B):
            nxt = per_req[b][s + 1] if s + 1 < len(per_req[b]) else None
            a = None if nxt is None else nxt["accepted"]
            row.append(a)
            for p in range(a or 0):
                per_pos[p] += 1
        accepted.append(row)
    outputs = []
    for b in range(B):
        n = 1 + sum((a or 0) + 1 for a in (accepted[s][b] for s in range(steps)) if a is not None)
        outputs.append(gen["outputs"][b][:n])
    return {"backend": "sglang", "mode": "parallel", "K": K, "steps": steps, "output_ids": outputs,
            "drafts": drafts, "margins": None, "accepted": accepted, "accepted_per_position": per_pos,
            "metrics": {"meta": gen["meta"]}}


__all__ = ["engine_kwargs", "extra_engine_args", "EngineSession", "generate", "run_job", "run_jobs", "config_record",
           "per_request_steps", "to_case_result"]


if __name__ == "__main__":
    import sys

    _child(sys.argv[1], sys.argv[2])
