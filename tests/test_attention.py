"""The reference KV-cache attention against a dense computation written out in the test."""

import math

import pytest
import torch

from pedagle_core.attention import ContiguousKVCache, MaskedAttention


def dense_attention(q, keys, values, q_pos, k_pos, window=None):
    """q: [Q, h, D]; keys/values: [S, hkv, D] with positions k_pos [S]; plain softmax loops."""
    rep = q.shape[1] // keys.shape[1]
    out = torch.zeros_like(q)
    for i in range(q.shape[0]):
        for h in range(q.shape[1]):
            vis = [j for j in range(keys.shape[0]) if k_pos[j] <= q_pos[i] and (window is None or k_pos[j] > q_pos[i] - window)]
            s = torch.stack([q[i, h] @ keys[j, h // rep] / math.sqrt(q.shape[-1]) for j in vis])
            p = torch.softmax(s, 0)
            out[i, h] = sum(p[n] * values[j, h // rep] for n, j in enumerate(vis))
    return out


@pytest.mark.parametrize("window", [None, 3])
def test_cache_attention_matches_dense_with_history_and_gaps(window):
    torch.manual_seed(0)
    hkv, h, D, S = 2, 4, 8, 32
    cache = ContiguousKVCache(1, 3, S, hkv, D, dtype=torch.float64)
    rows = torch.tensor([2, 0])                       # requests live in cache rows 2 and 0
    view = cache.for_requests(rows)
    # Step 1: request 0 writes positions 0..5, request 1 writes 0..2.
    pos1 = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2])
    req1 = torch.tensor([0] * 6 + [1] * 3)
    slots1 = rows[req1] * S + pos1
    k1, v1 = torch.randn(9, hkv, D, dtype=torch.float64), torch.randn(9, hkv, D, dtype=torch.float64)
    q1 = torch.randn(9, h, D, dtype=torch.float64)
    out1 = view.attention(pos1, slots1, req1)(0, q1, k1, v1, window)
    for r in range(2):
        sel = req1 == r
        ref = dense_attention(q1[sel], k1[sel], v1[sel], pos1[sel], pos1[sel], window)
        torch.testing.assert_close(out1[sel], ref)
    # Step 2: request 0 rewrites positions 4..7 (overwriting stale 4, 5); one rejected row (slot -1).
    pos2 = torch.tensor([4, 5, 6, 7, 0, 3])
    req2 = torch.tensor([0, 0, 0, 0, 0, 1])
    slots2 = rows[req2] * S + pos2
    slots2[4] = -1
    k2, v2 = torch.randn(6, hkv, D, dtype=torch.float64), torch.randn(6, hkv, D, dtype=torch.float64)
    q2 = torch.randn(6, h, D, dtype=torch.float64)
    out2 = view.attention(pos2, slots2, req2)(0, q2, k2, v2, window)
    keys0 = torch.cat([k1[:4], k2[:4]]); vals0 = torch.cat([v1[:4], v2[:4]]); kp0 = torch.arange(8)
    ref0 = dense_attention(q2[:4], keys0, vals0, pos2[:4], kp0, window)
    torch.testing.assert_close(out2[:4], ref0)
    keys1 = torch.cat([k1[6:9], k2[5:6]]); vals1 = torch.cat([v1[6:9], v2[5:6]])
    ref1 = dense_attention(q2[5:6], keys1, vals1, pos2[5:6], torch.arange(4), window)
    torch.testing.assert_close(out2[5:6], ref1)
    # The rejected row wrote nothing: cache row of request 0 at position 0 still holds step-1 keys.
    torch.testing.assert_close(cache.k[0, rows[0] * S + 0], k1[0])


def test_masked_attention_matches_dense():
    torch.manual_seed(1)
    T, h, D = 6, 2, 4
    q, k, v = (torch.randn(T, h, D, dtype=torch.float64) for _ in range(3))
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    out = MaskedAttention(mask)(0, q, k, v, None)
    ref = dense_attention(q, k, v, torch.arange(T), torch.arange(T))
    torch.testing.assert_close(out, ref)


def test_requests_view_rejects_max_model_len_past_cache():
    cache = ContiguousKVCache(1, 1, 16, 1, 4)
    with pytest.raises(ValueError, match="max_model_len = 32; expected <= the cache's max_seq_len 16"):
        cache.for_requests(torch.tensor([0]), max_model_len=32)
