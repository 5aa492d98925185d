"""Weight-streaming GEMM for few rows (Triton): ``y = x @ w.T + bias`` with x [M, K], w [N, K], M <= 256.

A drafter step multiplies a handful of rows (2K per request) by weights of tens of megabytes: the time
is the weight read, and cuBLAS' skinny kernels stream it well below copy bandwidth. Here every weight
element is read exactly once per call, by one program, and multiplies ALL rows of x:

* grid (N tiles, K splits). A program owns BLOCK_N output features and one contiguous slice of K; it
  streams its [BLOCK_N, BLOCK_K] weight tiles (16-byte loads, software-pipelined ``num_stages`` deep)
  and multiplies each by every row: ``acc[BLOCK_N, BLOCK_M] += w_tile @ x_tile.T`` (the weight side in
  the MMA's M slot, the rows in its N slot: "swap AB", so 16 rows fill an instruction).
* split-K (``SPLIT``): when the N tiles alone do not fill the GPU, the K range is cut into slices. Each
  program stores its float32 partial ``[BLOCK_N, BLOCK_M]`` to a workspace, then takes a ticket from a
  per-tile counter (acq_rel atomic after a CTA barrier); the program holding the last ticket sums the
  slices in slice order (deterministic), adds the bias, writes y and resets the counter to 0. One
  launch, no memset, replayable in a CUDA graph (the counters are zero between launches).

`linear` is the dispatch: on CUDA, up to `DISPATCH_MAX_ROWS` rows, it times the Triton variants against
cuBLAS (``F.linear``) once per (rows, N, K, dtype) through `measured_choice` (`time_in_graphs`: each as a
CUDA graph of products over rotating weight copies) and keeps the winner, so a shape where the kernel
loses stays on cuBLAS. `skinny_linear_reference` is the plain-PyTorch semantics the tests compare against.
TRITON_INTERPRET=1 must be set before import to run the kernel on CPU tensors.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from . import measured_choice, pdl
from .device_info import N_COUNTERS as _N_COUNTERS, l2_bytes, sm_count, ticket_counters
from .jit_math import gdc_wait_and_release, rne_bf16, silu

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_ROWS = 256                   # the kernel's limit (one row block per program)
# `linear` times the kernel against cuBLAS up to this many rows. On the H200 (bench/results/
# skinny_gemm_h200.log, products timed as CUDA graphs over rotating weights) its 64-wide tiles beat cuBLAS
# at 7-14 rows on lm_head, o, down, fc and gate_up (by 3-15%) and lost on every shape at 112 rows
# (1.4-2.3x slower); the wider tiles of `candidates` above 64 rows are timed too, and a shape where
# every variant loses stays on cuBLAS (H200 at 0c05d98, bench/results/drafter_h200_fused.json: at 112
# rows every shape still stayed on cuBLAS, the best kernel variant 1.3-2x slower; at 14 rows the kernel
# won on o, gate_up, down, fc and lm_head, the narrow deep tiles on Qwen3's o).
DISPATCH_MAX_ROWS = MAX_ROWS


def can_run(device: torch.device | str) -> bool:
    """Whether the kernel (as defined at import) can run on tensors of `device`."""
    device = torch.device(device)
    return device.type == "cpu" if INTERPRETED else device.type == "cuda"


# ---------------------------------------------------------------------------------------------- kernel
@triton.jit
def _store_out(acc, b_ptr, y_ptr, w_row, n_ok, m_ok, offs_m, pid_n, N, stride_ym, HAS_BIAS: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, SILU_GATE_UP: tl.constexpr, ACCURATE: tl.constexpr,
               BF16: tl.constexpr):
    """acc [BLOCK_N, BLOCK_M] (float32, weight rows w_row) + bias -> y in y's dtype. SILU_GATE_UP: the tile's
    first half is gate, its second half up of the same BLOCK_N/2 features: y[m, f] = silu(gate) * up,
    each step rounded as the two-launch path rounds it (product stored, `norm_rope.silu_mul_triton`)."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + w_row, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    if SILU_GATE_UP:
        HALF: tl.constexpr = BLOCK_N // 2
        v = acc.to(y_ptr.dtype.element_ty).to(tl.float32)          # the gate/up product as it would be stored
        g, u = tl.split(tl.permute(tl.reshape(v, [2, HALF, BLOCK_M]), (1, 2, 0)))   # [HALF, BLOCK_M] each
        act = rne_bf16(silu(g, BF16, ACCURATE) * u, BF16)
        feat = pid_n * HALF + tl.arange(0, HALF)
        tl.store(y_ptr + offs_m[None, :].to(tl.int64) * stride_ym + feat[:, None],
                 act.to(y_ptr.dtype.element_ty), mask=(feat < N)[:, None] & m_ok[None, :])
    else:
        tl.store(y_ptr + offs_m[None, :].to(tl.int64) * stride_ym + w_row[:, None],
                 acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


@triton.jit
def _prefetch_l2(w_ptr, w_row, n_ok, stride_wn, k_lo, k_hi, LINES: tl.constexpr, LINE: tl.constexpr):
    """Ask L2 for the first LINES 128-byte lines (LINE elements each) of this program's weight rows in
    [k_lo, k_hi), kept with evict-last priority: issued before the PDL wait, they stream while the
    previous kernel finishes. Out-of-range lines point at w_ptr (a valid address)."""
    k = k_lo + tl.arange(0, LINES) * LINE
    ok = n_ok[:, None] & (k < k_hi)[None, :]
    ptrs = w_ptr + w_row[:, None].to(tl.int64) * stride_wn + k[None, :]
    ptrs = tl.where(ok, ptrs, w_ptr)
    tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit(do_not_specialize=["M", "N", "K", "tiles_per_split", "n_prefetch"])
def _skinny_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, tiles_per_split, n_prefetch,
                   stride_xm, stride_wn, stride_ym,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   SPLIT: tl.constexpr, EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                   IEEE: tl.constexpr, UPCAST: tl.constexpr, SILU_GATE_UP: tl.constexpr = False,
                   ACCURATE: tl.constexpr = True, Y_BF16: tl.constexpr = False, PDL: tl.constexpr = False,
                   PREFETCH_LINES: tl.constexpr = 0, LINE: tl.constexpr = 64):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_splits = tl.num_programs(1)
    j = tl.arange(0, BLOCK_N)
    if SILU_GATE_UP:        # N output features; weight rows [gate (N) ; up (N)]: this tile's gates, then its ups
        feat = pid_n * (BLOCK_N // 2) + j % (BLOCK_N // 2)
        n_ok = feat < N
        w_row = feat + tl.where(j >= BLOCK_N // 2, N, 0)
        n_rows = 2 * N
    else:
        w_row = pid_n * BLOCK_N + j
        n_ok = w_row < N
        n_rows = N
    offs_m = tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    tile0 = pid_k * tiles_per_split                     # this program's K slice, in whole BLOCK_K tiles
    n_iter = tl.minimum(tiles_per_split, tl.cdiv(K, BLOCK_K) - tile0)
    k_hi = tl.minimum((tile0 + tiles_per_split) * BLOCK_K, K)
    w_rows = w_ptr + w_row[:, None].to(tl.int64) * stride_wn
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    if PREFETCH_LINES > 0:              # weights: never written by an earlier kernel, safe before the wait
        if pid_k * tl.num_programs(0) + pid_n < n_prefetch:      # the programs of the first wave (launch order)
            _prefetch_l2(w_ptr, w_row, n_ok, stride_wn, tile0 * BLOCK_K, k_hi, PREFETCH_LINES, LINE)
    gdc_wait_and_release(PDL)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for i in range(0, n_iter):
        # a multiple of BLOCK_K by construction (tile index x constexpr), so the loads vectorise (16 bytes)
        offs_k = (tile0 + i) * BLOCK_K + tl.arange(0, BLOCK_K)
        if EVEN_K:                          # K a whole number of tiles: masks along rows only
            w = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None], other=0.0)
            x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        else:
            k_ok = offs_k < k_hi
            w = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:                          # the interpreter's 16-bit tl.dot is wrong: multiply in fp32
            w = w.to(tl.float32)
            x = x.to(tl.float32)
        else:
            x = x.to(w.dtype)
        if IEEE:
            acc += tl.dot(w, tl.trans(x), input_precision="ieee")
        else:
            acc += tl.dot(w, tl.trans(x))
    if SPLIT:
        # partial -> ws[split, weight row, m]; the last of the tile's programs to finish reduces them all
        ws_tile = ws_ptr + w_row[:, None].to(tl.int64) * BLOCK_M + offs_m[None, :]
        plane = n_rows.to(tl.int64) * BLOCK_M
        tl.store(ws_tile + pid_k.to(tl.int64) * plane, acc, mask=n_ok[:, None])
        tl.debug_barrier()                  # every thread's partial stored before the ticket is taken
        ticket = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == n_splits - 1:
            total = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            for s in range(0, n_splits):     # slice order: the same sum whichever program finishes last
                total += tl.load(ws_tile + s * plane, mask=n_ok[:, None], other=0.0, cache_modifier=".cg")
            _store_out(total, b_ptr, y_ptr, w_row, n_ok, m_ok, offs_m, pid_n, N, stride_ym, HAS_BIAS,
                       BLOCK_N, BLOCK_M, SILU_GATE_UP, ACCURATE, Y_BF16)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")   # zero for the next launch
    else:
        _store_out(acc, b_ptr, y_ptr, w_row, n_ok, m_ok, offs_m, pid_n, N, stride_ym, HAS_BIAS,
                   BLOCK_N, BLOCK_M, SILU_GATE_UP, ACCURATE, Y_BF16)


# ---------------------------------------------------------------------------------------------- host side


def _counters(device: torch.device) -> Tensor:
    """This module's ticket counters on ``device`` (zero between launches)."""
    return ticket_counters(device, "skinny_gemm")




def block_m(M: int) -> int:
    return max(16, triton.next_power_of_2(M))


_SMEM_BUDGET = 200 << 10         # shared memory the pipelined tiles may use (H100/H200: 227 KB per block)


def launch_config(M: int, N: int, K: int, device: torch.device, block_n: int = 64, block_k: int | None = None,
                  split_k: int | None = None, num_warps: int = 4, num_stages: int | None = None,
                  itemsize: int = 2) -> dict:
    """Static launch parameters. Default split: the fewest K slices that give about two programs per SM
    (N tiles x slices), each slice at least 4 weight tiles long. Default pipeline depth: 4 stages up to 32
    rows, else 3, fewer where the buffered tiles (``num_stages - 1`` of weight and rows, ``itemsize`` bytes
    per element) would pass `_SMEM_BUDGET` (float32 with 128-wide tiles)."""
    bm = block_m(M)
    if block_k is None:
        block_k = 128 if (K % 128 == 0 and bm <= 64) else 64
    n_tiles = triton.cdiv(N, block_n)
    k_tiles = triton.cdiv(K, block_k)
    if split_k is None:
        want = triton.cdiv(2 * sm_count(device), n_tiles)
        split_k = max(1, min(want, k_tiles // 4))
    split_k = max(1, min(int(split_k), k_tiles))
    k_split = triton.cdiv(k_tiles, split_k) * block_k
    split_k = triton.cdiv(K, k_split)                      # no empty slices
    if num_stages is None:
        stage_bytes = (block_n + bm) * block_k * itemsize
        num_stages = max(1, min(4 if bm <= 32 else 3, 1 + _SMEM_BUDGET // stage_bytes))
    return dict(BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=block_k, split_k=split_k, k_split=k_split,
                n_tiles=n_tiles, num_warps=num_warps, num_stages=num_stages)


PREFETCH_BYTES: int | str = 0
"""With PDL: bytes of each of its weight rows a program asks L2 for before waiting on the previous kernel
(0: none, the default; a measured variant of `candidates`), or "auto": the first wave's programs (about
two per SM) ask for as much of their K slice as fits in half of L2 together. Prefetching pays where the
previous kernel leaves HBM idle (decode attention, norms, RoPE at batch 1); the per-shape timings of
`linear` chain a product to itself, so they cannot see that gain: the drafter benchmark measures the
"auto" form inside the step (path "prefetch"). On the H200 at 79719fb 1 KB per row for every program
made isolated products slower: lm_head 277 us vs 271 us without, gate/up 38.3 vs 36.4 us."""


def prefetch_plan(prefetch: int | str, n_programs: int, rows_per_program: int, slice_bytes: int,
                  device: torch.device) -> tuple[int, int]:
    """(128-byte lines per weight row, programs that prefetch) for a launch of ``n_programs`` programs of
    ``rows_per_program`` weight rows, each row's K slice ``slice_bytes`` long. ``prefetch``: bytes per
    row for every program, or "auto" (see `PREFETCH_BYTES`)."""
    if prefetch == "auto":
        first_wave = min(n_programs, 2 * sm_count(device))
        per_row = min(slice_bytes, l2_bytes(device) // 2 // max(1, first_wave * rows_per_program))
        lines = per_row // 128
        if lines < 1:
            return 0, 0
        return 1 << (lines.bit_length() - 1), first_wave         # a power of two, at most the budget
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch = {prefetch!r}; expected bytes per weight row (int >= 0) or 'auto'")
    if prefetch == 0:
        return 0, 0
    return triton.next_power_of_2(max(1, prefetch // 128)), n_programs


def skinny_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, out: Tensor | None = None,
                  silu_gate_up: bool = False, **overrides) -> Tensor:
    """x [M, K] (M <= MAX_ROWS) @ weight [N, K].T + bias [N] -> [M, N] in x's dtype, through the kernel.
    silu_gate_up: weight is [2I, K] (gate rows, then up rows: a fused gate/up projection) and the result is
    the MLP activation ``silu(x @ gate.T) * (x @ up.T)`` [M, I], computed in the product's epilogue with
    the rounding steps of the product followed by `norm_rope.silu_mul_triton`. overrides: block_n,
    block_k, split_k, num_warps, num_stages (see `launch_config`), prefetch (bytes per weight row, see
    `PREFETCH_BYTES`: bytes per row or "auto")."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"skinny_linear: x {tuple(x.shape)}, weight {tuple(weight.shape)}; expected [M, K] and [N, K]")
    M, K = x.shape
    N = weight.shape[0]
    if silu_gate_up and N % 2:
        raise ValueError(f"skinny_linear: silu_gate_up with weight {tuple(weight.shape)}; expected [2I, K]")
    if M > MAX_ROWS:
        raise ValueError(f"skinny_linear: {M} rows; the kernel takes at most {MAX_ROWS}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"skinny_linear: bias {tuple(bias.shape)}; expected ({N},)")
    if x.stride(1) != 1:
        x = x.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    n_out = N // 2 if silu_gate_up else N
    y = torch.empty(M, n_out, dtype=x.dtype, device=x.device) if out is None else out
    if M == 0 or N == 0:
        return y
    if K == 0:
        if silu_gate_up:
            z = (bias if bias is not None else torch.zeros(N, dtype=x.dtype, device=x.device)).expand(M, N)
            return y.copy_(F.silu(z[:, :n_out]) * z[:, n_out:])
        return y.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(y))
    prefetch = overrides.pop("prefetch", PREFETCH_BYTES)
    cfg = launch_config(M, N, K, x.device, itemsize=x.element_size(), **overrides)
    n_tiles = triton.cdiv(n_out, cfg["BLOCK_N"] // 2) if silu_gate_up else cfg["n_tiles"]
    split = cfg["split_k"] > 1
    if split and n_tiles > _N_COUNTERS:
        cfg = launch_config(M, N, K, x.device, itemsize=x.element_size(), **dict(overrides, split_k=1))
        split = False
    ws = torch.empty(cfg["split_k"], N, cfg["BLOCK_M"], dtype=torch.float32, device=x.device) if split else y
    cnt = _counters(x.device) if split else y
    even = K % cfg["BLOCK_K"] == 0
    kw = pdl.launch_kwargs(x.device)
    line = 128 // weight.element_size()
    lines, n_prefetch = prefetch_plan(prefetch, n_tiles * cfg["split_k"], cfg["BLOCK_N"],
                                      cfg["k_split"] * weight.element_size(), x.device)
    if not kw:                                   # without PDL there is no earlier kernel to overlap with
        lines = n_prefetch = 0
    _skinny_kernel[(n_tiles, cfg["split_k"])](
        x, weight, bias if bias is not None else y, y, ws, cnt, M, n_out, K, cfg["k_split"] // cfg["BLOCK_K"],
        n_prefetch,
        x.stride(0), weight.stride(0), y.stride(0),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], SPLIT=split, EVEN_K=even,
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32 or INTERPRETED,
        UPCAST=INTERPRETED and x.dtype != torch.float32, SILU_GATE_UP=silu_gate_up, ACCURATE=not INTERPRETED,
        Y_BF16=y.dtype == torch.bfloat16, PDL=bool(kw), PREFETCH_LINES=lines, LINE=line,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **kw)
    return y


def skinny_linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The plain-PyTorch semantics: float32 products and sums, rounded once to x's dtype."""
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------- dispatch
def candidates(M: int, N: int, K: int, device: torch.device) -> list[dict]:
    """The kernel variants timed against cuBLAS for one shape: tile widths x split counts. Above 64 rows
    wider tiles on 8 warps: each weight tile multiplies every row, and the rows' tile is re-read from L2
    once per weight tile, so at 112 rows a 64-wide tile read twice the weight's bytes of rows. Up to 32
    rows also narrow, deep tiles (16/32 features x 256 of K): many programs without split-K, so no
    reduction tail, for the small weights (o, q/k/v) whose split-K tail is a large part of the time."""
    bm = block_m(M)
    if bm <= 64:
        tiles = [(64, 4, None), (128, 4, None)] + ([(16, 4, 256), (32, 4, 256)] if bm <= 32 else [])
    elif bm <= 128:
        tiles = [(64, 4, None), (128, 8, None), (256, 8, None)]
    else:
        tiles = [(64, 8, None), (128, 8, None)]
    out, seen = [], set()
    for bn, nw, bk in tiles:
        c = launch_config(M, N, K, device, block_n=bn, block_k=bk)
        if bk is not None:                        # no split (the point of these tiles) and the default split
            splits = [1, c["split_k"]]
        else:
            splits = [c["split_k"], max(1, c["split_k"] // 2), 2 * c["split_k"]][: 3 if bm <= 64 else 2]
        for s in splits:
            c2 = launch_config(M, N, K, device, block_n=bn, block_k=bk, split_k=s)
            key = (bn, nw, c2["split_k"], c2["BLOCK_K"])
            if key not in seen and len(out) < 10:
                seen.add(key)
                ov = dict(block_n=bn, split_k=c2["split_k"])
                if bk is not None:
                    ov["block_k"] = bk
                if nw != 4:
                    ov["num_warps"] = nw
                out.append(ov)
    if pdl.enabled(device):                       # the first variant again, its first weight lines prefetched
        out.append(dict(out[0], prefetch=1024))
    return out


def _name(ov: dict) -> str:
    return "triton:" + ",".join(f"{k}={v}" for k, v in ov.items())


_CHOSEN: dict[tuple, dict | None] = {}          # shape key -> the winning kernel variant (None: cuBLAS)
_FASTEST_KERNEL: dict[tuple, dict] = {}         # shape key -> the fastest kernel variant, cuBLAS left out
KERNELS_ONLY = False
"""True: `linear` and `silu_gate_up` run every product they dispatch on the kernel (its fastest variant as
timed against cuBLAS), never cuBLAS: a step of pedagle launches only, each linked to the next by PDL.
The per-shape timings chain a product to itself; the drafter benchmark measures this all-kernel chain
inside the step (path "kernels") beside the per-shape choice."""


def _fastest(cands: list[dict], times: list[float]) -> dict:
    """The candidate with the smallest time (times[i] for cands[i]); the first without timings."""
    if len(times) != len(cands):
        return cands[0]
    return cands[min(range(len(cands)), key=times.__getitem__)]


def _product(x: Tensor, w: Tensor, bias: Tensor | None, v: dict | None) -> None:
    if v is None:
        F.linear(x, w, bias)
    else:
        skinny_linear(x, w, bias, **v)


def time_in_graphs(x: Tensor, weight: Tensor, bias: Tensor | None, variants: list[dict | None],
                   reps: int = 7, product: Callable[[Tensor, Tensor, Tensor | None, dict | None], object] = _product
                   ) -> list[float]:
    """Per-product ms of each variant (``product(x, w, bias, variant)``; the default: None = cuBLAS, else
    the kernel with those overrides) as a step meets it: a CUDA graph of R back-to-back products over R
    copies of the weight (together > 3x L2, so each product streams its weight from HBM; isolated single
    launches measured mostly launch latency and L2-flush noise). Graph replays of the variants take
    turns; the median per variant. A variant that fails to build or capture gets infinity."""
    dev = x.device
    wbytes = weight.numel() * weight.element_size()
    R = max(1, min(8, math.ceil(3 * torch.cuda.get_device_properties(dev).L2_cache_size / max(1, wbytes))))
    ws = [weight] + [weight.clone() for _ in range(R - 1)]

    def run_all(v: dict | None) -> Callable[[], object]:
        def run() -> None:
            for w in ws:
                product(x, w, bias, v)
        return run

    times = measured_choice.time_graphs([run_all(v) for v in variants], dev, repeat=1, reps=reps)
    return [t / R for t in times]


def _measure(kind: str, key: tuple, x: Tensor, weight: Tensor, bias: Tensor | None, cands: list[dict],
             names: list[str], fns: list[Callable[[], object]],
             product: Callable[[Tensor, Tensor, Tensor | None, dict | None], object]) -> tuple[dict | None, dict]:
    """Time the baseline (``product(..., None)``, names[0] / fns[0]) and the kernel variants ``cands``
    (`time_in_graphs`; single launches where graphs fail) once per shape through `measured_choice`:
    (the winner, None for the baseline; the fastest kernel variant, baseline left out)."""
    seen: list[float] = []

    def timer(fns, device):
        t = time_in_graphs(x, weight, bias, [None] + cands, product=product)
        seen.extend(t if t[0] != float("inf") else measured_choice.time_candidates(fns, device))
        return seen
    i = measured_choice.choose(kind, key[1:], names, fns, x.device, fallback=0, timer=timer)
    return (None if i == 0 else cands[i - 1]), _fastest(cands, seen[1:])


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for x [..., K]: on CUDA with <= DISPATCH_MAX_ROWS rows, the fastest of the
    kernel's variants and cuBLAS, as measured on this device for this shape (`measured_choice`);
    otherwise (and while a graph is captured before the shape was measured) cuBLAS."""
    x2 = x.reshape(-1, x.shape[-1])
    M = x2.shape[0]
    if (not x.is_cuda or INTERPRETED or M == 0 or M > DISPATCH_MAX_ROWS or x.dtype != weight.dtype
            or x.dtype not in (torch.bfloat16, torch.float16) or measured_choice.compiling()):
        return F.linear(x, weight, bias)
    N, K = weight.shape
    key = (x.device.index, M, N, K, x.dtype, bias is not None)
    if key not in _CHOSEN:
        cands = candidates(M, N, K, x.device)
        names = ["cublas"] + [_name(c) for c in cands]
        fns = [lambda: F.linear(x2, weight, bias)]
        fns += [lambda c=c: skinny_linear(x2, weight, bias, **c) for c in cands]
        if measured_choice.tracing():                    # a graph under capture: no timing now
            return F.linear(x, weight, bias)
        _CHOSEN[key], _FASTEST_KERNEL[key] = _measure("skinny_gemm", key, x2, weight, bias, cands, names, fns,
                                                      _product)
    ov = _FASTEST_KERNEL[key] if KERNELS_ONLY else _CHOSEN[key]
    if ov is None:
        return F.linear(x, weight, bias)
    return skinny_linear(x2, weight, bias, **ov).view(*x.shape[:-1], N)


def silu_gate_up_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The plain-PyTorch semantics of ``skinny_linear(x, weight, bias, silu_gate_up=True)``: the gate/up
    product in the activation dtype, then ``silu(gate) * up`` (two ops, each rounded)."""
    gate, up = skinny_linear_reference(x, weight, bias).chunk(2, dim=-1)
    return F.silu(gate) * up


def _two_launches(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`linear` (cuBLAS or the kernel, as measured), then `norm_rope.silu_mul_triton`: the path the fused
    epilogue replaces."""
    from .norm_rope import silu_mul_triton

    gate, up = linear(x, weight, bias).chunk(2, dim=-1)
    return silu_mul_triton(gate, up)


_CHOSEN_SILU: dict[tuple, dict | None] = {}     # shape key -> the winning fused variant (None: two launches)
_FASTEST_FUSED: dict[tuple, dict] = {}          # shape key -> the fastest fused variant (`KERNELS_ONLY`)


def silu_gate_up(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The MLP activation ``silu(x @ gate.T) * (x @ up.T)`` for x [..., K] and a fused gate/up weight
    [2I, K] (gate rows, then up rows) -> [..., I], on CUDA: the fastest of the kernel's variants with the
    activation in the epilogue (one launch, no [.., 2I] product in memory) and the two-launch path (the
    product, then the activation kernel), as measured on this device for this shape; the two launches
    while a graph is captured before the shape was measured, under torch.compile, and where the kernel
    does not apply."""
    x2 = x.reshape(-1, x.shape[-1])
    M = x2.shape[0]
    N, K = weight.shape
    if (not x.is_cuda or INTERPRETED or M == 0 or M > DISPATCH_MAX_ROWS or x.dtype != weight.dtype or N % 2
            or x.dtype not in (torch.bfloat16, torch.float16) or measured_choice.compiling()):
        return _two_launches(x, weight, bias)
    key = (x.device.index, M, N, K, x.dtype, bias is not None)
    if key not in _CHOSEN_SILU:
        if measured_choice.tracing():
            return _two_launches(x, weight, bias)
        linear(x2, weight, bias)                  # the two-launch path's own choice, made (and timed) first
        cands = candidates(M, N, K, x.device)
        names = ["two-launches"] + ["silu-epilogue-" + _name(c) for c in cands]
        fns = [lambda: _two_launches(x2, weight, bias)]
        fns += [lambda c=c: skinny_linear(x2, weight, bias, silu_gate_up=True, **c) for c in cands]

        def product(a: Tensor, w: Tensor, b: Tensor | None, v: dict | None) -> None:
            if v is None:
                _two_launches(a, w, b)
            else:
                skinny_linear(a, w, b, silu_gate_up=True, **v)

        _CHOSEN_SILU[key], _FASTEST_FUSED[key] = _measure("silu_gate_up", key, x2, weight, bias, cands, names,
                                                          fns, product)
    ov = _FASTEST_FUSED[key] if KERNELS_ONLY else _CHOSEN_SILU[key]
    if ov is None:
        return _two_launches(x, weight, bias)
    return skinny_linear(x2, weight, bias, silu_gate_up=True, **ov).view(*x.shape[:-1], N // 2)


def auto_linear(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    """A `pedagle_core.model.Linear` over `linear` (for `Drafter.fuse_projections`)."""
    def fn(x: Tensor) -> Tensor:
        return linear(x, weight, bias)
    return fn
