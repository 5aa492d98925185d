"""pedagle's SGLang backend behind the pluggy contract (`pedagle_core.hooks`), entry point ``sglang`` of
``pedagle.backends``. Imports SGLang lazily: without SGLang it reports ``available: False`` with the reason.

* ``pedagle_install`` registers the PEAGLE plugin in this process (what SGLang's ``load_plugins`` does).
* ``pedagle_make_step_input`` turns `SglangVerifyState` / `SglangPrefillState` (SGLang's tensors after a
  verify / prefill) into pedagle's `StepInput` (`layout`).
* ``pedagle_attention_provider`` returns None: SGLang's attention runs only inside its own forward (the
  drafter's provider is bound per forward batch, `attention.SglangAttention.bind`).
* ``pedagle_run_case`` / ``run_cases`` run conformance cases through ``sglang.Engine`` (`runner`): on a CUDA GPU,
  or on a CPU with SGLang's CPU engine and pedagle's CPU ``sgl_kernel`` ops (`cpu`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pedagle_core.hooks import CaseRunner, hookimpl

from . import ALGORITHM, SUPPORTED_SGLANG


@dataclass
class SglangVerifyState:
    """SGLang's state after one verify (see `layout.decode_step_input`)."""

    bonus_tokens: torch.Tensor     # [B] verify roots (tokens at seq_lens)
    drafts: torch.Tensor           # [B, K] verified drafts
    seq_lens: torch.Tensor         # [B] committed lengths before the verify
    accept_lens: torch.Tensor      # [B] accepted drafts + 1
    next_token_ids: torch.Tensor   # [B] new bonus tokens
    aux_hidden: torch.Tensor       # [B*(K+1), n_aux*Ht]


@dataclass
class SglangPrefillState:
    """SGLang's state after one (chunked) prefill (see `layout.prefill_step_input`)."""

    input_ids: torch.Tensor
    extend_lens: torch.Tensor
    prefix_lens: torch.Tensor
    tail_tokens: torch.Tensor
    aux_hidden: torch.Tensor


def sglang_status() -> tuple[str, bool, str]:
    """(version, available, reason) of SGLang's engine here: a supported SGLang and either a CUDA GPU or
    SGLang's CPU engine with pedagle's CPU ``sgl_kernel`` ops (`cpu.engine_status`)."""
    from importlib import metadata

    from pedagle_core.versions import version_in_range

    try:
        version = metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return "", False, "SGLang is not installed (pip install 'pedagle[sglang]')"
    if not version_in_range(version, SUPPORTED_SGLANG):
        return version, False, f"SGLang {version} is installed; pedagle supports sglang{SUPPORTED_SGLANG}"
    if torch.cuda.is_available():
        return version, True, ""
    from . import cpu

    ok, why = cpu.engine_status()
    if ok:
        return version, True, ""
    return version, False, (f"SGLang {version} is installed, but no CUDA GPU and SGLang's CPU engine cannot run here "
                            f"({why}); the PEAGLE plugin and its Python API work, no engine runs")


class SglangBackend(CaseRunner):
    name = "sglang"
    CAPABILITIES = ["parallel", "greedy", "batch", "conformance"]

    @hookimpl
    def pedagle_backend_info(self) -> dict[str, Any]:
        version, ok, reason = sglang_status()
        return {"name": self.name, "version": version, "capabilities": list(self.CAPABILITIES), "available": ok,
                "reason": reason, "algorithm": ALGORITHM}

    @hookimpl
    def pedagle_install(self, options: dict[str, Any]) -> Any:
        version, _, reason = sglang_status()
        if not version or reason.startswith(f"SGLang {version} is installed; pedagle supports"):
            return None
        from . import plugin

        plugin.register()
        plugin.apply_hooks()
        return True

    @hookimpl
    def pedagle_make_step_input(self, engine_state: Any):
        from . import layout

        if isinstance(engine_state, SglangVerifyState):
            s = engine_state
            return layout.decode_step_input(s.bonus_tokens, s.drafts, s.seq_lens, s.accept_lens, s.next_token_ids,
                                            s.aux_hidden)
        if isinstance(engine_state, SglangPrefillState):
            s = engine_state
            return layout.prefill_step_input(s.input_ids, s.extend_lens, s.prefix_lens, s.tail_tokens, s.aux_hidden)
        return None

    @hookimpl
    def pedagle_attention_provider(self, engine_state: Any, drafter: Any):
        return None

    def run_case(self, target: Any, drafter: Any, prompt_ids: Any, K: int, **rest: Any) -> dict[str, Any]:
        res = self.run_cases([dict(target=target, drafter=drafter, prompt_ids=prompt_ids, K=K, **rest)])[0]
        if isinstance(res, BaseException):
            raise res
        return res

    def run_cases(self, cases: list[dict[str, Any]]) -> list[Any]:
        """The conformance runner's batch entry: every case in its own ``sglang.Engine`` (its models and K fix the
        engine), one after another in ONE child process (`runner.run_jobs`); a failing case gives its exception."""
        from . import runner

        out: list[Any] = [None] * len(cases)
        jobs, index = [], []
        for i, c in enumerate(cases):
            try:
                jobs.append(self._job(**c))
                index.append(i)
            except Exception as e:  # noqa: BLE001 - reported per case
                out[i] = e
        if jobs:
            _, ok, reason = sglang_status()
            if not ok:
                raise RuntimeError(f"the SGLang backend cannot run a case here: {reason}")
            device = cases[index[0]].get("device") or "cuda"
            for i, job, res in zip(index, jobs, runner.run_jobs(jobs, device=device)):
                if "error" in res:
                    out[i] = RuntimeError(f"SGLang run failed: {res['error']}")
                    continue
                gen = {**res["calls"]["case"], "records": res["records"]}
                out[i] = runner.to_case_result(gen, job["K"], job["steps"])
        return out

    @staticmethod
    def _job(target: Any, drafter: Any, prompt_ids: Any, K: int, mode: str = "parallel", steps: int = 8,
             dtype: Any = "float32", device: str = "cuda", temperature: float = 0.0, seed: int = 0,
             max_model_len: int | None = None, **_: Any) -> dict[str, Any]:
        if mode != "parallel":
            raise ValueError(f"mode = {mode!r}; the SGLang backend serves PEAGLE (mode 'parallel') only")
        if temperature:
            raise ValueError("the SGLang backend runs conformance cases greedy only (temperature 0)")
        engine = {"context_length": int(max_model_len)} if max_model_len else {}
        return {"target": str(target), "drafter": str(drafter), "K": int(K), "algorithm": ALGORITHM,
                "dtype": str(dtype).replace("torch.", ""), "engine": engine, "steps": int(steps),
                "calls": [{"name": "case", "prompts": [list(map(int, p)) for p in prompt_ids],
                           "max_new_tokens": (int(steps) + 1) * (int(K) + 1)}]}


__all__ = ["SglangBackend", "SglangVerifyState", "SglangPrefillState", "sglang_status"]
