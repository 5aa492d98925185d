"""pedagle's cross-backend conformance suite (``pedagle conformance record|run|list``).

Same drafter, same drafts, in every backend: small cases (target, drafter, prompts, K, mode, steps,
dtype, device) carry the reference backend's recorded result and step inputs; the runner discovers the
installed backends through pluggy (``pedagle.backends`` entry points), runs every case on each and
compares step by step (near-ties classified by the reference's logit margin, re-synchronisation after a
divergence), end to end or from recorded step states.

    case.py        case files (JSON), discovery, tie margins
    record.py      ``record``: expected results + step states from the reference backend
    stepstate.py   step-state capture, files, reference replay
    compare.py     step-by-step comparison, desynchronisation, near-ties
    runner.py      ``run``: backends, levels (e2e | step-state), re-synchronisation
    report.py      table, markdown report
    vllm_batch.py  vLLM cases batched in one child process
    sglang_steps.py SGLang drafting-path replay (SGLang's Python API; no engine)
    testing.py     deliberately broken backends (the suite must catch them)
    cases/         bundled cases (random heads + the tiny-code family)
"""

from .case import Case, discover_cases, load_case

__all__ = ["Case", "discover_cases", "load_case"]
