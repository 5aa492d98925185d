"""Decode-efficient attention over the drafter's KV cache (Triton), beside its plain-PyTorch reference.

Semantics (those of `pedagle_core.attention.CacheAttention`): query row t of request b = request_index[t]
at position p = positions[t] sees the keys of its request at positions kp with
``kp <= p`` (and ``kp > p - window`` on sliding layers) and ``kp < ctx_limit``; the key of request b at
position kp lives in cache slot ``block_table[b, kp // block_size] * block_size + kp % block_size``
(the contiguous reference cache is the case ``block_size = max_seq_len``, one block per request).
A row at a negative position sees key 0 (as the reference's padding rule does). Scale 1/sqrt(head_dim).

Design (flash-decoding over the cache, no gather copy, no repeat_interleave):

* `build_row_table` — one launch: the rows of each request, in row order, as a ``[B, max_rows]`` int32
  table (-1 = none). Sync-free: ``max_rows`` is a host int (a caller's static bound, or the shape bound
  ``T - (B - 1)``).
* `write_kv` — one launch: k/v of every row with ``slot >= 0`` into the cache (rows with slot -1 write
  nothing); no boolean indexing, so no host sync.
* `_decode_attn_kernel` — grid (q tiles, B * Hkv, splits). A program owns a tile of ROWS query rows of
  one request and ONE kv head, with all G = Hq / Hkv query heads of that group stacked into the M
  dimension of the tile (M = ROWS * G): each K/V tile is read once per (request, kv head) and feeds
  every query row and head that uses it (GQA without copies). The program's key range (the union of
  its rows' visible ranges) is split evenly among ``splits`` programs (split-K / flash-decoding), so a
  few long requests still fill the GPU. Online softmax in fp32 (exp2).
  With splits > 1 each program stores its partial (o, log-sum-exp), takes a ticket from its group's
  counter, and the last one merges the group's partials in split order (one launch: the separate merge
  kernel of earlier versions cost ~3.5 us per layer at batch 1).
* Launch variants (split count, tiles) chosen per shape by timing `VARIANTS` once on the device, each as a
  CUDA graph of back-to-back calls (`measured_choice.time_graphs`); no single heuristic won everywhere in
  the variant sweeps of `bench/bench_drafter.py`.

Every size that shapes a launch is a host int derived from tensor shapes or from caller hints, so the
whole path can be captured in a CUDA graph. TRITON_INTERPRET=1 must be set before this module is
imported to run the kernels on CPU tensors (tests).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from . import measured_choice, pdl
from .device_info import N_COUNTERS as _N_COUNTERS, sm_count, ticket_counters
from .jit_math import gdc_wait_and_release

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LOG2E = 1.4426950408889634
_MAX_BLOCK_M = 128           # query rows x heads per program (register budget of the fp32 accumulator)


def can_run(device: torch.device | str) -> bool:
    """Whether the kernels (as defined at import) can run on tensors of `device`."""
    device = torch.device(device)
    return device.type == "cpu" if INTERPRETED else device.type == "cuda"


# ---------------------------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=["n_rows", "max_rows"])
def _row_table_kernel(req_ptr, table_ptr, n_rows, max_rows, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """Program b: table[b, :] = the rows t with request_index[t] == b in increasing t, then -1."""
    b = tl.program_id(0)
    gdc_wait_and_release(PDL)
    count = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), 0)
    for start in range(0, n_rows, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        r = tl.load(req_ptr + offs, mask=offs < n_rows, other=-1)
        match = (r == b).to(tl.int32)
        rank = count + tl.cumsum(match, 0) - 1
        tl.store(table_ptr + b.to(tl.int64) * max_rows + rank, offs.to(tl.int32),
                 mask=(match != 0) & (rank < max_rows))
        count += tl.sum(match, 0)
    for start in range(0, max_rows, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        tl.store(table_ptr + b.to(tl.int64) * max_rows + idx, tl.full([BLOCK], -1, tl.int32),
                 mask=(idx >= count) & (idx < max_rows))


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, slot_ptr, kc_ptr, vc_ptr, k_stride, v_stride, c_stride,
                     ROW: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """Program t: cache[slot[t]] = k[t], v[t] (ROW = Hkv * D contiguous elements) unless slot[t] < 0."""
    t = tl.program_id(0).to(tl.int64)
    gdc_wait_and_release(PDL)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < tl.where(slot >= 0, ROW, 0)
    k = tl.load(k_ptr + t * k_stride + offs, mask=m)
    v = tl.load(v_ptr + t * v_stride + offs, mask=m)
    tl.store(kc_ptr + slot * c_stride + offs, k.to(kc_ptr.dtype.element_ty), mask=m)
    tl.store(vc_ptr + slot * c_stride + offs, v.to(vc_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["window", "ctx_limit", "max_rows", "n_splits", "n_kv_heads"])
def _decode_attn_kernel(
    q_ptr, kc_ptr, vc_ptr, pos_ptr, table_ptr, bt_ptr, out_ptr, po_ptr, plse_ptr, cnt_ptr,
    qk_scale, window, ctx_limit, block_size, max_rows, n_splits, n_kv_heads,
    q_st, q_sh, c_ss, c_sh, bt_sb, o_st, o_sh, po_ss, po_st, po_sh, pl_ss, pl_st,
    G: tl.constexpr, G_PAD: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, PAGED: tl.constexpr, SPLIT: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, INTERIOR: tl.constexpr = False, PDL: tl.constexpr = False,
):
    BLOCK_M: tl.constexpr = ROWS * G_PAD
    qt = tl.program_id(0)
    pid1 = tl.program_id(1)
    split = tl.program_id(2)
    gdc_wait_and_release(PDL)
    b = pid1 // n_kv_heads
    hkv = pid1 % n_kv_heads

    m_idx = tl.arange(0, BLOCK_M)
    g = m_idx % G_PAD
    rank = qt * ROWS + m_idx // G_PAD
    row = tl.load(table_ptr + b.to(tl.int64) * max_rows + rank, mask=rank < max_rows, other=-1)
    valid = (row >= 0) & (g < G)
    row64 = tl.where(valid, row, 0).to(tl.int64)
    head = hkv * G + g                                                    # query head of each M row
    qpos = tl.load(pos_ptr + row64, mask=valid, other=0).to(tl.int32)
    qpos = tl.maximum(qpos, 0)
    hi = tl.minimum(qpos, ctx_limit - 1)                                  # last visible key (inclusive)
    if HAS_WINDOW:
        lo = tl.maximum(qpos - window + 1, 0)
    else:
        lo = tl.zeros_like(qpos)
    # The program's key range: the union of its rows' ranges, split evenly among the split programs.
    hi_p = tl.max(tl.where(valid, hi, -1), 0)
    lo_p = tl.minimum(tl.min(tl.where(valid, lo, 2147483647), 0), hi_p + 1)
    n_keys = hi_p + 1 - lo_p
    hi_min = tl.min(tl.where(valid, hi, 2147483647), 0)                  # keys <= hi_min: seen by every row
    chunk = tl.cdiv(tl.cdiv(n_keys, n_splits), BLOCK_N) * BLOCK_N
    start = lo_p + split * chunk
    end = tl.minimum(start + chunk, hi_p + 1)

    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    q = tl.load(q_ptr + row64[:, None] * q_st + head[:, None] * q_sh + d[None, :],
                mask=valid[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:                                       # the interpreter's 16-bit tl.dot is wrong: use fp32
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    if not PAGED:
        base = tl.load(bt_ptr + b.to(tl.int64) * bt_sb).to(tl.int64) * block_size
    kv_off = hkv.to(tl.int64) * c_sh + d[None, :]
    for n0 in range(start, end, BLOCK_N):
        kpos = n0 + tl.arange(0, BLOCK_N)
        if HAS_WINDOW:     # rows' windows may leave holes in the union range (e.g. rejected rows at position 0)
            need = tl.max((valid & (lo < n0 + BLOCK_N) & (hi >= n0)).to(tl.int32), 0) > 0
            k_in = kpos < tl.where(need, end, n0)             # a tile no row needs loads nothing
        else:
            k_in = kpos < end
        if PAGED:
            blk = tl.load(bt_ptr + b.to(tl.int64) * bt_sb + kpos // block_size, mask=k_in, other=0)
            slot = blk.to(tl.int64) * block_size + kpos % block_size
        else:
            slot = base + kpos
        kv_mask = k_in[:, None] & d_ok[None, :]
        k = tl.load(kc_ptr + slot[:, None] * c_ss + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(vc_ptr + slot[:, None] * c_ss + kv_off, mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k.to(q.dtype)))
        s = s * qk_scale
        if INTERIOR and not HAS_WINDOW:
            # a tile every row sees whole (all but the last one or two at long contexts): no mask
            if (n0 + BLOCK_N > end) | (n0 + BLOCK_N - 1 > hi_min):
                s = tl.where(k_in[None, :] & (kpos[None, :] <= qpos[:, None]), s, float("-inf"))
        else:
            vis = k_in[None, :] & (kpos[None, :] <= qpos[:, None])
            if HAS_WINDOW:
                vis = vis & (kpos[None, :] > qpos[:, None] - window)
            s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vq = v.to(q.dtype)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(vq.dtype), vq, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vq.dtype), vq)
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    st_mask = valid[:, None] & d_ok[None, :]
    if SPLIT:
        # partial (o, lse) -> po/plse[split]; the last of the group's split programs to finish merges them
        lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf"))
        po_tile = po_ptr + row64[:, None] * po_st + head[:, None] * po_sh + d[None, :]
        pl_tile = plse_ptr + row64 * pl_st + head
        tl.store(po_tile + split.to(tl.int64) * po_ss, o, mask=st_mask)
        tl.store(pl_tile + split.to(tl.int64) * pl_ss, lse, mask=valid)
        tl.debug_barrier()                  # every thread's partial stored before the ticket is taken
        group = qt * tl.num_programs(1) + pid1
        ticket = tl.atomic_add(cnt_ptr + group, 1, sem="acq_rel", scope="gpu")
        if ticket == n_splits - 1:
            # the log-sum-exp merge, in split order (the same sum whichever program finishes last)
            m = tl.full([BLOCK_M], float("-inf"), tl.float32)
            for s in range(0, n_splits):
                m = tl.maximum(m, tl.load(pl_tile + s * pl_ss, mask=valid, other=float("-inf"), cache_modifier=".cg"))
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
            w_sum = tl.zeros([BLOCK_M], tl.float32)
            for s in range(0, n_splits):
                w = tl.exp2(tl.load(pl_tile + s * pl_ss, mask=valid, other=float("-inf"), cache_modifier=".cg") - m_safe)
                part = tl.load(po_tile + s * po_ss, mask=st_mask & (w[:, None] > 0), other=0.0, cache_modifier=".cg")
                acc += w[:, None] * part
                w_sum += w
            o = acc / tl.where(w_sum > 0, w_sum, 1.0)[:, None]
            tl.store(out_ptr + row64[:, None] * o_st + head[:, None] * o_sh + d[None, :],
                     o.to(out_ptr.dtype.element_ty), mask=st_mask)
            tl.atomic_xchg(cnt_ptr + group, 0, sem="relaxed", scope="gpu")   # zero for the next launch
    else:
        tl.store(out_ptr + row64[:, None] * o_st + head[:, None] * o_sh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=st_mask)


# ---------------------------------------------------------------------------------------------- host side
def row_bound(n_rows: int, max_rows: int | None = None) -> int:
    """Static bound on the query rows of one request: the caller's hint (capped by the row count), else
    the row count itself (always valid, but sizes a grid of mostly idle programs)."""
    return max(1, n_rows if max_rows is None else min(int(max_rows), n_rows))


def build_row_table(request_index: Tensor, n_requests: int, max_rows: int) -> Tensor:
    """[T] request of each row -> [n_requests, max_rows] int32: the rows of each request in increasing
    row order, padded with -1. Rows past ``max_rows`` of their request are dropped (the caller's bound
    must hold); on CPU tensors this is checked."""
    T = request_index.shape[0]
    table = torch.empty(n_requests, max_rows, dtype=torch.int32, device=request_index.device)
    if request_index.device.type == "cpu" and T:
        counts = torch.bincount(request_index.long(), minlength=n_requests)
        if int(counts.max()) > max_rows:
            raise ValueError(f"max_query_len = {max_rows}; a request has {int(counts.max())} query rows")
    kw = pdl.launch_kwargs(table.device)
    _row_table_kernel[(n_requests,)](request_index, table, T, max_rows, BLOCK=128,     # one compile for all T
                                     PDL=bool(kw), **kw)
    return table


def _row_major(x: Tensor) -> Tensor:
    """[T, H, D] with unit stride over (H, D) (k/v rows are copied whole)."""
    if x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        x = x.contiguous()
    return x


def write_kv(k: Tensor, v: Tensor, slot_mapping: Tensor, k_cache: Tensor, v_cache: Tensor) -> None:
    """k/v: [T, Hkv, D] -> k_cache/v_cache [N, Hkv, D] (contiguous) at slot_mapping [T]; slot -1 writes nothing."""
    T = k.shape[0]
    if T == 0:
        return
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("write_kv: expected contiguous per-layer caches [N, Hkv, D]")
    k, v = _row_major(k), _row_major(v)
    row = k.shape[1] * k.shape[2]
    kw = pdl.launch_kwargs(k.device)
    _write_kv_kernel[(T,)](k, v, slot_mapping, k_cache, v_cache, k.stride(0), v.stride(0), k_cache.stride(0),
                           ROW=row, BLOCK=triton.next_power_of_2(row), PDL=bool(kw), **kw)






def launch_config(n_rows: int, n_requests: int, max_rows: int, n_heads: int, n_kv_heads: int, head_dim: int,
                  max_context: int, kv_itemsize: int, device: torch.device, num_splits: int | None = None,
                  block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                  max_block_m: int = _MAX_BLOCK_M) -> dict:
    """Static launch parameters (host ints only). Splits: about one full wave of programs (~2 resident
    per SM, wave-quantisation efficiency >= 0.8), at most one per 256 keys of ``max_context``, and few
    enough that the fp32 partials (written, then read back by the combine) stay under half the K/V bytes.
    ``max_block_m``: the cap on query rows x heads per program (a request with more is cut into q tiles,
    each reading the request's K/V again)."""
    G = n_heads // n_kv_heads
    g_pad = triton.next_power_of_2(G)
    block_m = min(max(16, triton.next_power_of_2(max_rows * g_pad)), max(int(max_block_m), g_pad))
    rows = block_m // g_pad
    n_qtiles = triton.cdiv(max_rows, rows)
    d_pad = max(16, triton.next_power_of_2(head_dim))
    if num_splits is None:
        base = n_qtiles * n_requests * n_kv_heads
        slots = 2 * sm_count(device)
        kv_bytes = n_requests * max_context * n_kv_heads * head_dim * 2 * kv_itemsize
        part_bytes = n_rows * n_heads * head_dim * 4 * 2
        cap = max(1, min(max_context // 256, kv_bytes // max(1, 2 * part_bytes)))
        num_splits = 1
        if base < slots:
            for s in range(1, cap + 1):
                num_splits = s
                n = base * s
                if n >= 0.8 * slots and n / (triton.cdiv(n, slots) * slots) >= 0.8:
                    break
    if block_n is None:
        block_n = 64 if d_pad * block_m <= 64 * 128 else 32
    if num_warps is None:
        num_warps = 8 if block_m * d_pad >= 128 * 64 else 4
    if num_stages is None:
        num_stages = 2 if block_m * d_pad >= 128 * 128 else 3
    return dict(G=G, G_PAD=g_pad, ROWS=rows, n_qtiles=n_qtiles, D_PAD=d_pad, num_splits=int(num_splits),
                BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)


# The launch variants timed per shape on CUDA (`measured_choice`): the heuristic of `launch_config` first
# (the fallback while a graph is captured before its shape was timed), then other split counts and tiles.
# Splits 2-32 and the tiles that won somewhere in the H200 sweeps (bench/results/drafter_h200.json: the
# Qwen3 head at batch 8, ctx 8192 was 1.7x faster with 32-key tiles on 4 warps than the heuristic).
VARIANTS: list[dict] = [dict(), dict(num_splits=1), dict(num_splits=2), dict(num_splits=4), dict(num_splits=8),
                        dict(num_splits=16), dict(num_splits=32),
                        dict(block_n=32, num_warps=4, num_stages=3), dict(block_n=32, num_warps=8, num_stages=2),
                        dict(block_n=64, num_warps=4, num_stages=3), dict(block_n=64, num_warps=8, num_stages=4),
                        # 17-32 rows of 8 heads per request (K=10 at batch 8): one q tile, K/V read once
                        dict(max_block_m=256, block_n=32, num_warps=8, num_stages=2),
                        # batch 1 is latency-bound (8 KV heads: 8 programs per split): narrower q tiles (2-4
                        # rows of a group's 8 heads) give more programs, shorter dots and smaller partials to merge
                        dict(max_block_m=32, num_splits=2), dict(max_block_m=32, num_splits=4),
                        dict(max_block_m=16, num_splits=4), dict(max_block_m=64, num_splits=4)]
# Not timed any more: 128-key tiles (8 warps, 2 stages; alone and with 2 or 4 splits): never chosen on the H200
# at c648664 (bench/results/drafter_h200_fusion.json).
# Not timed any more: ``interior=True`` (the causal mask only on the tiles that need it; still an override).
# On the H200 at 0c05d98 its three variants were never chosen, 4-20% slower than the best at every shape
# (bench/results/drafter_h200_fused.json: the branch in the loop costs more than the mask it saves).
# Nor a loop of its own for the interior tiles (no mask, no load masks, 31% fewer instructions per tile in the
# SASS) between masked loops for the edge tiles: slower than this one-loop kernel on 13 of 14 shapes on the
# H200 at 1d075e6 (B8 K7 70.1 vs 65.3 us; bench/results/drafter_h200_interior.log), so not kept.
MARGIN = 0.03                    # a variant must beat the heuristic by this fraction (graph timings)
TUNE = True                      # False: always the `launch_config` heuristic (the path before tuning; benchmarks)
_CHOSEN: dict[tuple, dict] = {}


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, row_table: Tensor,
                     block_table: Tensor, block_size: int, ctx_limit: int, window: int | None = None,
                     max_context: int | None = None, out: Tensor | None = None, **overrides) -> Tensor:
    """Attention of q [T, Hq, D] over the cache [N, Hkv, D] (k_cache, v_cache: one layer, contiguous).

    positions [T]; row_table [B, max_rows] from `build_row_table`; block_table [B, max_blocks];
    ctx_limit: keys at positions >= ctx_limit are never seen; max_context: static bound on the keys a
    request reads (sizes the split-K grid only; default ctx_limit). overrides: num_splits, block_n,
    num_warps, num_stages, max_block_m (see `launch_config`), interior (mask only the tiles that need it). Without overrides, on CUDA, the fastest of `VARIANTS` as timed for
    this launch shape on this device (once per shape). Returns [T, Hq, D] in q's dtype.
    """
    args = (q, k_cache, v_cache, positions, row_table, block_table, block_size, ctx_limit, window, max_context, out)
    if overrides or not TUNE or not q.is_cuda or INTERPRETED or measured_choice.compiling():
        return _decode_attention(*args, **overrides)
    key = (q.device.index, tuple(q.shape), tuple(row_table.shape), k_cache.shape[1], k_cache.dtype,
           int(max_context or ctx_limit), int(window or 0), block_table.shape[1] > 1 or block_size < ctx_limit)
    if key not in _CHOSEN:
        if measured_choice.tracing():
            return _decode_attention(*args)
        fns = [lambda ov=ov: _decode_attention(*args, **ov) for ov in VARIANTS]
        names = [",".join(f"{a}={b}" for a, b in ov.items()) or "auto" for ov in VARIANTS]
        # timed as CUDA graphs of back-to-back calls (as the step meets them): isolated timings of one
        # ~10 us launch measured the host launch path and picked slower variants (run 1 of the H200 sweep)
        def timer(fns, device):
            t = measured_choice.time_graphs(fns, device)
            return t if t[0] != float("inf") else measured_choice.time_candidates(fns, device)
        _CHOSEN[key] = VARIANTS[measured_choice.choose("decode_attention", key[1:], names, fns, q.device, 0,
                                                       margin=MARGIN, timer=timer)]
    return _decode_attention(*args, **_CHOSEN[key])


def _decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, row_table: Tensor,
                      block_table: Tensor, block_size: int, ctx_limit: int, window: int | None = None,
                      max_context: int | None = None, out: Tensor | None = None, **overrides) -> Tensor:
    T, Hq, D = q.shape
    B, max_rows = row_table.shape
    Hkv = k_cache.shape[1]
    if Hq % Hkv:
        raise ValueError(f"q has {Hq} heads; expected a multiple of the cache's {Hkv} kv heads")
    if k_cache.shape[2] != D or v_cache.shape != k_cache.shape:
        raise ValueError(f"cache shapes {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not fit q {tuple(q.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("decode_attention: expected contiguous per-layer caches [N, Hkv, D]")
    if q.stride(2) != 1:
        q = q.contiguous()
    out = torch.empty_like(q) if out is None else out
    if T == 0:
        return out
    interior = bool(overrides.pop("interior", False))
    cfg = launch_config(T, B, max_rows, Hq, Hkv, D, max_context or ctx_limit, k_cache.element_size(), q.device,
                        **overrides)
    splits = cfg["num_splits"]
    paged = block_table.shape[1] > 1 or block_size < ctx_limit
    n_groups = cfg["n_qtiles"] * B * Hkv
    if splits > 1 and n_groups > _N_COUNTERS:                   # more merge groups than counters: no split
        cfg = launch_config(T, B, max_rows, Hq, Hkv, D, max_context or ctx_limit, k_cache.element_size(), q.device,
                            **dict(overrides, num_splits=1))
        splits = 1
    if splits > 1:
        po = torch.empty(splits, T, Hq, D, dtype=torch.float32, device=q.device)
        plse = torch.empty(splits, T, Hq, dtype=torch.float32, device=q.device)
        cnt = _counters(q.device)
    else:
        po, plse, cnt = out, out, out                             # never touched (SPLIT=False)
    kw = pdl.launch_kwargs(q.device)
    grid = (cfg["n_qtiles"], B * Hkv, splits)
    _decode_attn_kernel[grid](
        q, k_cache, v_cache, positions, row_table, block_table, out, po, plse, cnt,
        _LOG2E / math.sqrt(D), int(window or 0), int(ctx_limit), int(block_size), max_rows, splits, Hkv,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), block_table.stride(0),
        out.stride(0), out.stride(1),
        po.stride(0) if splits > 1 else 0, po.stride(1) if splits > 1 else 0, po.stride(2) if splits > 1 else 0,
        plse.stride(0) if splits > 1 else 0, plse.stride(1) if splits > 1 else 0,
        G=cfg["G"], G_PAD=cfg["G_PAD"], ROWS=cfg["ROWS"], HEAD_DIM=D, D_PAD=cfg["D_PAD"], BLOCK_N=cfg["BLOCK_N"],
        HAS_WINDOW=window is not None, PAGED=paged, SPLIT=splits > 1,
        IEEE=q.dtype == torch.float32 or INTERPRETED, UPCAST=INTERPRETED and q.dtype != torch.float32,
        INTERIOR=interior, PDL=bool(kw), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **kw,
    )
    return out




def _counters(device: torch.device) -> Tensor:
    """This module's ticket counters on ``device`` (zero between launches)."""
    return ticket_counters(device, "decode_attention")


# ---------------------------------------------------------------------------------------------- reference
def decode_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor,
                               request_index: Tensor, block_table: Tensor, block_size: int, ctx_limit: int,
                               window: int | None = None) -> Tensor:
    """Plain PyTorch, one row at a time against the keys gathered for it (the CacheAttention rule)."""
    T, Hq, D = q.shape
    Hkv = k_cache.shape[1]
    kp = torch.arange(ctx_limit, device=q.device)                                  # [S]
    bt = block_table.long()[request_index.long()]                                  # [T, max_blocks]
    slots = bt.gather(1, (kp // block_size)[None].expand(T, -1)) * block_size + kp % block_size  # [T, S]
    keys = k_cache[slots].to(q.dtype)                                              # [T, S, Hkv, D]
    vals = v_cache[slots].to(q.dtype)
    qp = positions.long()[:, None]
    vis = kp[None] <= qp
    if window is not None:
        vis = vis & (kp[None] > qp - window)
    vis = vis | ((qp < 0) & (kp[None] == 0))
    rep = Hq // Hkv
    keys = keys.repeat_interleave(rep, dim=2).transpose(1, 2)                      # [T, Hq, S, D]
    vals = vals.repeat_interleave(rep, dim=2).transpose(1, 2)
    out = F.scaled_dot_product_attention(q[:, :, None, :], keys, vals, attn_mask=vis[:, None, None, :])
    return out[:, :, 0, :]
