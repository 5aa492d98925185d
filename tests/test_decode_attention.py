"""Decode attention (Triton, `pedagle_core.kernels.decode_attention`) == its plain-PyTorch reference ==
the torch `CacheAttention` path, on random cases: GQA (incl. a group size that is no power of two),
sliding windows, non-contiguous positions, rows with slot -1, paged block tables, split-K and several
query tiles per request. On a CPU-only machine the kernels run through the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported); on CUDA, compiled.
"""

from __future__ import annotations

import pytest
import torch

from pedagle_core.attention import ContiguousKVCache, resolve_attention_impl
from helpers_kernels import DEVICE, kernel_module

DA = kernel_module("decode_attention")
needs_triton = pytest.mark.skipif(DA is None, reason="Triton decode attention cannot run here")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    assert torch.isfinite(x).all(), "non-finite output"
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def test_triton_decode_attention_available():
    if DA is None:
        pytest.skip(f"Triton decode attention cannot run on {DEVICE} (triton missing, or TRITON_INTERPRET unset)")


def random_case(gen: torch.Generator, B: int, Hq: int, Hkv: int, D: int, S: int, rows_per_req: int,
                paged_block: int | None, dtype: torch.dtype):
    """A cache of B requests (contiguous rows or a shuffled paged block table), query rows in random order
    at random (non-contiguous, repeated) positions, some rows with slot -1 and a few at position 0."""
    if paged_block is None:
        n_slots = (B + 1) * S
        block_table = torch.randperm(B + 1, generator=gen)[:B].view(B, 1)      # cache rows, not 0..B-1
        block_size = S
    else:
        nb = S // paged_block
        n_slots = (B * nb + 3) * paged_block
        block_table = torch.randperm(B * nb + 3, generator=gen)[: B * nb].view(B, nb)
        block_size = paged_block
    kc = torch.randn(n_slots, Hkv, D, generator=gen).to(dtype)
    vc = torch.randn(n_slots, Hkv, D, generator=gen).to(dtype)
    counts = torch.randint(1, rows_per_req + 1, (B,), generator=gen)
    ri = torch.repeat_interleave(torch.arange(B), counts)
    ri = ri[torch.randperm(ri.numel(), generator=gen)]                          # rows of requests interleaved
    T = ri.numel()
    pos = torch.randint(0, S, (T,), generator=gen)
    pos[torch.rand(T, generator=gen) < 0.1] = 0
    q = torch.randn(T, Hq, D, generator=gen).to(dtype)
    return q, kc, vc, pos, ri, block_table, block_size, int(counts.max())


CASES = [  # B, Hq, Hkv, D, S, rows_per_req, paged_block, window, num_splits
    (3, 8, 2, 16, 48, 4, None, None, 1),
    (3, 8, 2, 16, 48, 4, None, 5, 3),
    (2, 4, 4, 16, 40, 3, None, None, 2),          # MHA (group size 1)
    (2, 10, 2, 32, 64, 6, 16, None, 4),           # group size 5 (padded to 8), paged
    (4, 8, 1, 16, 32, 20, 8, 7, 2),               # MQA, many rows: several query tiles per request
    (1, 16, 2, 64, 96, 12, None, 17, 5),
]


@needs_triton
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference(case, dtype):
    B, Hq, Hkv, D, S, rpr, paged, window, splits = case
    gen = torch.Generator().manual_seed(hash((case, str(dtype))) % 2**31)
    q, kc, vc, pos, ri, bt, bs, max_rows = random_case(gen, B, Hq, Hkv, D, S, rpr, paged, dtype)
    ref = DA.decode_attention_reference(q.double(), kc.double(), vc.double(), pos, ri, bt, bs, S, window)
    q, kc, vc, pos, ri, bt = (x.to(DEVICE) for x in (q, kc, vc, pos, ri, bt))
    table = DA.build_row_table(ri, B, max_rows)
    for n_splits in sorted({1, splits}):
        out = torch.full_like(q, float("nan"))                                  # poison: every element written
        DA.decode_attention(q, kc, vc, pos, table, bt, bs, S, window, out=out, num_splits=n_splits)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert rel_err(out.cpu(), ref) < tol, (n_splits, rel_err(out.cpu(), ref))
        # split programs merge in the kernel (the last one of each group): counters back at zero, and the
        # same bits on a second launch whichever program finished last
        assert int(DA._counters(q.device).abs().sum()) == 0
        if n_splits > 1:
            assert torch.equal(DA.decode_attention(q, kc, vc, pos, table, bt, bs, S, window, num_splits=n_splits), out)


@needs_triton
@pytest.mark.parametrize("ov", [dict(max_block_m=256, block_n=32, num_warps=8, num_stages=2),
                                dict(max_block_m=16, num_splits=2), dict(max_block_m=128, interior=True),
                                dict(max_block_m=256, interior=True, num_splits=3, block_n=16),
                                dict(max_block_m=128, num_splits=2, block_n=128, num_warps=8, num_stages=2),
                                dict(max_block_m=32, num_splits=4)])
def test_tuning_variants_match_reference(ov):
    """Launch variants the tuner times (`VARIANTS`): all rows of a request in one wide q tile (K/V read
    once), and the opposite, many narrow q tiles; every variant computes the same attention."""
    gen = torch.Generator().manual_seed(11)
    B, Hq, Hkv, D, S = 2, 16, 2, 16, 40
    q, kc, vc, pos, ri, bt, bs, max_rows = random_case(gen, B, Hq, Hkv, D, S, 30, None, torch.float32)
    ref = DA.decode_attention_reference(q.double(), kc.double(), vc.double(), pos, ri, bt, bs, S, None)
    q, kc, vc, pos, ri, bt = (x.to(DEVICE) for x in (q, kc, vc, pos, ri, bt))
    table = DA.build_row_table(ri, B, max_rows)
    cfg = DA.launch_config(q.shape[0], B, max_rows, Hq, Hkv, D, S, 4, q.device,
                           **{k: v for k, v in ov.items() if k != "interior"})
    assert max_rows > 16 and DA.launch_config(q.shape[0], B, max_rows, Hq, Hkv, D, S, 4, q.device)["n_qtiles"] == 2
    assert cfg["n_qtiles"] == {256: 1, 128: 2, 32: -(-max_rows // 4), 16: -(-max_rows // 2)}[ov["max_block_m"]]
    out = DA.decode_attention(q, kc, vc, pos, table, bt, bs, S, None, **ov)
    assert rel_err(out.cpu(), ref) < 1e-5


@needs_triton
@pytest.mark.parametrize("splits", [1, 2])
def test_interior_tiles_without_mask_equal_masked(splits):
    """``interior=True`` skips the causal mask on tiles every row of the program sees whole; rows at late
    positions make most tiles interior: the output equals the masked kernel's exactly, and the reference."""
    gen = torch.Generator().manual_seed(13)
    B, Hq, Hkv, D, S = 2, 8, 2, 16, 64
    q, kc, vc, pos, ri, bt, bs, max_rows = random_case(gen, B, Hq, Hkv, D, S, 5, None, torch.float32)
    pos = torch.randint(40, 60, pos.shape, generator=gen)                     # keys 0..39 seen by every row
    ref = DA.decode_attention_reference(q.double(), kc.double(), vc.double(), pos, ri, bt, bs, S, None)
    q, kc, vc, pos, ri, bt = (x.to(DEVICE) for x in (q, kc, vc, pos, ri, bt))
    table = DA.build_row_table(ri, B, max_rows)
    args = (q, kc, vc, pos, table, bt, bs, S, None)
    masked = DA.decode_attention(*args, num_splits=splits, block_n=16)
    interior = DA.decode_attention(*args, num_splits=splits, block_n=16, interior=True)  # tl.dot: >= 16
    assert torch.equal(interior, masked)
    assert rel_err(interior.cpu(), ref) < 1e-5


@needs_triton
def test_loose_row_bound_and_ctx_limit():
    """A row bound far above the real rows (idle query tiles) and positions at/after ctx_limit."""
    gen = torch.Generator().manual_seed(7)
    B, Hq, Hkv, D, S = 2, 4, 2, 16, 32
    q, kc, vc, pos, ri, bt, bs, _ = random_case(gen, B, Hq, Hkv, D, S, 3, None, torch.float32)
    pos[0] = S + 5                                                             # sees keys < ctx_limit only
    ref = DA.decode_attention_reference(q.double(), kc.double(), vc.double(), pos, ri, bt, bs, S, None)
    q, kc, vc, pos, ri, bt = (x.to(DEVICE) for x in (q, kc, vc, pos, ri, bt))
    table = DA.build_row_table(ri, B, DA.row_bound(ri.numel()))
    out = DA.decode_attention(q, kc, vc, pos, table, bt, bs, S, None, num_splits=3)
    assert rel_err(out.cpu(), ref) < 1e-5


@needs_triton
def test_row_table_orders_rows_and_pads():
    ri = torch.tensor([2, 0, 2, 2, 1, 0], device=DEVICE)
    table = DA.build_row_table(ri, 4, 4).cpu()
    assert table.tolist() == [[1, 5, -1, -1], [4, -1, -1, -1], [0, 2, 3, -1], [-1, -1, -1, -1]]
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="max_query_len = 2; a request has 3 query rows"):
            DA.build_row_table(ri, 4, 2)


@needs_triton
def test_write_kv_skips_slot_minus_one():
    kc = torch.randn(10, 2, 8, device=DEVICE)
    vc = torch.randn(10, 2, 8, device=DEVICE)
    k0, v0 = kc.clone(), vc.clone()
    k = torch.randn(3, 2, 8, device=DEVICE)
    v = torch.randn(3, 2, 8, device=DEVICE)
    DA.write_kv(k, v, torch.tensor([4, -1, 0], device=DEVICE), kc, vc)
    k0[4], k0[0], v0[4], v0[0] = k[0], k[2], v[0], v[2]
    assert torch.equal(kc, k0) and torch.equal(vc, v0)


# ------------------------------------------------------------------------------------------ CacheAttention
def _steps(gen: torch.Generator, S: int, rows: torch.Tensor):
    """Two steps of a 2-request batch: history, then a step rewriting positions with one rejected row."""
    pos1 = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2])
    req1 = torch.tensor([0] * 6 + [1] * 3)
    slots1 = rows[req1] * S + pos1
    pos2 = torch.tensor([4, 5, 6, 7, 0, 3, 9, 4])           # request 1 jumps to 9 (a gap) and back to 4
    req2 = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    slots2 = rows[req2] * S + pos2
    slots2[4] = -1
    return [(pos1, slots1, req1), (pos2, slots2, req2)]


@needs_triton
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("hints", [False, True])
def test_cache_attention_triton_matches_torch(window, hints):
    gen = torch.Generator().manual_seed(3)
    hkv, h, D, S = 2, 8, 16, 32
    rows = torch.tensor([2, 0])
    caches = {impl: ContiguousKVCache(2, 3, S, hkv, D, dtype=torch.float32, device=DEVICE, impl=impl)
              for impl in ("torch", "triton")}
    kw = dict(max_query_len=6, max_context=12) if hints else {}
    for pos, slots, req in _steps(gen, S, rows):
        T = pos.numel()
        q = torch.randn(T, h, D, generator=gen).to(DEVICE)
        k = torch.randn(T, hkv, D, generator=gen).to(DEVICE)
        v = torch.randn(T, hkv, D, generator=gen).to(DEVICE)
        outs = {}
        for impl, cache in caches.items():
            view = cache.for_requests(rows.to(DEVICE), **kw)
            attn = view.attention(pos.to(DEVICE), slots.to(DEVICE), req.to(DEVICE))
            assert attn.impl == impl
            outs[impl] = attn(1, q, k, v, window)
        assert rel_err(outs["triton"].cpu(), outs["torch"].cpu()) < 1e-5
        assert torch.equal(caches["triton"].k, caches["torch"].k) and torch.equal(caches["triton"].v, caches["torch"].v)
    # Rows with slot -1 wrote nothing into the cache proper (only the spare slot past its end).
    assert caches["torch"].k.shape == (2, 3 * S, hkv, D)


def test_torch_path_hints_match_default_and_spare_slot():
    """The sync-free torch layout (static hints) == the default one; slot -1 goes to the spare slot."""
    gen = torch.Generator().manual_seed(5)
    hkv, h, D, S = 2, 4, 8, 32
    rows = torch.tensor([2, 0])
    c1 = ContiguousKVCache(1, 3, S, hkv, D, dtype=torch.float64, impl="torch")
    c2 = ContiguousKVCache(1, 3, S, hkv, D, dtype=torch.float64, impl="torch")
    for pos, slots, req in _steps(gen, S, rows):
        T = pos.numel()
        q, k, v = (torch.randn(T, n, D, generator=gen, dtype=torch.float64) for n in (h, hkv, hkv))
        a = c1.for_requests(rows).attention(pos, slots, req)
        b = c2.for_requests(rows, max_query_len=8, max_context=16).attention(pos, slots, req)
        torch.testing.assert_close(a(0, q, k, v, 3), b(0, q, k, v, 3))
        assert b.q_max == 8 and b.s_max == 16
    assert torch.equal(c1.k, c2.k)
    assert c1.k_store.shape[1] == 3 * S + 1 and c1.k.data_ptr() == c1.k_store.data_ptr()


def test_resolve_attention_impl():
    assert resolve_attention_impl("auto", "cpu", torch.float32) == "torch"
    assert resolve_attention_impl("torch", DEVICE) == "torch"
    with pytest.raises(ValueError, match="impl = 'sdpa'; expected one of"):
        resolve_attention_impl("sdpa", "cpu")
    with pytest.raises(ValueError, match="impl = 'x'"):
        ContiguousKVCache(1, 1, 4, 1, 4, impl="x")
    if torch.cuda.is_available() and DA is not None:
        assert resolve_attention_impl("auto", "cuda", torch.bfloat16) == "triton"
        assert resolve_attention_impl("auto", "cuda", torch.float64) == "torch"


# ------------------------------------------------------------------------------------------ drafting
def _tiny_drafter(num_layers: int, dtype: torch.dtype):
    from pedagle_core.config import DrafterConfig
    from pedagle_core.model import Drafter

    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=64, head_dim=16, mask_token_id=1, parallel_depth=4,
                        layer_types=["sliding_attention", "full_attention"][:num_layers] if num_layers > 1 else None,
                        sliding_window=4 if num_layers > 1 else None)
    torch.manual_seed(0)
    d = Drafter(cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.2)
    return d.to(dtype).to(DEVICE).eval()


def _step(gen: torch.Generator, B: int, K: int, ctx: int, d):
    from pedagle_core.draft import StepInput

    T = B * (K + 1)
    cfg = d.config
    return StepInput(
        token_ids=torch.randint(0, cfg.vocab_size, (T,), generator=gen).to(DEVICE),
        positions=(ctx + torch.arange(K + 1)).repeat(B).to(DEVICE),
        query_start_loc=(torch.arange(B + 1) * (K + 1)).to(DEVICE),
        num_rejected=torch.randint(0, K + 1, (B,), generator=gen).to(DEVICE),
        next_token_ids=torch.randint(0, cfg.vocab_size, (B,), generator=gen).to(DEVICE),
        aux_hidden=torch.randn(T, cfg.fc_input_size, generator=gen).to(DEVICE, d.fc.weight.dtype))


@needs_triton
@pytest.mark.parametrize("parallel", [True, False])
def test_drafting_same_with_triton_and_torch_attention(parallel):
    from pedagle_core.draft import draft_autoregressive, draft_parallel

    d = _tiny_drafter(2 if parallel else 1, torch.float32)
    B, K, ctx, S = 2, 3, 10, 24
    gen = torch.Generator().manual_seed(11)
    step = _step(gen, B, K, ctx, d)
    c = d.config
    outs = {}
    for impl in ("torch", "triton"):
        cache = ContiguousKVCache(c.num_hidden_layers, B, S, c.num_key_value_heads, c.head_dim, device=DEVICE, impl=impl)
        g = torch.Generator().manual_seed(1)
        cache.k.copy_(torch.randn(cache.k.shape, generator=g)), cache.v.copy_(torch.randn(cache.v.shape, generator=g))
        view = cache.for_requests(torch.arange(B, device=DEVICE), max_query_len=2 * K, max_context=ctx + 2 * K)
        fn = draft_parallel if parallel else draft_autoregressive
        outs[impl] = fn(d, step, K, view)
    assert torch.equal(outs["torch"].token_ids, outs["triton"].token_ids)
    torch.testing.assert_close(outs["torch"].margins, outs["triton"].margins, rtol=1e-4, atol=1e-4)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_cuda_graph_capture_of_a_draft_step(impl):
    """The whole parallel draft step (expansion, fc, attention, readout) captures and replays; the replay
    on fresh inputs equals an eager run."""
    from pedagle_core.draft import draft_parallel

    d = _tiny_drafter(2, torch.bfloat16)
    B, K, ctx, S = 3, 4, 40, 64
    c = d.config
    cache = ContiguousKVCache(c.num_hidden_layers, B, S, c.num_key_value_heads, c.head_dim, dtype=torch.bfloat16,
                              device=DEVICE, impl=impl)
    cache.k.normal_(), cache.v.normal_()
    gen = torch.Generator().manual_seed(2)
    static = _step(gen, B, K, ctx, d)
    view = cache.for_requests(torch.arange(B, device=DEVICE), max_query_len=2 * K, max_context=ctx + 2 * K)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            draft_parallel(d, static, K, view)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = draft_parallel(d, static, K, view)
    fresh = _step(gen, B, K, ctx, d)
    for name in ("token_ids", "positions", "query_start_loc", "num_rejected", "next_token_ids", "aux_hidden"):
        getattr(static, name).copy_(getattr(fresh, name))
    g.replay()
    torch.cuda.synchronize()
    ref = draft_parallel(d, fresh, K, view)
    assert torch.equal(out.token_ids, ref.token_ids)
    torch.testing.assert_close(out.margins, ref.margins)
