"""Shaping recorded PEAGLE draft steps into pedagle's conformance result (pure; the engine run is GPU-only)."""

from __future__ import annotations

import torch

from pedagle_backends.sglang.runner import per_request_steps, to_case_result
from pedagle_backends.sglang.worker import record_fields


def test_records_to_case_result():
    from types import SimpleNamespace

    batch = SimpleNamespace(reqs=[SimpleNamespace(rid="pedagle-0"), SimpleNamespace(rid="pedagle-1")])
    recs = [record_fields("prefill", batch, 2, torch.tensor([[5, 6], [7, 8]]), seq_lens=torch.tensor([3, 4])),
            record_fields("decode", SimpleNamespace(reqs=batch.reqs[1:]), 2, torch.tensor([[9, 9]]),
                          accept_lens=torch.tensor([3])),
            record_fields("decode", batch, 2, torch.tensor([[1, 2], [3, 4]]), accept_lens=torch.tensor([2, 1]))]
    steps = per_request_steps(recs, ["pedagle-0", "pedagle-1"])
    assert [s["drafts"] for s in steps[0]] == [[5, 6], [1, 2]]
    assert [s["accepted"] for s in steps[1]] == [None, 2, 0]
    gen = {"records": recs, "rids": ["pedagle-0", "pedagle-1"], "outputs": [[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]],
           "meta": [{}, {}]}
    res = to_case_result(gen, K=2, steps=2)
    assert res["drafts"] == [[[5, 6], [7, 8]], [[1, 2], [9, 9]]]
    assert res["accepted"] == [[1, 2], [None, 0]]
    assert res["accepted_per_position"] == [2, 1]
    assert res["output_ids"] == [[10, 11, 12], [20, 21, 22, 23, 24]]   # 1 + (accepted + 1) per verify


def test_steps_after_the_output_was_complete_are_dropped():
    """SGLang 0.5.17's overlap scheduler runs a request that finished at step N in step N+1 too (launched before
    step N's result was processed; SGLang drops its tokens): with the outputs, that step is not one of the
    request's steps; without them it is."""
    from types import SimpleNamespace

    a, b = SimpleNamespace(rid="r-0"), SimpleNamespace(rid="r-1")
    recs = [record_fields("prefill", SimpleNamespace(reqs=[a, b]), 2, torch.tensor([[5, 6], [7, 8]])),
            record_fields("decode", SimpleNamespace(reqs=[a, b]), 2, torch.tensor([[1, 1], [2, 2]]),
                          accept_lens=torch.tensor([1, 3])),
            record_fields("decode", SimpleNamespace(reqs=[a, b]), 2, torch.tensor([[3, 3], [4, 4]]),
                          accept_lens=torch.tensor([2, 1])),
            record_fields("decode", SimpleNamespace(reqs=[a, b]), 2, torch.tensor([[5, 5], [6, 6]]),
                          accept_lens=torch.tensor([1, 1]))]
    # r-0: 1 + 1 + 2 tokens = 4 after its second verify = its output: the third decode step ran after it finished;
    # r-1: 1 + 3 = 4 after its first verify, output 6: its second (4 < 6 tokens before) and third (5 < 6) are real
    outs = [[0] * 4, [0] * 6]
    kept = per_request_steps(recs, ["r-0", "r-1"], outs)
    assert [s["drafts"] for s in kept[0]] == [[5, 6], [1, 1], [3, 3]]
    assert [s["accepted"] for s in kept[1]] == [None, 2, 0, 0]
    assert len(per_request_steps(recs, ["r-0", "r-1"])[0]) == 4       # without outputs: every record
    res = to_case_result({"records": recs, "rids": ["r-0", "r-1"], "outputs": outs, "meta": [{}, {}]}, K=2, steps=3)
    assert res["accepted"] == [[0, 2], [1, 0], [None, 0]]
