"""The greedy-readout kernel (pedagle_core/kernels/top2.py) against `pedagle_core.draft.top2_reference`;
on CPU interpreted (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA compiled."""

from __future__ import annotations

import pytest
import torch

from pedagle_core.draft import top2_reference
from helpers_kernels import DEVICE, kernel_module

T2 = kernel_module("top2")
pytestmark = pytest.mark.skipif(T2 is None, reason="Triton top-2 kernel cannot run here")


def _check(x: torch.Tensor) -> None:
    idx, top = T2.top2_triton(x)
    ridx, rtop = top2_reference(x)
    assert idx.dtype == torch.int64 and top.dtype == torch.float32
    assert torch.equal(idx.cpu(), ridx.cpu()), (idx, ridx)
    assert torch.equal(top.cpu(), rtop.cpu()), (top, rtop)


@pytest.mark.parametrize("V", [2, 3, 1000, 4096, 4097, 20011])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_rows(V, dtype):
    g = torch.Generator().manual_seed(V)
    _check((torch.randn(5, V, generator=g) * 4).to(dtype).to(DEVICE))


def test_ties_first_index_and_repeated_maximum():
    V = 9000                                                # three chunks of 4096
    x = torch.zeros(6, V)
    x[0, [10, 5000, 8999]] = 3.0                            # max in three chunks: first index, second == max
    x[1, [4095, 4096]] = 2.0                                # the chunk boundary
    x[2, 7] = 5.0; x[2, 8] = 4.0                            # noqa: E702  same lane block, second just after
    x[3, 8998] = 1.0                                        # max in the last (partial) chunk
    x[4] = float("-inf"); x[4, 3] = -1.0                    # noqa: E702  -inf everywhere but one
    x[5, 100] = 7.0; x[5, 100 + 1024] = 6.0                 # noqa: E702  same lane (stride BLOCK), one chunk
    for dtype in (torch.float32, torch.bfloat16):
        _check(x.to(dtype).to(DEVICE))


def test_strided_rows_and_shape_errors():
    x = torch.randn(4, 3000, device=DEVICE)[:, :2500]
    _check(x)
    with pytest.raises(ValueError, match=r"expected \[N, V\] with V >= 2"):
        T2.top2_triton(torch.randn(3, 1, device=DEVICE))
    idx, top = T2.top2_triton(torch.empty(0, 10, device=DEVICE))
    assert idx.shape == (0,) and top.shape == (0, 2)


@pytest.mark.parametrize("seed", range(4))
def test_many_ties(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3 + seed, (7, 9000), generator=g).float()          # every row full of tied maxima
    x[:, torch.randint(0, 9000, (1,), generator=g)] = -1.0
    _check(x.to(DEVICE))


@pytest.mark.parametrize("V", [3, 5000])
def test_readout_form_equals_pytorch_readout(V):
    """With d2t the merge launch also writes the greedy readout: target ids ``argmax + d2t[argmax]`` and
    margins top-1 minus top-2, as `pedagle_core.draft.readout` computes them with PyTorch."""
    g = torch.Generator().manual_seed(V)
    x = (torch.randn(6, V, generator=g) * 4).to(torch.bfloat16).to(DEVICE)
    x[2, V // 2] = x[2, 0] = 50.0                                        # a tie: margin 0, the first index
    d2t = torch.randint(0, 1000, (V,), generator=g).to(DEVICE)
    idx, top, tgt, margin = T2.top2_triton(x, d2t)
    ridx, rtop = top2_reference(x)
    assert torch.equal(idx, ridx) and torch.equal(top, rtop)
    assert torch.equal(tgt, ridx + d2t[ridx]) and torch.equal(margin, rtop[:, 0] - rtop[:, -1])
    assert float(margin[2]) == 0.0 and int(idx[2]) == 0
    t, m, i = T2.greedy_readout(x, d2t.int())
    assert torch.equal(t, tgt) and torch.equal(m, margin) and torch.equal(i, idx)
    with pytest.raises(ValueError, match=r"d2t \(2,\)"):
        T2.top2_triton(x, d2t[:2])
    assert [o.shape for o in T2.top2_triton(x[:0], d2t)] == [(0,), (0, 2), (0,), (0,)]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the drafter's readout uses the kernel on CUDA only")
def test_drafter_greedy_readout_uses_one_merge_launch(monkeypatch):
    from pedagle_core import Drafter, DrafterConfig
    from pedagle_core import draft as draft_mod

    d = Drafter(DrafterConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=48, vocab_size=300, draft_vocab_size=100, target_hidden_size=16))
    d = d.to(DEVICE).bfloat16().eval()
    with torch.no_grad():
        d.d2t.copy_(torch.randint(0, 200, (100,)))
    out = torch.randn(5, 32, device=DEVICE).bfloat16()
    calls = []
    real = T2.greedy_readout
    monkeypatch.setattr(T2, "greedy_readout", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ids, margins, probs, draft_ids = draft_mod.readout(d, out)
        monkeypatch.setattr(draft_mod, "top2", draft_mod.top2_reference)      # the PyTorch readout
        rids, rmargins, _, rdraft = draft_mod.readout(d, out)
    assert calls == [1] and probs is None
    assert torch.equal(ids, rids) and torch.equal(margins, rmargins) and torch.equal(draft_ids, rdraft)
