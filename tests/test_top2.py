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
