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
