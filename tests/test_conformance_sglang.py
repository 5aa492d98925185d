"""Conformance of the SGLang backend at the level a CPU machine reaches: step states through SGLang's
drafting path (SGLang's own layout, KV pools, RadixAttention and TorchNativeAttnBackend; see
``pedagle_conformance.sglang_steps``), in the SGLang environment. SGLang's engine needs CUDA, so its
end-to-end level must be reported as not run, with the reason.

Runs with this interpreter where SGLang is installed, else with the SGLang virtual environment's
(``PEDAGLE_SGLANG_PYTHON``, else ``$PEDAGLE_VENVS/sglang`` as scripts/test.sh creates it, else
``/work/venvs/sglang``), as ``python -m pedagle_conformance run``; skipped when there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [os.environ.get("PEDAGLE_SGLANG_PYTHON"),                       # explicit
              os.path.join(os.environ.get("PEDAGLE_VENVS", os.path.expanduser("~/.cache/pedagle/venvs")),
                           "sglang", "bin", "python"),                        # scripts/test.sh's environment
              "/work/venvs/sglang/bin/python"]
VENV_PY = next((p for p in CANDIDATES if p and Path(p).is_file()), "/work/venvs/sglang/bin/python")


def _sglang_here() -> bool:
    try:
        metadata.version("sglang")
        return True
    except metadata.PackageNotFoundError:
        return False


def _python() -> str | None:
    if _sglang_here():
        return sys.executable
    return VENV_PY if Path(VENV_PY).is_file() else None


pytestmark = pytest.mark.skipif(_python() is None, reason=f"SGLang is not installed here and {VENV_PY} is missing")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sglang") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([_python(), "-m", "pedagle_conformance", "run", "-q", "--backends", "sglang",
                           "--mode", "both", "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)
    return proc, json.loads(out.read_text())


def test_sglang_step_state_is_identical_on_every_parallel_case(report):
    proc, rep = report
    assert proc.returncode == 0, proc.stdout[-3000:]
    step = [o for o in rep["outcomes"] if o["level"] == "step-state"]
    assert step
    ran = [o for o in step if o["status"] != "not run"]
    assert len(ran) >= 6, [(o["case"], o["status"], o["reason"]) for o in step]
    for o in ran:
        assert o["status"] == "identical", (o["case"], o["failures"][:3], o["reason"])
        assert "TorchNativeAttnBackend" in o["detail"]
    for o in step:
        if o["status"] == "not run":
            assert "-ar-" in o["case"] and "parallel" in o["reason"], (o["case"], o["reason"])


def test_sglang_end_to_end_is_reported_not_run_with_the_reason(report):
    _, rep = report
    e2e = [o for o in rep["outcomes"] if o["level"] == "e2e"]
    assert e2e and all(o["status"] == "not run" for o in e2e)
    assert all("CUDA" in o["reason"] or "not installed" in o["reason"] for o in e2e)
    assert rep["summary"]["identical"] >= 6 and rep["passed"] is True
