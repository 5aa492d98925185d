"""bench/sglang_gpu_e2e.py's check phase, as the next GPU call runs it for PEAGLE under SGLang's overlap scheduler
(``--engine-arg disable_overlap_schedule=false``), on SGLang's CPU engine: the script's whole path but CUDA
(engine children, draft records, the forced-reference and reference-engine analysis, the result JSON).

One child process, three engines (target-only, PEAGLE K=7, SGLang's EAGLE3 K=3), float32, ~70 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_script_check_phase_runs_peagle_overlapped_on_the_cpu_engine(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "bench" / "sglang_gpu_e2e.py"), "--device", "cpu", "--out", str(out),
           "--phases", "check", "--check-groups", "tiny", "--dtypes", "float32", "--ks", "7", "--steps", "4",
           "--budget-s", "600", "--engine-arg", "disable_overlap_schedule=false"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check = json.loads((out / "sglang_gpu.json").read_text())["check"]
    assert check["engine_defaults"]["disable_overlap_schedule"] is False      # what ran, recorded
    rows = {row["name"]: row for row in check["configs"]}
    assert set(rows) == {"tiny-target-float32", "tiny-peagle-k7-float32", "tiny-eagle3-k3-float32"}
    assert check["ok"] and check["complete"], check["table"]
    pe = rows["tiny-peagle-k7-float32"]
    assert pe["outputs"]["equal"] == pe["outputs"]["requests"] == 8               # float32: exactly target-only
    assert pe["drafts_vs_forced_reference"]["equal"] == pe["drafts_vs_forced_reference"]["slots"] > 0
    # the engine really ran the overlap scheduler: its records say so, and every decode step's drafts were relayed
    results = json.loads((out / "logs" / "check_results.json").read_text())
    recs = next(res["records"] for res in results if res.get("records")
                and any(x.get("kind") == "config" for x in res["records"]))
    assert [x["overlap_schedule"] for x in recs if x.get("kind") == "config"] == [True]
    decode = [x for x in recs if x.get("kind") == "decode"]
    assert decode and all(x["relayed"] for x in decode)
