"""Deliberately broken backends: the conformance suite must catch each of them (tests/test_conformance.py).

They wrap the reference backend (its engine end to end, `pedagle_core.draft` for step states) with one
defect each, and are registered by name, e.g.::

    pedagle conformance run --backends broken-mask \\
        --plugin broken-mask=pedagle_conformance.testing:ZeroMaskHiddenBackend

* `ZeroMaskHiddenBackend`   the drafter's learned ``mask_hidden`` zeroed (P-EAGLE MASK slots get fc(0))
* `ShiftedPositionsBackend` every decode step's rows handed to the drafter one position too far
* `FlipNearTiesBackend`     where the drafter's top-1/top-2 margin is below ``eps`` it proposes the
                            top-2 token: a backend whose rounding differs only at near-ties (the runner
                            must list those as near-ties under a tie margin >= eps, and re-synchronise)
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from pedagle_core.draft import StepInput
from pedagle_core.hooks import CaseRunner, hookimpl


@contextlib.contextmanager
def patched_engine_draft(transform: Callable[[StepInput], StepInput]) -> Iterator[None]:
    """Every ``draft()`` call of the reference engine gets ``transform(step)`` instead of ``step``."""
    from pedagle_core.engine import engine as engine_mod
    from pedagle_core.engine import graphs as graphs_mod

    originals = {m: m.draft for m in (engine_mod, graphs_mod)}

    def wrap(fn):
        def draft(drafter, step, K, cache, *args, **kwargs):
            return fn(drafter, transform(step), K, cache, *args, **kwargs)
        return draft

    for m, fn in originals.items():
        m.draft = wrap(fn)
    try:
        yield
    finally:
        for m, fn in originals.items():
            m.draft = fn


class _BrokenReference(CaseRunner):
    """Common plumbing: a named backend running the reference with a defect."""

    name = "broken"
    defect = ""

    def __init__(self, name: str | None = None) -> None:
        if name:
            self.name = name

    @hookimpl
    def pedagle_backend_info(self) -> dict[str, Any]:
        return {"name": self.name, "version": "test", "capabilities": ["parallel", "autoregressive", "greedy",
                                                                       "conformance"],
                "available": True, "reason": "", "defect": self.defect}

    def run_case(self, **case: Any) -> dict[str, Any]:
        from pedagle_core.engine.backend import ReferenceBackend

        with self.engine_context(case):
            res = ReferenceBackend().run_case(**self.case_args(case))
        res["backend"] = self.name
        return res

    @hookimpl
    def pedagle_replay_steps(self, backend: str, case: dict[str, Any], steps: list[Any],
                             max_model_len: int) -> dict[str, Any] | None:
        if backend != self.name:
            return None
        from .stepstate import replay_reference

        args = self.case_args(case)
        with self.engine_context(case):
            return replay_reference(args, steps, max_model_len, drafter=args["drafter"] if not isinstance(
                args["drafter"], str) else None, transform=self.step_transform)

    # ------------------------------------------------------------------ defects
    def case_args(self, case: dict[str, Any]) -> dict[str, Any]:
        return dict(case)

    def engine_context(self, case: dict[str, Any]):
        return contextlib.nullcontext()

    step_transform = None


class ZeroMaskHiddenBackend(_BrokenReference):
    name = "broken-mask"
    defect = "mask_hidden zeroed"

    def case_args(self, case: dict[str, Any]) -> dict[str, Any]:
        from pedagle_core.engine.backend import load_drafter_for
        from pedagle_core.engine.target import resolve_dtype

        d = load_drafter_for(case["drafter"], case["target"], case["mode"], resolve_dtype(case.get("dtype")),
                             case.get("device", "cpu"))
        with torch.no_grad():
            d.mask_hidden.zero_()
        return {**case, "drafter": d}


def _shift(step: StepInput) -> StepInput:
    if step.num_rejected is None:                         # the prefill keeps its positions
        return step
    return StepInput(step.token_ids, step.positions + 1, step.query_start_loc, step.num_rejected,
                     step.next_token_ids, step.aux_hidden)


class ShiftedPositionsBackend(_BrokenReference):
    name = "broken-positions"
    defect = "decode-step positions off by one"

    def engine_context(self, case: dict[str, Any]):
        return patched_engine_draft(_shift)

    @staticmethod
    def step_transform(j: int, step: StepInput) -> StepInput:
        return _shift(step)


class FlipNearTiesBackend(_BrokenReference):
    name = "flip-ties"
    defect = "top-2 draft where the drafter's margin < eps"
    eps = 0.5

    def engine_context(self, case: dict[str, Any]):
        return flipped_readout(self.eps)


@contextlib.contextmanager
def flipped_readout(eps: float) -> Iterator[None]:
    """Greedy readout that takes the second-best draft token where top-1 minus top-2 < ``eps``."""
    from pedagle_core import draft as draft_mod

    original = draft_mod.readout

    def readout(drafter, out, temperature=0.0, generator=None):
        if temperature > 0:
            return original(drafter, out, temperature, generator)
        logits = drafter.compute_logits(out).float()
        top = logits.topk(2, dim=-1)
        margins = top.values[:, 0] - top.values[:, 1]
        ids = torch.where(margins < eps, top.indices[:, 1], top.indices[:, 0])
        return drafter.to_target_ids(ids), margins, None, ids

    draft_mod.readout = readout
    try:
        yield
    finally:
        draft_mod.readout = original


__all__ = ["ZeroMaskHiddenBackend", "ShiftedPositionsBackend", "FlipNearTiesBackend", "patched_engine_draft",
           "flipped_readout"]
