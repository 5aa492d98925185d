"""bench/speedup_model.py --reuse-timings: the predictions of a committed GPU run are recomputed on the CPU
from its stored timings, identically, and a new acceptance-length table changes only its own rows."""

from __future__ import annotations

import json
from pathlib import Path

from helpers_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "speedup_h100.json"


def _module():
    return load_script("bench/speedup_model.py")


def test_reuse_timings_reproduces_the_committed_predictions(tmp_path):
    mod = _module()
    old = json.loads(RESULTS.read_text())
    al = tmp_path / "al.json"
    name = next(k.split("|")[0] for k in old["predictions"] if not k.startswith("paper"))
    al.write_text(json.dumps({"name": name, "benchmarks": old["al_tables"][name]}))
    res = mod.main(["--reuse-timings", str(RESULTS), "--al-json", str(al), "--out", str(tmp_path / "s.json")])
    assert json.loads(json.dumps(res["predictions"])) == old["predictions"]
    assert res["timings_from"] == str(RESULTS) and res["t_target_ms"] == old["t_target_ms"]

    better = {b: {"p-eagle": {k: v + 1.0 for k, v in t["p-eagle"].items()}, "eagle3": t["eagle3"]}
              for b, t in old["al_tables"][name].items()}
    al.write_text(json.dumps({"name": name, "benchmarks": better}))
    res2 = mod.main(["--reuse-timings", str(RESULTS), "--al-json", str(al), "--out", str(tmp_path / "s2.json")])
    for key, pred in res2["predictions"].items():
        for bench, rb in pred.items():
            same = json.loads(json.dumps(rb)) == old["predictions"][key][bench]
            assert same == key.startswith("paper"), key                # only the changed table moves
            if not key.startswith("paper"):
                assert rb["ratio_best"] > old["predictions"][key][bench]["ratio_best"]
