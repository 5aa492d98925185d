"""bench/bench_drafter.py on the CPU (--dry-run: tiny heads, eager, the Triton interpreter): the paths run side
by side land in one JSON with the goal lines, the table and the plot; bad --paths is refused. The GPU numbers
themselves come from `bench/run_gpu_perf.sh` on the device."""

from __future__ import annotations

import json

import pytest

from helpers_scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dry_run_records_every_requested_path(tmp_path, capsys):
    bd = load_script("bench/bench_drafter.py")
    out = tmp_path / "d.json"
    res = bd.main(["--dry-run", "--families", "gpt-oss-20b", "--pairs", "1:24", "--ks", "1,3", "--modes", "parallel",
                   "--paths", "today,kernels", "--no-micro", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["plan"]["paths"] == ["new", "today", "kernels"]
    assert [(r["K"], r["verified"]) for r in saved["results"]] == [(1, True), (3, True)]
    for path in ("today", "kernels"):
        assert [(r["K"], r["path"]) for r in saved["paths"][path]] == [(1, path), (3, path)]
        assert all(r["median_ms"] > 0 for r in saved["paths"][path])
    assert any(g.startswith("never slower than today's path: ") for g in saved["goals"])
    assert (tmp_path / "d.png").stat().st_size > 10_000
    table = bd.paths_table(res)
    assert "kernels" in table and "gpt-oss-20b" in table
    with pytest.raises(SystemExit):
        bd.main(["--dry-run", "--paths", "bogus"])
    assert "unknown ['bogus']" in capsys.readouterr().err
