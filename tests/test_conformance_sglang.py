"""Three-engine conformance on the CPU: ``pedagle conformance run --backends reference,vllm,sglang --mode both``
with every bundled case, run in the SGLang environment, where the reference and SGLang run in that process and
vLLM in its own environment (``--python vllm=...``: vLLM and SGLang pin different torch builds).

* SGLang end to end: each P-EAGLE case through ``sglang.Engine`` (SGLang's CPU engine with pedagle's CPU
  ``sgl_kernel`` ops; one engine start per case), compared step by step with the recorded reference: drafts,
  accepted counts, emitted tokens, accepted-per-position counters. The autoregressive (EAGLE-3) cases are
  reported not run (the SGLang backend serves PEAGLE only), with the reason. The speculators-format case runs
  from the vLLM-format copy the plugin converts it to (SGLang's config loading cannot read a speculators config).
* SGLang step-state: the recorded step inputs through SGLang's drafting path (layout, expansion, the drafter
  on SGLang's KV pools and torch-native attention).
* vLLM end to end (every case) and the reference: as in tests/vllm/test_conformance_vllm.py.

Interpreters: this one where SGLang is installed, else the SGLang virtual environment's
(``PEDAGLE_SGLANG_PYTHON``, else ``$PEDAGLE_VENVS/sglang``, else ``/work/venvs/sglang``); vLLM's likewise
(``PEDAGLE_VLLM_PYTHON``, ``$PEDAGLE_VENVS/vllm``, ``/work/venvs/vllm``). Skipped when there is no SGLang
environment; the vLLM part is skipped (visibly) when there is no vLLM environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENVS = os.environ.get("PEDAGLE_VENVS", os.path.expanduser("~/.cache/pedagle/venvs"))


def _venv_python(name: str) -> str | None:
    for p in (os.environ.get(f"PEDAGLE_{name.upper()}_PYTHON"), os.path.join(VENVS, name, "bin", "python"),
              f"/work/venvs/{name}/bin/python"):
        if p and Path(p).is_file():
            return p
    return None


def _installed_here(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


SGLANG_PY = sys.executable if _installed_here("sglang") else _venv_python("sglang")
VLLM_PY = _venv_python("vllm")

pytestmark = pytest.mark.skipif(SGLANG_PY is None, reason="SGLang is not installed here and there is no SGLang venv")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("conformance") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    backends = "reference,vllm,sglang" if VLLM_PY else "reference,sglang"
    cmd = [SGLANG_PY, "-m", "pedagle_conformance", "run", "--backends", backends, "--mode", "both", "--json", str(out)]
    if VLLM_PY:
        cmd += ["--python", f"vllm={VLLM_PY}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    print(proc.stdout)
    print(f"three-engine conformance run: {time.perf_counter() - t0:.0f} s")
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def _cases():
    from pedagle_conformance.case import discover_cases

    return {c.name: c for c in discover_cases() if not c.missing_models()}


def test_report_has_zero_failures(report):
    proc, rep = report
    assert rep["summary"]["failed"] == 0, rep["summary"]
    errors = [(o["case"], o["backend"], o["level"], o["reason"][:300]) for o in rep["outcomes"]
              if o["status"] == "error"]
    assert errors == [], errors
    speculators = [n for n, c in _cases().items() if c.drafter_format == "speculators" and c.mode == "parallel"]
    assert speculators, "no speculators-format P-EAGLE case bundled: the SGLang conversion path is untested"


def test_sglang_end_to_end_is_identical_on_every_parallel_case(report):
    _, rep = report
    cases = _cases()
    e2e = {o["case"]: o for o in rep["outcomes"] if o["backend"] == "sglang" and o["level"] == "e2e"}
    parallel = sorted(n for n, c in cases.items() if c.mode == "parallel")
    assert len(parallel) >= 6
    for n in parallel:
        o = e2e[n]
        assert o["status"] == "identical", (n, o["status"], o["reason"][:2000], o.get("failures", [])[:3])
        c = cases[n]
        assert o["drafts_compared"] == c.steps * c.batch_size * c.K, (n, o["drafts_compared"])
    for n, c in cases.items():
        if c.mode == "autoregressive":
            assert e2e[n]["status"] == "not run" and "parallel" in e2e[n]["reason"], (n, e2e[n]["reason"])


def test_sglang_step_state_is_identical_on_every_parallel_case(report):
    _, rep = report
    step = [o for o in rep["outcomes"] if o["backend"] == "sglang" and o["level"] == "step-state"]
    ran = [o for o in step if o["status"] != "not run"]
    assert len(ran) >= 6, [(o["case"], o["status"], o["reason"]) for o in step]
    for o in ran:
        assert o["status"] == "identical", (o["case"], o["failures"][:3], o["reason"])
        assert "TorchNativeAttnBackend" in o["detail"]
    for o in step:
        if o["status"] == "not run":
            assert "-ar-" in o["case"] and "parallel" in o["reason"], (o["case"], o["reason"])


@pytest.mark.skipif(VLLM_PY is None, reason="no vLLM venv ($PEDAGLE_VENVS/vllm): the vLLM third of the run is absent")
def test_vllm_and_reference_are_identical_on_every_case(report):
    _, rep = report
    cases = _cases()
    vllm = {o["case"]: o for o in rep["outcomes"] if o["backend"] == "vllm" and o["level"] == "e2e"}
    assert sorted(vllm) == sorted(cases) or set(cases) <= set(vllm)
    for n in cases:
        assert vllm[n]["status"] == "identical", (n, vllm[n]["status"], vllm[n]["reason"][:2000])
    ref = [o for o in rep["outcomes"] if o["backend"] == "reference" and o["status"] != "not run"]
    assert ref and all(o["status"] == "identical" for o in ref)
    assert rep["backends"]["vllm"]["available"] is True and rep["backends"]["sglang"]["available"] is True
