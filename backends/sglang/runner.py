"""Run a greedy job through ``sglang.Engine`` (PEAGLE, or target-only) and shape the result like pedagle's
conformance result (`pedagle_core.hooks`). Needs SGLang's engine, i.e. a CUDA GPU with SGLang's CUDA kernels;
used by `backend.SglangBackend.run_case` and ``scripts/sglang_gpu_e2e.py``. Not run on CPU machines.

Drafts come from the PEAGLE worker's recorder (``PEDAGLE_RECORD_DRAFTS``): one record per draft step with the
request ids (``rid``), so each request's drafting steps are recovered in order: step 0 after its prefill,
step s after its s-th verify, whose ``accept_lens - 1`` is the number of drafts of step s-1 accepted.
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
                  **extra: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(model_path=str(target), dtype=dtype, skip_tokenizer_init=True, page_size=1,
                              disable_overlap_schedule=True, disable_radix_cache=True, random_seed=0,
                              mem_fraction_static=0.5, disable_cuda_graph=True)
    if max_model_len:
        kw["context_length"] = int(max_model_len)
    if drafter is not None:
        kw.update(speculative_algorithm=ALGORITHM, speculative_draft_model_path=str(drafter),
                  speculative_num_draft_tokens=K + 1)
    kw.update(extra)
    return kw


def generate(target: str, drafter: str | None, prompts: Sequence[Sequence[int]], max_new_tokens: int, K: int = 3,
             record: str | None = None, **engine_extra: Any) -> dict[str, Any]:
    """Greedy generation (EOS ignored) of every prompt; returns outputs, per-request meta info and, for PEAGLE,
    the draft records. Runs in this process (SGLang starts its own scheduler subprocess)."""
    import sglang

    env_before = os.environ.get(RECORD_ENV)
    tmp = None
    if drafter is not None:
        if record is None:
            tmp = tempfile.NamedTemporaryFile(prefix="pedagle-sglang-", suffix=".jsonl", delete=False)
            tmp.close()
            record = tmp.name
        Path(record).write_text("")
        os.environ[RECORD_ENV] = record              # inherited by SGLang's scheduler process
    try:
        engine = sglang.Engine(**engine_kwargs(target, drafter, K, **engine_extra))
        try:
            rids = [f"pedagle-{i}" for i in range(len(prompts))]
            outs = engine.generate(input_ids=[list(map(int, p)) for p in prompts], rid=rids,
                                   sampling_params={"temperature": 0.0, "max_new_tokens": int(max_new_tokens),
                                                    "ignore_eos": True})
        finally:
            engine.shutdown()
    finally:
        if drafter is not None:
            if env_before is None:
                os.environ.pop(RECORD_ENV, None)
            else:
                os.environ[RECORD_ENV] = env_before
    records = []
    if drafter is not None and record and Path(record).exists():
        records = [json.loads(line) for line in Path(record).read_text().splitlines() if line.strip()]
    if tmp is not None:
        os.unlink(tmp.name)
    return {"outputs": [list(o["output_ids"]) for o in outs], "meta": [o.get("meta_info", {}) for o in outs],
            "rids": rids, "records": records}


def per_request_steps(records: list[dict[str, Any]], rids: Sequence[str]) -> list[list[dict[str, Any]]]:
    """For each request (in ``rids`` order), its draft steps in order: {"drafts": [K], "accepted": n | None}
    where ``accepted`` is how many drafts of the PREVIOUS step its verify accepted (None for step 0)."""
    index = {r: i for i, r in enumerate(rids)}
    steps: list[list[dict[str, Any]]] = [[] for _ in rids]
    for rec in records:
        for j, rid in enumerate(rec.get("rids") or []):
            if rid not in index:
                continue
            acc = None
            if rec.get("kind") == "decode":
                acc = int(rec["accept_lens"][j]) - 1
            steps[index[rid]].append({"drafts": rec["drafts"][j], "accepted": acc})
    return steps


def to_case_result(gen: dict[str, Any], K: int, steps: int) -> dict[str, Any]:
    """The conformance result dict (see `pedagle_core.hooks`) of the first ``steps`` verify steps."""
    per_req = per_request_steps(gen["records"], gen["rids"])
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


__all__ = ["engine_kwargs", "generate", "per_request_steps", "to_case_result"]
