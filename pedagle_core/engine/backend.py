"""The built-in reference backend: pedagle's own engine (`SpecEngine`) behind the backend contract
(`pedagle_core.hooks`). Registered as the ``reference`` entry point of ``pedagle.backends``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .. import __version__
from ..hooks import CaseRunner, hookimpl
from .engine import SpecEngine, VerifyState, make_step_input
from .target import EngineError, TargetModel, load_hf_target, register_attention, resolve_dtype


@dataclass
class ReferenceState:
    """The reference engine's state after one target step: the engine (for its caches) and the step."""

    engine: SpecEngine
    verify: VerifyState


def load_drafter_for(path: Any, target: Any, mode: str, dtype: torch.dtype | None, device: Any):
    """A `Drafter` from a checkpoint directory (``pedagle_core.formats``), or ``path`` itself if it is one."""
    from ..model import Drafter

    if isinstance(path, Drafter):
        return path.to(device=device, dtype=dtype) if dtype is not None else path.to(device)
    from ..formats import load_drafter

    return load_drafter(path, target=target, dtype=dtype, device=device,
                        mode="parallel" if mode == "parallel" else "autoregressive")


class ReferenceBackend(CaseRunner):
    """pedagle's reference engine as a backend (hooks of `pedagle_core.hooks.BackendSpec`)."""

    name = "reference"
    CAPABILITIES = ["parallel", "autoregressive", "greedy", "sampling", "batch", "sliding_window",
                    "attention_sinks", "conformance", "cuda_graphs"]

    # ------------------------------------------------------------------ hooks
    @hookimpl
    def pedagle_backend_info(self) -> dict[str, Any]:
        try:
            import transformers  # noqa: F401
        except ImportError as e:  # pragma: no cover - transformers is a dependency
            return {"name": self.name, "version": __version__, "capabilities": self.CAPABILITIES,
                    "available": False, "reason": f"transformers is not importable ({e})"}
        return {"name": self.name, "version": __version__, "capabilities": list(self.CAPABILITIES),
                "available": True, "reason": ""}

    @hookimpl
    def pedagle_install(self, options: dict[str, Any]) -> bool:
        """Register the 'pedagle' attention function with transformers (idempotent)."""
        register_attention()
        return True

    @hookimpl
    def pedagle_make_step_input(self, engine_state: Any):
        if isinstance(engine_state, ReferenceState):
            return make_step_input(engine_state.verify)
        if isinstance(engine_state, VerifyState):
            return make_step_input(engine_state)
        return None

    @hookimpl
    def pedagle_attention_provider(self, engine_state: Any, drafter: Any):
        if not isinstance(engine_state, ReferenceState):
            return None
        return engine_state.engine.drafter_cache(engine_state.verify)

    # ------------------------------------------------------------------ conformance
    def run_case(self, target: Any, drafter: Any, prompt_ids: Sequence[Sequence[int]], K: int,
                 mode: str = "parallel", steps: int = 8, dtype: str | torch.dtype | None = "float32",
                 device: str = "cpu", temperature: float = 0.0, seed: int = 0,
                 max_model_len: int | None = None, top_p: float = 1.0, top_k: int = 0) -> dict[str, Any]:
        """Run ``steps`` verify steps after the prefill for every prompt and record what happened.

        target: HF directory or transformers model; drafter: checkpoint directory or `Drafter`.
        EOS never stops a request (cases compare fixed step counts). Returns the conformance result
        dict of `pedagle_core.hooks` (drafts/margins/accepted per step and request, output ids, metrics).
        """
        from .verify import SamplingParams

        dt = resolve_dtype(dtype)
        hf = load_hf_target(target, dtype=dt, device=device) if isinstance(target, (str, bytes)) or \
            hasattr(target, "__fspath__") else target
        d = load_drafter_for(drafter, hf, mode, dt, device)
        tm = TargetModel(hf, aux_layer_ids=d.config.aux_layer_ids)
        engine = SpecEngine(tm, d, mode=mode, K=K, max_batch=len(prompt_ids), max_model_len=max_model_len)
        res = engine.generate(prompt_ids, max_new_tokens=10**9 if max_model_len else (steps + 1) * (K + 1),
                              sampling=SamplingParams(temperature, top_p, top_k), seed=seed, eos_token_ids=(),
                              record=True, max_verify_steps=steps)
        return trace_to_case_result(res, mode, K, steps, len(prompt_ids))


def trace_to_case_result(res, mode: str, K: int, steps: int, B: int) -> dict[str, Any]:
    """Reshape a recorded `GenerateResult` into the conformance result dict (see `pedagle_core.hooks`)."""
    trace = res.trace or []
    drafts: list[list[Any]] = []
    margins: list[list[Any]] = []
    accepted: list[list[Any]] = []
    for rec in trace:
        if rec.step > 0:                                     # verify step s+1 checks drafting step s
            acc: list[Any] = [None] * B
            for i, a in zip(rec.requests, rec.accepted):
                acc[i] = a
            accepted.append(acc)
        if rec.drafted_for:
            dr: list[Any] = [None] * B
            mg: list[Any] = [None] * B
            for j, i in enumerate(rec.drafted_for):
                dr[i], mg[i] = rec.drafts[j], rec.margins[j]
            drafts.append(dr)
            margins.append(mg)
    m = res.metrics
    return {"backend": ReferenceBackend.name, "mode": mode, "K": K, "steps": steps,
            "output_ids": res.output_ids, "drafts": drafts, "margins": margins, "accepted": accepted,
            "accepted_per_position": list(m.accepted_per_position), "metrics": m.to_dict()}


__all__ = ["ReferenceBackend", "ReferenceState", "EngineError", "trace_to_case_result", "load_drafter_for"]
