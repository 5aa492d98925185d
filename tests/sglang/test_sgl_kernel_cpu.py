"""pedagle's CPU `sgl_kernel` test ops (tests/sgl_kernel_cpu) against straightforward PyTorch math.

Runs in the SGLang test environment, where the package is installed under the import name `sgl_kernel`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

sgl_kernel = pytest.importorskip("sgl_kernel", reason="pedagle's CPU sgl_kernel: SGLang test venv only")
OPS = torch.ops.sgl_kernel
DTYPES = [torch.float32, torch.bfloat16]


def tol(dtype: torch.dtype) -> dict:
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def test_is_pedagles_package_and_unknown_names_raise():
    assert sgl_kernel.__version__.endswith("+pedagle.cpu")
    for name in sgl_kernel.IMPLEMENTED:
        assert hasattr(OPS, name), name
    with pytest.raises(NotImplementedError, match="not implemented in pedagle's CPU test kernels: fused_experts"):
        from sgl_kernel import fused_experts

        fused_experts(torch.zeros(1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_and_fused_add(dtype):
    torch.manual_seed(0)
    x, r, w = torch.randn(5, 64, dtype=dtype), torch.randn(5, 64, dtype=dtype), torch.randn(64, dtype=dtype)
    ref = (x.double() / x.double().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w.double()).to(dtype)
    torch.testing.assert_close(OPS.rmsnorm_cpu(x, w, 1e-6), ref, **tol(dtype))
    xi, ri = x.clone(), r.clone()
    OPS.fused_add_rmsnorm_cpu(xi, ri, w, 1e-6)
    s = x.double() + r.double()
    torch.testing.assert_close(ri, s.to(dtype), **tol(dtype))
    torch.testing.assert_close(xi, (s / s.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w.double()).to(dtype),
                               **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_qk_norm_in_place_on_views_into_qkv(dtype):
    """Qwen3's per-head q/k RMSNorm, in place on the q and k column ranges of a fused qkv tensor."""
    torch.manual_seed(4)
    T, hq, hk, d = 5, 4, 2, 32
    qkv = torch.randn(T, (hq + 2 * hk) * d, dtype=dtype)
    before = qkv.clone()
    q, k = qkv[:, : hq * d], qkv[:, hq * d : (hq + hk) * d]
    wq, wk = torch.randn(d, dtype=dtype), torch.randn(d, dtype=dtype)
    OPS.fused_qk_norm_cpu(q, k, wq, wk, 1e-6)

    def ref(x, w, h):
        xs = x.double().view(T, h, d)
        return (xs / xs.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w.double()).view(T, h * d).to(dtype)

    torch.testing.assert_close(qkv[:, : hq * d], ref(before[:, : hq * d], wq, hq), **tol(dtype))
    torch.testing.assert_close(qkv[:, hq * d : (hq + hk) * d], ref(before[:, hq * d : (hq + hk) * d], wk, hk),
                               **tol(dtype))
    assert torch.equal(qkv[:, (hq + hk) * d :], before[:, (hq + hk) * d :])     # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    x = torch.randn(3, 2, 40, dtype=dtype)
    ref = (x[..., :20].double() / (1 + torch.exp(-x[..., :20].double())) * x[..., 20:].double()).to(dtype)
    torch.testing.assert_close(OPS.silu_and_mul_cpu(x), ref, **tol(dtype))


def rope_reference(pos, x, head, theta, rot, neox):
    """Rotation of (x_i, x_j) pairs by pos * theta^(-2k/rot) through complex numbers; neox pairs (k, k + rot/2),
    GPT-J pairs (2k, 2k+1)."""
    xs = x.double().view(x.shape[0], -1, head)
    inv = theta ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    ang = torch.polar(torch.ones(x.shape[0], rot // 2, dtype=torch.float64), pos.double()[:, None] * inv)[:, None]
    r = xs[..., :rot]
    pairs = torch.complex(r[..., : rot // 2], r[..., rot // 2:]) if neox else torch.complex(r[..., 0::2], r[..., 1::2])
    out = pairs * ang
    rr = torch.cat([out.real, out.imag], -1) if neox else torch.stack([out.real, out.imag], -1).flatten(-2)
    return torch.cat([rr, xs[..., rot:]], -1).view(x.shape).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rot", [32, 16])
def test_rotary_embedding(dtype, neox, rot):
    torch.manual_seed(1)
    head, theta = 32, 10000.0
    inv = theta ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    freqs = torch.arange(100, dtype=torch.float64)[:, None] * inv
    cache = torch.cat([freqs.cos(), freqs.sin()], -1).to(dtype)
    pos = torch.tensor([0, 3, 17, 99])
    q, k = torch.randn(4, 4 * head, dtype=dtype), torch.randn(4, 2 * head, dtype=dtype)
    q2, k2 = OPS.rotary_embedding_cpu(pos, q, k, head, cache, neox)
    torch.testing.assert_close(q2, rope_reference(pos, q, head, theta, rot, neox), **tol(dtype))
    torch.testing.assert_close(k2, rope_reference(pos, k, head, theta, rot, neox), **tol(dtype))
    q3, _ = OPS.rotary_embedding_cpu(pos, q.view(4, 4, head), k.view(4, 2, head), head, cache, neox)
    assert q3.shape == (4, 4, head)
    torch.testing.assert_close(q3.view(4, -1), q2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rot", [64, 32])
def test_apply_rotary_pos_emb_matches_rotation_by_position(dtype, rot):
    """Hugging Face-style RoPE with per-token cos / sin ([T, D], each frequency twice) == rotating (k, k + D/2)
    pairs by pos * theta^(-2k/D)."""
    torch.manual_seed(2)
    head, theta, pos = rot, 10000.0, torch.tensor([0, 5, 31, 200])
    inv = theta ** (-torch.arange(0, head, 2, dtype=torch.float64) / head)
    freqs = pos.double()[:, None] * inv
    emb = torch.cat([freqs, freqs], -1)
    q, k = torch.randn(4, 4, head, dtype=dtype), torch.randn(4, 2, head, dtype=dtype)
    q2, k2 = OPS.apply_rotary_pos_emb_cpu(q, k, emb.cos().float(), emb.sin().float())
    assert q2.dtype == dtype and q2.shape == q.shape and k2.shape == k.shape
    torch.testing.assert_close(q2, rope_reference(pos, q.view(4, -1), head, theta, head, True).view(q.shape),
                               **tol(dtype))
    torch.testing.assert_close(k2, rope_reference(pos, k.view(4, -1), head, theta, head, True).view(k.shape),
                               **tol(dtype))
    assert torch.equal(q, q.clone())                        # inputs untouched (new tensors returned)


def pack(w: torch.Tensor) -> torch.Tensor:
    """convert_weight_packed; its Python function where PEDAGLE_SGLANG_CPU_AMX=0 left the op out (in this process)."""
    if sgl_kernel._amx_switch.forced() is False:
        assert not hasattr(OPS, "convert_weight_packed")
        return sgl_kernel.linear.convert_packed(w)
    return OPS.convert_weight_packed(w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [48, 40, 8])                  # whole blocks, a narrower last block, one narrow block
def test_packed_weight_is_a_reordering_that_weight_packed_linear_undoes(dtype, n):
    from sgl_kernel.linear import unpack

    torch.manual_seed(3)
    x, w, b = torch.randn(7, 64, dtype=dtype), torch.randn(n, 64, dtype=dtype), torch.randn(n).float()
    packed = pack(w)
    # SGLang keeps the packed tensor as the layer's weight and reads its shape: [N, K] as before
    assert packed.shape == w.shape and packed.dtype == w.dtype
    assert not torch.equal(packed, w)                       # reading it as a plain weight would be wrong
    assert torch.equal(torch.sort(packed.flatten()).values, torch.sort(w.flatten()).values)
    assert torch.equal(unpack(packed), w)
    ref = (x.double() @ w.double().t() + b.double()).to(dtype)
    torch.testing.assert_close(OPS.weight_packed_linear(x, packed, b, True), ref, **tol(dtype))
    torch.testing.assert_close(OPS.weight_packed_linear(x, w, None, False), (x.double() @ w.double().t()).to(dtype),
                               **tol(dtype))
    experts = torch.randn(3, n, 64, dtype=dtype)            # [E, N, K]: packed per expert
    packed3 = pack(experts)
    assert packed3.shape == experts.shape and torch.equal(packed3[1], pack(experts[1]))


def test_packing_refuses_what_sglang_does_not_pack():
    with pytest.raises(NotImplementedError, match="float32 .*convert_weight_packed"):
        pack(torch.randn(16, 64))      # SGLang packs only 16-bit (and quantized) weights
    with pytest.raises(ValueError, match="expected a multiple of 2"):
        pack(torch.randn(16, 63).bfloat16())
    with pytest.raises(ValueError, match=r"expected \[M, K\] and \[N, K\]"):
        OPS.weight_packed_linear(torch.randn(2, 32).bfloat16(), torch.randn(16, 64).bfloat16(), None, True)


# ---- attention over the token-level KV pool -----------------------------------------------------------------

def make_pool(dtype, lens, hkv=2, d=16, pool_len=64, slots=200, seed=0):
    """A KV pool with random contents and req_to_token rows of scattered, distinct slots for each request."""
    g = torch.Generator().manual_seed(seed)
    kbuf = torch.randn(slots, hkv, d, generator=g).to(dtype)
    vbuf = torch.randn(slots, hkv, d, generator=g).to(dtype)
    req_to_token = torch.zeros(8, pool_len, dtype=torch.int32)
    perm = torch.randperm(slots - 1, generator=g) + 1
    rows = [5, 2, 7, 0][: len(lens)]
    used = 0
    for r, n in zip(rows, lens):
        req_to_token[r, :n] = perm[used : used + n].int()
        used += n
    return kbuf, vbuf, req_to_token, torch.tensor(rows)


def sdpa_reference(q, k, v, q_pos, scale, window=0):
    """Dense causal GQA attention with torch's SDPA (float64): q [Tq, Hq, D] at positions q_pos; k, v [Tk, Hkv, D]."""
    g = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    kp = torch.arange(k.shape[0])
    mask = kp[None] <= q_pos[:, None]
    if window:
        mask &= kp[None] > q_pos[:, None] - window
    out = F.scaled_dot_product_attention(q.double().transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1),
                                         attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [0, 4])
def test_decode_attention_writes_kv_and_attends_its_row(dtype, window):
    lens = [9, 1, 14]
    kbuf, vbuf, r2t, rpi = make_pool(dtype, lens)
    B, hq, hkv, d = len(lens), 4, 2, 16
    q = torch.randn(B, hq, d, dtype=dtype)
    knew, vnew = torch.randn(B, hkv * d, dtype=dtype), torch.randn(B, hkv * d, dtype=dtype)
    loc = torch.stack([r2t[rpi[b], lens[b] - 1] for b in range(B)]).long()  # the new token's slot
    out = torch.empty(B, hq, d, dtype=dtype)
    logits = torch.empty(B, hq, 8, d + 1)
    scale = 1 / math.sqrt(d)
    OPS.decode_attention_cpu(q, kbuf, vbuf, 1.0, 1.0, out, knew, vnew, loc, logits, r2t, rpi,
                             torch.tensor(lens), scale, 0.0, False, window, None, None)
    torch.testing.assert_close(kbuf[loc], knew.view(B, hkv, d))
    torch.testing.assert_close(vbuf[loc], vnew.view(B, hkv, d))
    for b in range(B):
        slots = r2t[rpi[b], : lens[b]].long()
        ref = sdpa_reference(q[b : b + 1], kbuf[slots], vbuf[slots], torch.tensor([lens[b] - 1]), scale, window)
        torch.testing.assert_close(out[b : b + 1], ref.to(dtype), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_extend_attention_prefix_plus_new_tokens(dtype):
    lens, new = [12, 5, 7], [4, 5, 1]  # request 1 is a fresh prefill (no prefix)
    kbuf, vbuf, r2t, rpi = make_pool(dtype, lens, seed=3)
    hq, hkv, d = 4, 2, 16
    N = sum(new)
    q = torch.randn(N, hq, d, dtype=dtype)
    kext, vext = torch.randn(N, hkv, d, dtype=dtype), torch.randn(N, hkv, d, dtype=dtype)
    starts = torch.tensor([0, 4, 9])
    # the engine writes the new K/V into the pool first (set_kv_buffer); do the same
    for b in range(3):
        slots = r2t[rpi[b], lens[b] - new[b] : lens[b]].long()
        kbuf[slots], vbuf[slots] = kext[starts[b] : starts[b] + new[b]], vext[starts[b] : starts[b] + new[b]]
    scale = 0.3
    outs = []
    for kx, vx in ((kext, vext), (None, None)):
        out = torch.zeros(N, hq, d, dtype=dtype)
        OPS.extend_attention_cpu(q, kx, vx, out, kbuf, vbuf, 1.0, 1.0, r2t, rpi, torch.tensor(lens),
                                 torch.tensor(new), starts, max(new), scale, 0.0, False, 0, None, None, None, True)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for b in range(3):
        slots = r2t[rpi[b], : lens[b]].long()
        qpos = torch.arange(lens[b] - new[b], lens[b])
        ref = sdpa_reference(q[starts[b] : starts[b] + new[b]], kbuf[slots], vbuf[slots], qpos, scale)
        torch.testing.assert_close(outs[0][starts[b] : starts[b] + new[b]], ref.to(dtype), **tol(dtype))


def test_attention_refuses_tree_mask_and_cross_attention():
    kbuf, vbuf, r2t, rpi = make_pool(torch.float32, [3])
    q, out = torch.randn(3, 4, 16), torch.empty(3, 4, 16)
    args = (q, None, None, out, kbuf, vbuf, 1.0, 1.0, r2t, rpi[:1], torch.tensor([3]), torch.tensor([3]),
            torch.tensor([0]), 3, 0.25, 0.0)
    with pytest.raises(NotImplementedError, match="extend_attention_cpu"):
        OPS.extend_attention_cpu(*args, False, 0, None, None, torch.ones(9, dtype=torch.bool), True)
    with pytest.raises(NotImplementedError, match="cross-attention"):
        OPS.extend_attention_cpu(*args, True, 0, None, None, None, True)


# ---- KV-pool bookkeeping ---------------------------------------------------------------------------------------

def test_req_to_token_assign_and_extend_locs_roundtrip():
    r2t = torch.zeros(4, 32, dtype=torch.int32)
    rpi, start, end = torch.tensor([2, 0]), torch.tensor([3, 0]), torch.tensor([6, 2])
    locs = torch.tensor([11, 12, 13, 21, 22])
    OPS.assign_req_to_token_pool_cpu(rpi, r2t, start, end, locs, 32)
    assert r2t[2, 3:6].tolist() == [11, 12, 13] and r2t[0, :2].tolist() == [21, 22]
    assert int(r2t.count_nonzero()) == 5
    out = torch.empty(5, dtype=torch.int64)
    OPS.assign_extend_cache_locs_cpu(rpi, r2t, start, end, out, 32)
    assert out.tolist() == locs.tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_cache_and_copy_all_layer_kv_cache(dtype):
    k_cache, v_cache = torch.zeros(10, 2, 8, dtype=dtype), torch.zeros(10, 2, 8, dtype=dtype)
    k, v = torch.randn(3, 16, dtype=dtype), torch.randn(3, 16, dtype=dtype)
    idx = torch.tensor([7, 1, 4])
    OPS.store_cache_cpu(k, v, k_cache, v_cache, idx, 16)
    assert torch.equal(k_cache.view(10, 16)[idx], k) and torch.equal(v_cache.view(10, 16)[idx], v)
    bufs = [torch.randn(10, 2, 8).to(dtype) for _ in range(3)]
    before = [b.clone() for b in bufs]
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in bufs])
    tgt, src = torch.tensor([2, 3]), torch.tensor([3, 9])  # overlapping: row 3 is read before it is written
    OPS.copy_all_layer_kv_cache_cpu(ptrs, strides, tgt, src)
    for b, old in zip(bufs, before):
        assert torch.equal(b[2], old[3]) and torch.equal(b[3], old[9])
        keep = [i for i in range(10) if i not in (2, 3)]
        assert torch.equal(b[keep], old[keep])


# ---- speculative helpers ------------------------------------------------------------------------------------------

def test_draft_cache_locs_and_draft_decode_metadata():
    r2t = torch.arange(4 * 40, dtype=torch.int32).view(4, 40)
    rpi, seq = torch.tensor([3, 1]), torch.tensor([5, 9])
    topk, steps = 2, 3
    out = torch.empty(2 * topk * steps, dtype=torch.int64)
    OPS.assign_draft_cache_locs_contiguous_cpu(rpi, r2t, seq, out, 40, topk, steps)
    assert out[:6].tolist() == r2t[3, 5:11].tolist() and out[6:].tolist() == r2t[1, 9:15].tolist()
    meta = OPS.build_draft_decode_metadata_cpu(r2t, rpi, seq, topk, steps, 40)
    assert meta.shape == (4, 40)
    # candidate 1 of request 0: prefix then its own 3 draft slots at positions 5, 6, 7
    assert meta[1, :5].tolist() == r2t[3, :5].tolist()
    assert meta[1, 5:8].tolist() == r2t[3, 5 + 3 : 5 + 6].tolist()
    assert meta[2, 9:12].tolist() == r2t[1, 9:12].tolist()
    chain = OPS.build_draft_decode_metadata_cpu(r2t, rpi, seq, 1, steps, 40)
    for i, b in enumerate([3, 1]):  # topk 1: each row is the request's own row up to seq_len + steps
        n = int(seq[i]) + steps
        assert chain[i, :n].tolist() == r2t[b, :n].tolist()


def test_fill_accept_out_cache_loc_and_bonus_tokens():
    accept_index = torch.tensor([[0, 1, -1], [4, -1, -1], [6, 7, 8]])
    out_cache_loc = torch.arange(100, 109)
    dst = torch.full((9,), -5, dtype=torch.int64)
    OPS.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, dst)
    assert dst[:6].tolist() == [100, 101, 104, 106, 107, 108] and dst[6:].tolist() == [-5] * 3
    tokens = torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 10]])
    bonus = torch.empty(3, dtype=torch.int64)
    OPS.fill_bonus_tokens_cpu(tokens, torch.tensor([2, 1, 3]), bonus, 3)
    assert bonus.tolist() == [6, 7, 10]


def chain_tree(B, n, seq_lens, mode):
    """build_tree_kernel_efficient on a topk-1 chain of n-1 drafts."""
    # topk 1: draft step i has flat id i; id // topk = i names its parent in parent_list (0 = the root), and
    # parent_list[b, i] = i - 1 is that parent's own flat id
    topk = 1
    parent_list = torch.arange(-1, n - 1).repeat(B, 1)
    selected = torch.arange(0, n - 1).repeat(B, 1)
    tm = torch.zeros(B * n * n if mode == 1 else sum(n * (s + n) for s in seq_lens), dtype=torch.bool)
    pos = torch.empty(B * n, dtype=torch.int64)
    ri, nt, ns = (torch.full((B, n), -1, dtype=torch.int64) for _ in range(3))
    OPS.build_tree_kernel_efficient_cpu(parent_list, selected, torch.tensor(seq_lens), tm, pos, ri, nt, ns,
                                        topk, n - 1, n, mode)
    return tm, pos, ri, nt, ns


def test_build_tree_on_a_chain():
    B, n, seq = 2, 4, [5, 9]
    tm, pos, ri, nt, ns = chain_tree(B, n, seq, mode=1)
    assert pos.view(B, n).tolist() == [[5, 6, 7, 8], [9, 10, 11, 12]]
    assert ri.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert nt.tolist() == [[1, 2, 3, -1]] * 2 and ns.tolist() == [[-1] * 4] * 2
    assert torch.equal(tm.view(B, n, n), torch.ones(n, n, dtype=torch.bool).tril().expand(B, n, n))
    tm0, *_ = chain_tree(B, n, seq, mode=0)  # FULL_MASK: each node row is (seq_len + n) wide
    row = tm0[: n * (seq[0] + n)].view(n, seq[0] + n)
    assert torch.equal(row[:, seq[0]:], torch.ones(n, n, dtype=torch.bool).tril())


def test_verify_tree_greedy_chain_and_siblings():
    # request 0: chain 0 -> 1 -> 2 -> 3; the target agrees with drafts 1 and 2, not 3
    # request 1: root with two children (nodes 1, 2, siblings) then node 3 under node 2
    cand = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    ri = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    nt = torch.tensor([[1, 2, 3, -1], [1, -1, 3, -1]])
    ns = torch.tensor([[-1, -1, -1, -1], [-1, 2, -1, -1]])
    # the target's argmax per node; request 1's root predicts 22 = node 2's draft (the second child)
    target = torch.tensor([[11, 12, 99, 98], [22, 31, 23, 33]])
    predicts = torch.full((8,), -1, dtype=torch.int64)
    acc_idx = torch.full((2, 4), -1, dtype=torch.int64)
    acc_num = torch.empty(2, dtype=torch.int64)
    OPS.verify_tree_greedy_cpu(predicts=predicts, accept_index=acc_idx, accept_token_num=acc_num, candidates=cand,
                               retrive_index=ri, retrive_next_token=nt, retrive_next_sibling=ns,
                               target_predict=target)
    assert acc_num.tolist() == [2, 2]
    assert acc_idx.tolist() == [[0, 1, 2, -1], [4, 6, 7, -1]]
    assert predicts[:3].tolist() == [11, 12, 99]         # the bonus token after node 2 is the target's 99
    assert predicts[4].item() == 22 and predicts[6].item() == 23 and predicts[7].item() == 33
