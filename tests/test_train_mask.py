"""The P-EAGLE training mask and attention provider against brute force (pedagle_core/train/mask.py)."""

import math

import pytest
import torch

from pedagle_core.train.cod import sample_cod
from pedagle_core.train.mask import Meta, TrainAttention, dense_mask


pytestmark = pytest.mark.usefixtures("one_thread")


def _elements(doc_lens=(7, 1, 12, 5), K=4, seed=0):
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(doc_lens)])
    pos = torch.cat([torch.arange(n) for n in doc_lens])
    valid = torch.rand(doc.numel(), generator=torch.Generator().manual_seed(seed)) < 0.8
    el = sample_cod(valid, doc, K, 0.8, 0.3, torch.Generator().manual_seed(seed))
    meta = Meta(el.anchor, el.depth, doc[el.anchor], pos[el.anchor] + el.depth)
    return meta, doc, pos


def brute_force_mask(meta: Meta, doc: torch.Tensor, pos: torch.Tensor, window=None) -> torch.Tensor:
    """What the drafter's KV cache holds at inference for each element, built with Python loops.

    A chain anchored at row a (bonus row) at inference has in its cache: the committed rows of its
    document up to and including a (depth-0 rows r <= a), then its own MASK rows a+1..a+d."""
    n = len(meta)
    A, Dp = meta.anchor.tolist(), meta.depth.tolist()
    ident = [("ctx", A[i]) if Dp[i] == 0 else ("chain", A[i], Dp[i]) for i in range(n)]
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        a, d = A[i], Dp[i]
        cache = set()
        for r in range(doc.numel()):
            if int(doc[r]) == int(doc[a]) and r <= a:
                cache.add(("ctx", r))
        for j in range(1, d + 1):
            cache.add(("chain", a, j))
        qpos = int(pos[a]) + d
        for k in range(n):
            if ident[k] in cache:
                kpos = int(pos[A[k]]) + Dp[k]
                if window is None or kpos > qpos - window:
                    m[i, k] = True
    return m


@pytest.mark.parametrize("window", [None, 3])
def test_dense_mask_equals_brute_force(window):
    meta, doc, pos = _elements()
    assert torch.equal(dense_mask(meta, meta, window), brute_force_mask(meta, doc, pos, window))


def test_flex_block_mask_equals_brute_force():
    from pedagle_core.train.mask import block_flags, build_block_mask, make_mask_mod
    meta, doc, pos = _elements(doc_lens=(30, 9, 41), K=5, seed=3)
    n = len(meta)
    brute = brute_force_mask(meta, doc, pos)
    mod = make_mask_mod(meta, meta, None)
    qi = torch.arange(n)[:, None].expand(n, n)
    ki = torch.arange(n)[None, :].expand(n, n)
    assert torch.equal(mod(0, 0, qi, ki), brute)
    B = 16
    anyb, allb = block_flags(meta, meta, None, block=B, rows_per_chunk=32)
    nb = -(-n // B)
    padded = torch.zeros(nb * B, nb * B, dtype=torch.bool)
    padded[:n, :n] = brute
    blocks = padded.view(nb, B, nb, B)
    assert torch.equal(anyb, blocks.any(3).any(1))
    assert torch.equal(allb, blocks.all(3).all(1))
    bm = build_block_mask(meta, meta, None, block=B)
    assert torch.equal(bm.to_dense()[0, 0].bool(), anyb)


def _reference_attention(q, k, v, mask):
    """Per-query loops over visible keys (GQA: query head h uses kv head h // rep)."""
    T, H, D = q.shape
    rep = H // k.shape[1]
    out = torch.zeros_like(q)
    for i in range(T):
        keys = torch.nonzero(mask[i]).view(-1)
        for h in range(H):
            s = (k[keys, h // rep] @ q[i, h]) / math.sqrt(D)
            out[i, h] = torch.softmax(s, 0) @ v[keys, h // rep]
    return out


@pytest.mark.parametrize("backend", ["sdpa", "flex_eager"])
def test_train_attention_with_prefix(backend):
    meta, doc, pos = _elements(K=4, seed=5)
    g = torch.Generator().manual_seed(0)
    # split: prefix = depth-0 rows [0, 10), queries = the remaining elements
    is_pre = (meta.depth == 0) & (meta.anchor < 10)
    pre, qs = torch.nonzero(is_pre).view(-1), torch.nonzero(~is_pre).view(-1)
    pm, qm = meta.index(pre), meta.index(qs)
    H, Hk, D = 4, 2, 8
    q = torch.randn(len(qm), H, D, generator=g, dtype=torch.float64)
    k = torch.randn(len(qm), Hk, D, generator=g, dtype=torch.float64)
    v = torch.randn(len(qm), Hk, D, generator=g, dtype=torch.float64)
    pk = torch.randn(len(pm), Hk, D, generator=g, dtype=torch.float64)
    pv = torch.randn(len(pm), Hk, D, generator=g, dtype=torch.float64)
    rec = torch.tensor([0, 2])
    attn = TrainAttention(qm, backend, prefix_meta=pm, prefix_kv=[(pk, pv)], record=rec)
    out = attn(0, q, k, v, None)
    full_mask = brute_force_mask(meta, doc, pos)[qs][:, torch.cat([pre, qs])]
    ref = _reference_attention(q, torch.cat([pk, k]), torch.cat([pv, v]), full_mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(attn.recorded[0][0], k[rec])
