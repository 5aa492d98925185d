"""bench/bench_sglang_cpu.py's bookkeeping (no engine: `run_engine` replaced by canned results): tokens/s, step time,
acceptance length, the best K per algorithm, the later rounds' configurations and order, the JSON it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_scripts import load_script  # noqa: E402

MAX_TOKENS = 24
# per (algorithm, K): seconds of one generate call and verify steps per request (None: no speculation)
CANNED = {(None, 1): (1.2, None), ("EAGLE3", 1): (1.0, 16), ("EAGLE3", 3): (0.8, 12),
          ("PEAGLE", 3): (0.7, 10), ("PEAGLE", 5): (0.6, 8)}


def test_bench_rounds_ratios_and_json(tmp_path, monkeypatch):
    bench = load_script("bench/bench_sglang_cpu.py")
    started: list[str] = []

    def fake_run_engine(cfg, cases, timeout, log):
        started.append(f"{cfg.algorithm}-{cfg.K}" if cfg.algorithm else "none")
        secs, steps = CANNED[(cfg.algorithm, cfg.K)]
        out = []
        for c in cases:
            n = len(c["prompts"])
            meta = [{"spec_verify_ct": steps} if steps else {} for _ in range(n)]
            out.append({"outputs": [[7] * c["max_new_tokens"]] * n, "meta": meta, "seconds": secs * n})
        return {"cases": out, "start_s": 50.0, "process_s": 80.0, "attention_backend": "intel_amx"}

    monkeypatch.setattr(bench, "run_engine", fake_run_engine)
    out = tmp_path / "r.json"
    assert bench.main(["--k-eagle3", "1", "3", "--k-peagle", "3", "5", "--batches", "1", "2", "--max-tokens",
                       str(MAX_TOKENS), "--rounds", "2", "--out", str(out), "--logs", str(tmp_path)]) == 0
    # round 1: everything; round 2: none + the best K of each, reversed
    assert started == ["none", "EAGLE3-1", "EAGLE3-3", "PEAGLE-3", "PEAGLE-5", "PEAGLE-5", "EAGLE3-3", "none"]
    res = json.loads(out.read_text())
    assert res["meta"]["device"] == "cpu" and res["meta"]["commit"] and res["meta"]["sglang"]
    rows = {(r["round"], r["config"], r["batch"]): r for r in res["results"]}
    e3 = rows[(1, "sglang-eagle3-k3", 1)]
    assert abs(e3["tokens_per_s"] - MAX_TOKENS / 0.8) < 1e-9
    assert abs(e3["acceptance_length"] - MAX_TOKENS / 12) < 1e-9 and abs(e3["step_ms"] - 1000 * 0.8 / 12) < 1e-9
    assert abs(rows[(1, "none", 2)]["step_ms"] - 1000 * 2.4 / MAX_TOKENS) < 1e-9
    r1 = [r for r in res["peagle_vs_eagle3"] if r["round"] == 1 and r["batch"] == 1][0]
    assert (r1["peagle"], r1["eagle3"]) == ("pedagle-peagle-k5", "sglang-eagle3-k3")
    assert abs(r1["peagle_vs_eagle3"] - 0.8 / 0.6) < 1e-9
    assert abs(r1["acceptance_length_ratio"] - 12 / 8) < 1e-9
    assert abs(r1["step_time_ratio"] - (0.6 / 8) / (0.8 / 12)) < 1e-9
    assert {r["round"] for r in res["peagle_vs_eagle3"]} == {1, 2}
