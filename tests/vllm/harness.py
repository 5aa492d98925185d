"""The three ways of running one case (pedagle's reference engine, vLLM native, vLLM + pedagle plugin)
and the comparisons of their outputs, acceptance counts and per-step drafts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pedagle_backends.vllm.plugin import installed_version as installed_vllm

SUBSET = "all"
"""``--vllm-cases`` (set by conftest.py): "all", or "hooks" (the version-dependent subset)."""


@dataclass
class Case:
    name: str
    drafter: str | None            # key of the family dict, None = no speculation
    K: int = 0
    parallel: bool = True
    speculators: bool = False
    max_model_len: int = 256
    target: str = "target"         # key of the family dict
    enforce_eager: bool = True     # False: vLLM compiles target and drafter (torch.compile)

    @property
    def mode(self) -> str:
        if self.drafter is None:
            return "none"
        return "parallel" if self.parallel else "autoregressive"


@dataclass
class Run:
    outputs: list[list[int]]
    metrics: dict[str, Any] | None
    drafts: dict[int, list[tuple[int, list[int]]]] = field(default_factory=dict)   # request -> [(bonus_pos, K drafts)]
    records: list[dict[str, Any]] = field(default_factory=list)                     # vLLM's raw records
    margins: dict[int, list[list[float]]] = field(default_factory=dict)             # reference: per step, per draft
    drafter_skips: int = 0          # reference: steps after which vLLM's max_model_len rule skipped the drafter


def engine_K(case: Case, fam: dict[str, str]) -> int:
    """The K the installed vLLM drafts with for ``case``: ``case.K``, except for a speculators checkpoint
    served as the model, where vLLM before 0.29 takes the checkpoint's ``speculative_tokens`` instead
    (`pedagle_backends.vllm.compat`)."""
    if not case.speculators:
        return case.K
    from pedagle_backends.vllm.compat import checkpoint_speculative_tokens, speculators_num_speculative_tokens

    config = json.loads((Path(fam[case.drafter]) / "config.json").read_text())
    return speculators_num_speculative_tokens(case.K, checkpoint_speculative_tokens(config), installed_vllm())


def speculators_as_model_refused() -> bool:
    """Whether the installed vLLM refuses the family's speculators exports served as the model: their verifier is
    a local directory, which vLLM 0.33+ refuse there (`pedagle_backends.vllm.compat.speculators_verifier_refused`
    says which verifiers; every local directory is one of them)."""
    from pedagle_backends.vllm.compat import SPECULATORS_REMOTE_VERIFIER_SINCE

    return installed_vllm() >= SPECULATORS_REMOTE_VERIFIER_SINCE


def vllm_job(case: Case, fam: dict[str, str], prompts: list[list[int]], max_tokens: int,
             record: str | None = None) -> dict[str, Any]:
    job: dict[str, Any] = dict(target=fam[case.target], drafter=fam[case.drafter] if case.drafter else None, K=case.K,
                               parallel=case.parallel, prompts=prompts, max_tokens=max_tokens,
                               max_model_len=case.max_model_len, record=record, enforce_eager=case.enforce_eager)
    if case.speculators:
        job.update(speculators=True, target=None)
    return job


def from_vllm(result: dict[str, Any]) -> Run:
    if "error" in result:
        raise AssertionError(f"vLLM job failed: {result['error']}\n{result.get('traceback', '')}")
    drafts: dict[int, list[tuple[int, list[int]]]] = {}
    recs = result.get("drafts") or []
    ids = sorted({int(r.split("-")[0]) for rec in recs for r in rec["req_ids"]})
    base = ids[0] if ids else 0
    for rec in recs:
        for b, rid in enumerate(rec["req_ids"]):
            drafts.setdefault(int(rid.split("-")[0]) - base, []).append((rec["bonus_positions"][b], rec["drafts"][b]))
    return Run(result["outputs"], result.get("metrics"), drafts, recs)


_TARGETS: dict[str, Any] = {}


def target_model(path: str) -> Any:
    """The HF target at ``path`` in float32 (cached)."""
    if path not in _TARGETS:
        from transformers import AutoModelForCausalLM

        _TARGETS[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return _TARGETS[path]


def run_reference(case: Case, fam: dict[str, str], prompts: list[list[int]], max_tokens: int) -> Run:
    from helpers_kernels import core_torch_path
    from pedagle_core.engine.engine import SpecEngine
    from pedagle_core.formats import load_drafter

    # tests/conftest.py turns the Triton interpreter on for CPU kernel tests; the reference engine here
    # should take the core's torch path, as pedagle does on CPU.
    with core_torch_path():
        return _run_reference(case, fam, prompts, max_tokens, target_model(fam[case.target]), SpecEngine,
                              load_drafter)


def _run_reference(case, fam, prompts, max_tokens, target_model, SpecEngine, load_drafter) -> Run:

    drafter = None
    if case.drafter is not None:
        drafter = load_drafter(fam[case.drafter], target=fam[case.target], dtype=torch.float32,
                               mode="parallel" if case.parallel else "autoregressive")
    engine = SpecEngine(target_model, drafter, mode=case.mode, K=max(case.K, 1), max_batch=8,
                        max_model_len=case.max_model_len)
    res = engine.generate(prompts, max_tokens, eos_token_ids=(), record=True)
    lens = [len(p) for p in prompts]
    drafts: dict[int, list[tuple[int, list[int]]]] = {}
    margins: dict[int, list[list[float]]] = {}
    for rec in res.trace or []:
        for i, emitted in zip(rec.requests, rec.emitted):
            lens[i] += len(emitted)
        for i, d, mg in zip(rec.drafted_for, rec.drafts, rec.margins or [None] * len(rec.drafts)):
            drafts.setdefault(i, []).append((lens[i] - 2, [int(x) for x in d]))
            margins.setdefault(i, []).append(list(mg) if mg is not None else [])
    m = res.metrics
    metrics = None
    if case.drafter is not None:
        metrics = {"num_drafts": m.num_drafts, "num_draft_tokens": m.num_draft_tokens,
                   "num_accepted_tokens": m.num_accepted_tokens, "accepted_per_pos": list(m.accepted_per_position)}
    return Run([list(map(int, o)) for o in res.output_ids], metrics, drafts, margins=margins,
               drafter_skips=sum(rec.drafter_skipped for rec in res.trace or []))


def compare_drafts(ref: Run, vllm: Run, K: int) -> int:
    """Per request, vLLM's recorded drafts equal the reference's step by step (vLLM also drafts once more
    for a request that has just finished). Near max_model_len both skip the drafter for the whole batch
    in the same steps (vLLM's rule, which the reference engine follows by default), so neither records
    drafts there. Returns the number of (request, step) drafts compared."""
    n = 0
    assert set(ref.drafts) <= set(vllm.drafts), f"requests drafted: reference {sorted(ref.drafts)}, vLLM {sorted(vllm.drafts)}"
    for req, ref_steps in ref.drafts.items():
        got = vllm.drafts[req]
        assert len(got) - len(ref_steps) in (0, 1), (
            f"request {req}: {len(ref_steps)} reference drafting steps, {len(got)} in vLLM")
        for step, (a, b) in enumerate(zip(ref_steps, got)):
            assert a == b, f"request {req}, drafting step {step}: reference (bonus position, drafts) {a}, vLLM {b}"
            n += 1
    return n


def compare_drafts_near_ties(ref: Run, vllm: Run, tie: float) -> tuple[int, int]:
    """For trained heads (where float rounding may flip a near-tie): per request, up to the first step
    whose bonus position differs, every draft either equals the reference's or the reference's top-1/top-2
    margin there is below ``tie``; drafts after a differing draft in the same step are not compared.
    Returns (drafts compared, near-tie mismatches)."""
    n = ties = 0
    for req, ref_steps in ref.drafts.items():
        for step, ((p_ref, d_ref), (p_v, d_v)) in enumerate(zip(ref_steps, vllm.drafts.get(req, []))):
            if p_ref != p_v:
                break
            for j, (a, b) in enumerate(zip(d_ref, d_v)):
                n += 1
                if a != b:
                    m = ref.margins[req][step][j]
                    assert m < tie, (f"request {req}, step {step}, draft {j}: reference {a} (margin {m:.4f}), "
                                     f"vLLM {b}")
                    ties += 1
                    break
    return n, ties
