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


def test_attention_table_against_the_kv_floor():
    """One line per decode-attention decision (other kinds left out): heuristic, chosen variant and time,
    and the K/V-read floor of the shape (every request reading max_context keys at the HBM bandwidth)."""
    bd = load_script("bench/bench_drafter.py")
    ch = "block_n=64,num_warps=4,num_stages=3"
    res = {"ceilings": {"hbm_GBps": 4000.0},
           "decisions": [{"kind": "skinny_gemm", "key": [8, 2880, 4096], "chosen": "cublas", "times_ms": {"cublas": 0.01}},
                         {"kind": "decode_attention", "key": ["(112, 64, 64)", "(8, 14)", 8, "torch.bfloat16", 8207, 0, False],
                          "chosen": ch, "times_ms": {"auto": 0.0914, ch: 0.0653}}]}
    lines = bd.attention_table(res).splitlines()
    assert len(lines) == 1
    floor_us = 8 * 8207 * 8 * 64 * 2 * 2 / (4000.0 * 1e6) * 1e3
    assert f"KV floor {floor_us:5.1f} us" in lines[0]
    assert f"heuristic   91.4 us, chosen   65.3 us ({ch})" in lines[0]
    assert f"chosen x{0.0653 * 1e3 / floor_us:4.2f}" in lines[0]
