"""The GPU self-check of the decode draft-step graphs (`graph_selfcheck`): its checks on made-up engine results
(what it calls a pass and a failure), its prompt sets and timing summary, and its refusals. The engine runs
themselves: ``python -m pedagle_backends.sglang.cuda_graphs --selfcheck`` (CUDA), ``--device cpu`` (CPU engine)."""

from __future__ import annotations

import json

import pytest

from pedagle_backends.sglang import graph_selfcheck as gs


def result(outputs, drafts, graph_bs, rid_prefix="b3"):
    """A `runner.run_job` result with one call of len(outputs) requests and one decode record per step."""
    rids = [f"{rid_prefix}-0-{i}" for i in range(len(outputs))]
    recs = [{"kind": "config"}, {"kind": "prefill", "rids": rids, "drafts": [[1, 2]] * len(rids)}]
    for s, (d, bs) in enumerate(zip(drafts, graph_bs)):
        recs.append({"kind": "decode", "rids": rids, "drafts": d, "accept_lens": [2] * len(rids), "graph_bs": bs})
    return {"calls": {"b3": {"outputs": outputs, "rids": rids, "seconds": 1.0}}, "records": recs, "start_s": 1.0}


CALLS = [{"name": "b3"}]


def test_checks_pass_on_equal_runs_with_padding():
    out = [[5, 6, 7], [8, 9, 10], [11, 12, 13]]
    d = [[[3, 4]] * 3, [[4, 5]] * 3]
    checks = gs.check_k(3, CALLS, result(out, [], []), result(out, d, [4, 4]), result(out, d, [None, None]),
                        "graph")
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    assert len(checks) == 6


@pytest.mark.parametrize("what", ["output", "drafts", "not_replayed", "no_padding", "eager_replayed", "error"])
def test_checks_fail(what):
    out = [[5, 6, 7], [8, 9, 10], [11, 12, 13]]
    d = [[[3, 4]] * 3, [[4, 5]] * 3]
    base, graph, eager = result(out, [], []), result(out, d, [4, 4]), result(out, d, [None, None])
    if what == "output":
        graph["calls"]["b3"]["outputs"] = [[5, 6, 7], [8, 9, 99], [11, 12, 13]]
    elif what == "drafts":
        graph["records"][-1]["drafts"] = [[4, 5], [4, 6], [4, 5]]
    elif what == "not_replayed":
        graph["records"][-1]["graph_bs"] = None
    elif what == "no_padding":
        graph = result(out, d, [3, 3])
    elif what == "eager_replayed":
        eager["records"][-1]["graph_bs"] = 4
    else:
        graph = {"error": "engine crashed"}
    bad = [c["check"] for c in gs.check_k(3, CALLS, base, graph, eager, "graph") if not c["ok"]]
    expect = {"output": "output == target-only", "drafts": "graph == eager", "not_replayed": "static-buffer step",
              "no_padding": "padded", "eager_replayed": "eager run replayed nothing", "error": "engine ran"}[what]
    assert bad and all(expect in b for b in bad), bad


def test_prompt_sets_shrink_and_pad():
    sets = gs.prompt_sets(vocab=100, max_new=12)
    assert [len(s["prompts"]) for s in sets] == [1, 3, 11]
    assert all(len(s["prompts"]) == len(s["max_new_tokens"]) for s in sets)
    assert len({len(p) for p in sets[2]["prompts"]}) > 5                     # different lengths
    assert len(set(sets[2]["max_new_tokens"])) > 1                           # requests finish at different times
    assert all(3 <= t < 100 for s in sets for p in s["prompts"] for t in p)
    assert gs.prompt_sets(100, 12) == sets                                   # deterministic


def test_draft_ms(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [{"K": 3, "gpu_ms": 1.0, "cpu_ms": 4.0},
                                                   {"K": 3, "gpu_ms": 3.0, "cpu_ms": 2.0},
                                                   {"K": 7, "gpu_ms": 50.0, "cpu_ms": 50.0}]))
    got = gs.draft_ms(p, 3)
    assert got["steps"] == 2 and got["gpu_ms"]["mean"] == 2.0 and got["cpu_ms"]["median"] == 4.0
    assert gs.draft_ms(tmp_path / "missing.jsonl", 3) == {}


def test_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gs.main(["--K", "0", "--out", str(tmp_path)])
    assert "expected K >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gs.main(["--sizes", "0,4", "--out", str(tmp_path)])
    assert "PEDAGLE_SGLANG_DRAFT_GRAPH_BS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gs.main(["--family", str(tmp_path), "--out", str(tmp_path)])
    assert "config.json not found" in capsys.readouterr().err
