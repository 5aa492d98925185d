"""``pedagle conformance record``: expected results of every case, recorded by the reference backend.

For each case the reference backend (`pedagle_core.engine.backend.ReferenceBackend.run_case`, greedy,
EOS ignored, ``steps`` verify steps after the prefill) runs once while `stepstate.capture_steps` records
the step inputs the engine hands to the drafter. The case JSON gets ``expected``::

    recorded_with          {backend, pedagle, torch, transformers, device, dtype}
    output_ids [B][n]      emitted tokens (the prefill token first)
    drafts [S][B][K]       drafts of drafting step s (target ids)
    margins [S][B][K]      the reference drafter's top-1 minus top-2 logit of each draft (7 significant digits)
    accepted [S][B]        drafts accepted by verify step s+1
    accepted_per_position [K], min_margin, max_model_len (the reference engine's, for step-state replay),
    models                 short sha256 of the target's and the drafter's config + weights

and the step inputs go to ``<case>.steps.safetensors`` beside it (``step_state``). ``--check`` records
every case twice and fails unless both recordings are identical (JSON text and step-state bytes: in one
environment the reference is deterministic). ``--verify`` (`verify`) re-records without writing and
compares with the committed recording the way recordings made in other environments compare: ids
exactly, margins within `case.MARGIN_RTOL`, versions as information only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .case import Case, dumps_case, model_digest, save_case
from .stepstate import capture_steps, save_steps

MARGIN_DIGITS = 7


class RecordError(RuntimeError):
    pass


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.{MARGIN_DIGITS}g}")


def _versions(device: str, dtype: str) -> dict[str, Any]:
    import transformers

    from pedagle_core import __version__

    return {"backend": "reference", "pedagle": __version__, "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__, "device": device, "dtype": dtype}


@torch.no_grad()
def record_case(case: Case, device: str | None = None) -> tuple[dict[str, Any], list, str]:
    """Run ``case`` on the reference backend; returns (expected dict, step inputs, steps file name)."""
    from pedagle_core.engine.backend import ReferenceBackend

    missing = case.missing_models()
    if missing:
        raise RecordError(f"case {case.name}: model directories missing: {missing}")
    args = case.run_args(device=device)
    with _cpu_torch_paths(args["device"]), capture_steps() as cap:
        res = ReferenceBackend().run_case(**args)
    B, S, K = case.batch_size, case.steps, case.K
    # The static decode step drafts for every request before the engine knows they stop, so the last
    # verify step may add one drafting call whose drafts nobody uses: keep the first S.
    if len(cap) not in (S, S + 1):
        raise RecordError(f"case {case.name}: the reference engine drafted {len(cap)} times; expected {S} "
                          "(one drafting step after the prefill and after each verify step but the last)")
    cap = cap[:S]
    for j, c in enumerate(cap):
        if int(c.step.next_token_ids.shape[0]) != B:
            raise RecordError(f"case {case.name}: drafting step {j} ran for {int(c.step.next_token_ids.shape[0])} "
                              f"requests; expected all {B} (did a request stop early?)")
        if c.drafts != res["drafts"][j]:
            raise RecordError(f"case {case.name}: captured drafts of step {j} differ from the engine's trace")
    if len(res["drafts"]) != S or any(a is None for row in res["accepted"] for a in row):
        raise RecordError(f"case {case.name}: the reference result does not cover {S} steps for every request")
    margins = [[[_round(m) for m in req] for req in step] for step in res["margins"]]
    mml = {c.max_model_len for c in cap}
    if len(mml) != 1:
        raise RecordError(f"case {case.name}: the drafter cache changed max_model_len during the run: {sorted(mml)}")
    expected = {
        "recorded_with": _versions(args["device"], case.dtype_name),
        "output_ids": res["output_ids"],
        "drafts": res["drafts"],
        "margins": margins,
        "accepted": res["accepted"],
        "accepted_per_position": res["accepted_per_position"],
        "min_margin": min(m for step in margins for req in step for m in req),
        "max_model_len": mml.pop(),
        "models": {"target": model_digest(case.target_path), "drafter": model_digest(case.drafter_path)},
    }
    assert len(expected["drafts"][0][0]) == K
    return expected, [c.step for c in cap], f"{case.name}.steps.safetensors"


class _cpu_torch_paths:
    """On CPU, record with the core's plain-torch paths (no Triton interpreter), whatever the environment
    says: TRITON_INTERPRET=1 (set by the test suite) would route the expansion through the interpreter."""

    def __init__(self, device: str) -> None:
        self.cpu = not str(device).startswith("cuda")

    def __enter__(self):
        self.saved = os.environ.get("TRITON_INTERPRET")
        if self.cpu:
            os.environ["TRITON_INTERPRET"] = "0"

    def __exit__(self, *exc):
        if self.cpu:
            if self.saved is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = self.saved


def record(cases: list[Case], device: str | None = None, check: bool = False, write: bool = True,
           log=print) -> list[dict[str, Any]]:
    """Record every case (writing the case JSON and its step-state file unless ``write`` is False).
    With ``check``, each case is recorded twice and the two must be identical. Returns one summary each."""
    summaries = []
    for case in cases:
        missing = case.missing_models()
        if missing:
            log(f"skip   {case.name}: model directories missing ({', '.join(missing)})")
            summaries.append({"case": case.name, "status": "skipped", "reason": f"missing {missing}"})
            continue
        expected, steps, fname = record_case(case, device)
        case.expected, case.step_state = expected, fname
        text = dumps_case(case)
        digest = _steps_digest(steps, case, expected)
        if check:
            expected2, steps2, _ = record_case(case, device)
            case.expected = expected2
            text2 = dumps_case(case)
            digest2 = _steps_digest(steps2, case, expected2)
            if text2 != text or digest2 != digest:
                raise RecordError(f"case {case.name}: two recordings differ (case JSON equal: {text == text2}, "
                                  f"step states equal: {digest == digest2}); the reference is not reproducible here")
        if write:
            save_case(case)
            save_steps(case.resolve(fname), steps, _steps_meta(case, expected))
        acc = expected["accepted_per_position"]
        log(f"record {case.name}: {case.batch_size} requests x {case.steps} steps, K={case.K} {case.mode}, "
            f"accepted per position {acc}, min margin {expected['min_margin']:.4g}"
            + (" (reproducible: recorded twice, identical)" if check else ""))
        summaries.append({"case": case.name, "status": "recorded", "reproducible": True if check else None,
                          "steps_sha256": digest})
    return summaries


def verify(cases: list[Case], device: str | None = None, log=print) -> list[dict[str, Any]]:
    """Re-record every case (writing nothing) and compare with its committed expectation and step-state
    file: ids exactly, margins and aux hidden states within the tolerances of `case.MARGIN_RTOL` /
    `case.STEP_STATE_RTOL`, versions only reported. Returns one summary per case (``status``: "matches",
    "differs", "skipped" or "not recorded")."""
    from .compare import compare_recordings

    summaries = []
    for case in cases:
        missing = case.missing_models()
        if missing or case.expected is None:
            status = "skipped" if missing else "not recorded"
            reason = f"model directories missing ({', '.join(missing)})" if missing else "no expected result"
            log(f"{status:<7} {case.name}: {reason}")
            summaries.append({"case": case.name, "status": status, "reason": reason})
            continue
        fresh, steps, _ = record_case(case, device)
        diff = compare_recordings(case.expected, fresh)
        step_diffs = _compare_step_states(case, steps)
        diff.differences += step_diffs
        status = "matches" if diff.ok else "differs"
        log(f"{status:<7} {case.name}: {diff.describe()}")
        summaries.append({"case": case.name, "status": status, "differences": diff.differences,
                          "max_margin_rel": diff.max_margin_rel,
                          "versions": {k: list(v) for k, v in diff.versions.items()}})
    return summaries


def _compare_step_states(case: Case, steps: list) -> list[str]:
    """The committed step-state file against freshly captured step inputs."""
    from .case import STEP_STATE_ATOL, STEP_STATE_RTOL
    from .stepstate import FIELDS, load_steps

    path = case.step_state_path
    if path is None or not path.is_file():
        return [f"step_state: {path or '(none)'} missing"]
    saved, _ = load_steps(path)
    if len(saved) != len(steps):
        return [f"{path.name}: {len(saved)} steps committed, {len(steps)} recorded now"]
    out = []
    for j, (a, b) in enumerate(zip(saved, steps)):
        for f in FIELDS:
            x, y = getattr(a, f), getattr(b, f)
            if x is None or y is None:
                if (x is None) != (y is None):
                    out.append(f"{path.name}: step {j} field {f}: present in one of the two only")
                continue
            if x.shape != y.shape or x.dtype != y.dtype:
                out.append(f"{path.name}: step {j} field {f}: {x.dtype}{list(x.shape)} committed, "
                           f"{y.dtype}{list(y.shape)} now")
            elif x.is_floating_point():
                if not torch.allclose(x.float(), y.float(), rtol=STEP_STATE_RTOL, atol=STEP_STATE_ATOL):
                    d = float((x.float() - y.float()).abs().max())
                    out.append(f"{path.name}: step {j} field {f}: max |diff| {d:.2g} beyond rtol "
                               f"{STEP_STATE_RTOL:g}, atol {STEP_STATE_ATOL:g}")
            elif not torch.equal(x, y):
                out.append(f"{path.name}: step {j} field {f} differs (ids must be equal)")
    return out


def _steps_meta(case: Case, expected: dict[str, Any]) -> dict[str, Any]:
    return {"case": case.name, "K": case.K, "mode": case.mode, "max_model_len": expected["max_model_len"],
            "dtype": case.dtype_name}


def _steps_digest(steps, case: Case, expected: dict[str, Any]) -> str:
    """sha256 of the step-state file's bytes as `save_steps` writes them."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.safetensors"
        save_steps(p, steps, _steps_meta(case, expected))
        return hashlib.sha256(p.read_bytes()).hexdigest()


__all__ = ["record", "record_case", "verify", "RecordError"]
