"""The CPU test kernels' overloads for SGLang 0.5.17's attention call forms (tests/sgl_kernel_cpu/sgl_kernel/
older_schemas.py): the op packet SGLang calls takes either release's positional arguments, and 0.5.17's form
computes exactly what 0.5.23's computes with unit KV scales (and causal attention)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.sglang_versions
OPS = torch.ops.sgl_kernel


def _pool(lens, hkv=2, d=8, slots=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(slots, hkv, d, generator=g), torch.randn(slots, hkv, d, generator=g)
    r2t = torch.zeros(4, 32, dtype=torch.int32)
    perm = torch.randperm(slots - 1, generator=g) + 1
    used = 0
    for r, n in enumerate(lens):
        r2t[r, :n] = perm[used:used + n].int()
        used += n
    return k, v, r2t, torch.arange(len(lens))


def test_packet_has_the_older_overload():
    import sgl_kernel

    assert set(sgl_kernel.older_schemas.OVERLOADS) == {"decode_attention_cpu", "extend_attention_cpu"}
    for name in ("decode_attention_cpu", "extend_attention_cpu"):
        assert sorted(getattr(OPS, name).overloads()) == ["default", "sglang0517"]


def test_decode_0517_form_equals_the_0523_form():
    lens = [6, 11]
    k, v, r2t, rpi = _pool(lens)
    q = torch.randn(2, 4, 8)
    loc = torch.stack([r2t[b, lens[b] - 1] for b in range(2)]).long()
    knew, vnew = torch.randn(2, 16), torch.randn(2, 16)
    outs = []
    for form in ("0523", "0517"):
        kb, vb, out, logits = k.clone(), v.clone(), torch.empty(2, 4, 8), torch.empty(2, 4, 8, 9)
        tail = (r2t, rpi, torch.tensor(lens), 0.35, 0.0, False, 0, None, None)
        if form == "0523":
            OPS.decode_attention_cpu(q, kb, vb, 1.0, 1.0, out, knew, vnew, loc, logits, *tail)
        else:
            OPS.decode_attention_cpu(q, kb, vb, out, knew, vnew, loc, logits, *tail)
        outs.append((out, kb, vb))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert torch.equal(outs[1][1][loc], knew.view(2, 2, 8))                  # the new K was stored at loc


def test_extend_0517_form_equals_the_0523_form():
    lens, new = [9, 4], [3, 4]
    k, v, r2t, rpi = _pool(lens, seed=1)
    n = sum(new)
    q, kx, vx = torch.randn(n, 4, 8), torch.randn(n, 2, 8), torch.randn(n, 2, 8)
    starts = torch.tensor([0, 3])
    outs = []
    for form in ("0523", "0517"):
        out = torch.zeros(n, 4, 8)
        head = (q, kx, vx, out, k, v)
        mid = (r2t, rpi, torch.tensor(lens), torch.tensor(new), starts, max(new), 0.3, 0.0, False, 0, None, None,
               None)
        if form == "0523":
            OPS.extend_attention_cpu(*head, 1.0, 1.0, *mid, True)
        else:
            OPS.extend_attention_cpu(*head, *mid)
        outs.append(out)
    assert torch.count_nonzero(outs[0]) > 0 and torch.equal(outs[0], outs[1])
