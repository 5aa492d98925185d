""".ci/setup_sglang_env.sh's venv check (its ``check`` function, run against this venv): a failing check leaves its
own error (the assertion message or traceback) where the script prints it. (That it passes in this venv is what the
CI step's set-up already ran: `bash .ci/setup_sglang_env.sh VENV` says "already usable".)"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "setup_sglang_env.sh"


def run_check(sglang_version: str) -> tuple[int, str]:
    """Source the script's CHECK_LOG set-up and ``check`` function, run it; (its status, the check's log)."""
    torch_version = metadata.version("torch").split("+")[0]
    bash = f"""
set -eo pipefail
VENV="{sys.prefix}"; REPO="{REPO}"; SGLANG_VERSION="{sglang_version}"; TORCH_VERSION="{torch_version}"
TRANSFORMERS_VERSION="{metadata.version('transformers')}"; NUMPY_SPEC=numpy
source <(sed -n '/^CHECK_LOG=/,/^}}$/p' "{SCRIPT}")
rc=0; check || rc=$?
echo "RC=$rc"; cat "$CHECK_LOG"
"""
    proc = subprocess.run(["bash", "-c", bash], capture_output=True, text=True, timeout=600)
    assert "RC=" in proc.stdout, proc.stderr[-2000:]
    head, _, log = proc.stdout.partition("\n")
    return int(head.split("=")[1]), log


def test_a_failing_check_names_its_cause():
    rc, log = run_check("9.9.9")
    assert rc != 0
    assert f"AssertionError: sglang {metadata.version('sglang')} installed, expected 9.9.9" in log, log[-3000:]
