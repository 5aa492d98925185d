#!/usr/bin/env python3
"""Drafter step latency at the shapes of published heads: one P-EAGLE parallel forward (4-layer head)
against K autoregressive EAGLE-3 forwards (1-layer head), through the core's real path.

What one timed "step" is: `draft_parallel` / `draft_autoregressive` of `pedagle_core.draft` on a decode
step whose target verified K+1 rows per request (bonus + K drafts) with random rejections: the input
expansion (Triton), fc over the aux hidden states, the drafter layers with the KV-cache attention of
`pedagle_core.attention` (impl 'auto': the Triton decode kernels on CUDA), lm_head over the draft vocab
(= the full target vocab), d2t, greedy readout. Random bf16 weights (std 0.02), random KV history of
`ctx` tokens per request. Each config is captured whole in one CUDA graph (static shapes, static
`max_query_len`/`max_context` hints), checked (graph replay on fresh random inputs == an eager run of the
same path, and == an eager run with the torch reference attention within bf16 tolerance), then timed
by replaying the graph (CUDA events per replay, median).

Floors per config (with the HBM bandwidth and bf16 matmul rate measured in the same process):
bytes = weights read by the step (each forward reads all of its layers' weights and lm_head; AR reads
them K times) + K/V read (every visible key of every request, per layer and forward) + K/V written;
flops = 2 * rows * params of every linear (lm_head on the sample rows only) + 4 * rows * heads * head_dim
* visible keys (attention). floor = max(bytes / bandwidth, flops / matmul rate).

Usage (GPU):   python3 bench/bench_drafter.py --out bench/results/drafter_h100.json --plot bench/results/drafter_h100.png
       (CPU):  python3 bench/bench_drafter.py --dry-run      (tiny shapes, eager, Triton interpreter)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

if "--dry-run" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")      # before any pedagle kernel module imports triton

from pedagle_core.attention import ContiguousKVCache  # noqa: E402
from pedagle_core.config import DrafterConfig  # noqa: E402
from pedagle_core.provenance import code_commit  # noqa: E402
from pedagle_core import draft as draft_mod  # noqa: E402
from pedagle_core.draft import StepInput, draft_autoregressive, draft_parallel  # noqa: E402
from pedagle_core.model import TORCH_OPS, Drafter  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from contextlib import contextmanager  # noqa: E402

# --------------------------------------------------------------------------------------------- paths
# Every config is timed on three paths, side by side in one process:
#   new   - the default: linears through `auto_linear` (skinny-GEMM kernels where measured faster than
#           cuBLAS, q/k/v and gate/up fused by `fuse_projections`), decode attention with its launch
#           variant timed per shape, Triton norm/RoPE/top-2, the MLP activation and the RoPE table;
#   today - the path before issue 13: every linear on cuBLAS (F.linear, unfused), the attention's launch
#           heuristic, Triton norm/RoPE/top-2 (`PreIssue13Ops`);
#   torch - plain PyTorch: F.linear, the torch attention (sync-free, static hints), the reference
#           norm/RoPE (TORCH_OPS) and the argmax/topk readout;
#   nopdl - the new path with programmatic dependent launch off (`pedagle_core.kernels.pdl`): what PDL
#           buys, measured beside it. (today and torch run without PDL too.)
#   prefetch - the new path with the skinny GEMMs' L2 weight prefetch before the PDL wait on ("auto":
#           the first wave of programs, half of L2; `skinny_gemm.PREFETCH_BYTES`), where the per-shape
#           timings cannot see it: it pays only behind a kernel that leaves HBM idle;
#   kernels - prefetch, with every product on pedagle's kernel (`skinny_gemm.KERNELS_ONLY`: its fastest
#           variant, never cuBLAS): a step of PDL-linked launches only.
PATHS = ("new", "today", "torch", "nopdl", "prefetch", "kernels")


class PreIssue13Ops:
    """The elementwise ops of the path before issue 13: Triton RMSNorm and RoPE only (the MLP activation
    and the RoPE table on the PyTorch references, as `Drafter` falls back for ops without those methods)."""

    def __init__(self) -> None:
        from pedagle_core.kernels import norm_rope

        self.rms_norm, self.rope = norm_rope.TRITON_OPS.rms_norm, norm_rope.TRITON_OPS.rope


@contextmanager
def use_path(drafter: Drafter, cache: ContiguousKVCache, path: str):
    from pedagle_core.kernels import decode_attention as DA, pdl, skinny_gemm as SG

    if path not in PATHS:
        raise ValueError(f"path {path!r}; expected one of {PATHS}")
    saved = (cache.impl, DA.TUNE, draft_mod.top2, pdl.ENABLED, SG.PREFETCH_BYTES, SG.KERNELS_ONLY)
    try:
        pdl.ENABLED = path in ("new", "prefetch", "kernels")
        if path in ("prefetch", "kernels"):
            SG.PREFETCH_BYTES = "auto"
        SG.KERNELS_ONLY = path == "kernels"
        if path in ("new", "nopdl", "prefetch", "kernels"):
            drafter.use_linear(None)
            drafter.fuse_projections()
        else:
            drafter.unfuse_projections()
            drafter.use_linear(F.linear)
            DA.TUNE = False
        if path == "today" and drafter.fc.weight.is_cuda:
            drafter.use_ops(PreIssue13Ops())
        if path == "torch":
            cache.impl = "torch"
            drafter.use_ops(TORCH_OPS)
            draft_mod.top2 = draft_mod.top2_reference
        yield
    finally:
        cache.impl, DA.TUNE, draft_mod.top2, pdl.ENABLED, SG.PREFETCH_BYTES, SG.KERNELS_ONLY = saved
        drafter.use_ops(None)
        drafter.use_linear(None)
        drafter.unfuse_projections()


# --------------------------------------------------------------------------------------------- shapes
# Published head shapes. intermediate_size: 4 x hidden (the brief's default; the published heads' MLP
# width was not available offline). GPT-OSS-120B's head has the same width (hidden 2880, 64 q heads,
# 8 kv heads, head_dim 64, vocab 201088) as GPT-OSS-20B's, so it is measured once and reported as an alias.
FAMILIES = {
    "gpt-oss-20b": dict(hidden_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                        vocab_size=201088, intermediate_size=4 * 2880, target_hidden_size=2880),
    "qwen3-coder-30b-a3b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                                vocab_size=151936, intermediate_size=4 * 2048, target_hidden_size=2048),
}
ALIASES = {"gpt-oss-120b": "gpt-oss-20b"}
DRY_FAMILIES = {
    "gpt-oss-20b": dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                        vocab_size=256, intermediate_size=128, target_hidden_size=64),
    "qwen3-coder-30b-a3b": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                vocab_size=192, intermediate_size=128, target_hidden_size=48),
}
PARALLEL_LAYERS, AR_LAYERS = 4, 1
MAX_K = 10

# Verification tolerances (bf16 on GPU). Hidden states: relative L2 error per forward. Draft ids must agree
# wherever the reference's top-1 / top-2 logit margin exceeds MARGIN_TOL (bf16 logits near 4-8 have an
# ulp of 1/32; ties and near-ties may flip between two attention implementations).
TOL_SAME_PATH = 1e-3
TOL_REF = {torch.bfloat16: 3e-2, torch.float16: 2e-2, torch.float32: 1e-4}
MARGIN_TOL = {torch.bfloat16: 0.125, torch.float16: 0.05, torch.float32: 1e-3}


def head_config(family: str, layers: int, dry: bool) -> DrafterConfig:
    base = dict((DRY_FAMILIES if dry else FAMILIES)[family])
    return DrafterConfig(num_hidden_layers=layers, mask_token_id=1, parallel_depth=MAX_K,
                         max_position_embeddings=32768, **base)


def param_counts(d: Drafter) -> dict:
    """Weight elements read per forward, by part (embedding rows are gathered, not counted here)."""
    lin = lambda m: sum(p.numel() for n, p in m.named_parameters())  # noqa: E731
    return {"fc": lin(d.fc), "layers": lin(d.layers), "lm_head": lin(d.lm_head), "embed": d.embed_tokens.weight.numel(),
            "norm": d.norm.weight.numel()}


def build_drafter(cfg: DrafterConfig, device: torch.device, dtype: torch.dtype, seed: int) -> Drafter:
    """Random weights (std 0.02; norms 1; mask_hidden std 1), built on the device, converted to ``dtype``;
    rope frequencies kept in float32."""
    with torch.device(device):
        d = Drafter(cfg)
    d = d.to(dtype).eval()
    d.inv_freq = d.inv_freq.float()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name == "mask_hidden":
                p.normal_(0.0, 1.0, generator=gen)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=gen)
    return d


# --------------------------------------------------------------------------------------------- inputs
class StepBuffers:
    """Static tensors of one decode step: B requests, K+1 verified rows each at positions ctx..ctx+K."""

    def __init__(self, B: int, K: int, ctx: int, cfg: DrafterConfig, device: torch.device, dtype: torch.dtype):
        self.B, self.K, self.ctx, self.cfg = B, K, ctx, cfg
        T = B * (K + 1)
        i64 = dict(dtype=torch.int64, device=device)
        self.step = StepInput(
            token_ids=torch.empty(T, **i64),
            positions=(ctx + torch.arange(K + 1, **i64)).repeat(B),
            query_start_loc=torch.arange(B + 1, **i64) * (K + 1),
            num_rejected=torch.empty(B, **i64),
            next_token_ids=torch.empty(B, **i64),
            aux_hidden=torch.empty(T, cfg.fc_input_size, dtype=dtype, device=device))

    def fill(self, gen: torch.Generator) -> None:
        s, V, dev = self.step, self.cfg.vocab_size, self.step.token_ids.device
        s.token_ids.copy_(torch.randint(0, V, s.token_ids.shape, generator=gen, device=dev))
        s.next_token_ids.copy_(torch.randint(0, V, s.next_token_ids.shape, generator=gen, device=dev))
        s.num_rejected.copy_(torch.randint(0, self.K + 1, s.num_rejected.shape, generator=gen, device=dev))
        s.aux_hidden.copy_(torch.randn(s.aux_hidden.shape, generator=gen, device=dev, dtype=torch.float32))


# --------------------------------------------------------------------------------------------- ceilings
def _event_times(fn, iters: int, warmup: int = 3, flush: torch.Tensor | None = None) -> list[float]:
    """Per-call times (ms): CUDA events on a GPU, else the host clock. flush: a buffer zeroed before each
    timed call (outside the timed region) so that small working sets do not stay in L2."""
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            if flush is not None:
                flush.zero_()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure_ceilings(device: torch.device, dry: bool) -> dict:
    """HBM bandwidth (device-to-device copy, bytes read + written) and bf16 matmul rate, random data."""
    n = (1 << 20) if dry else (1 << 29)                                     # float32 elements: 4 MiB / 2 GiB
    x = torch.randn(n, device=device)
    y = torch.empty_like(x)
    t_copy = statistics.median(_event_times(lambda: y.copy_(x), 5 if dry else 20))
    x = y = None  # noqa: F841 - frees the buffers
    m = 256 if dry else 8192
    dt = torch.float32 if device.type == "cpu" else torch.bfloat16
    a = torch.randn(m, m, device=device, dtype=dt)
    b = torch.randn(m, m, device=device, dtype=dt)
    t_mm = statistics.median(_event_times(lambda: a @ b, 5 if dry else 20))
    a = b = None  # noqa: F841 - frees the operands
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"copy_bytes": 2 * 4 * n, "copy_ms": t_copy, "hbm_GBps": 2 * 4 * n / t_copy / 1e6,
            "matmul_n": m, "matmul_dtype": str(dt), "matmul_ms": t_mm, "matmul_TFLOPs": 2 * m**3 / t_mm / 1e9}


def default_impl(device: torch.device) -> str:
    """The attention impl under test: 'auto' (Triton on CUDA); on the CPU the Triton kernels through the
    interpreter when TRITON_INTERPRET=1 (dry runs), else the torch path."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    return "auto"


# --------------------------------------------------------------------------------------------- floors
def step_cost(cfg: DrafterConfig, pc: dict, mode: str, B: int, K: int, ctx: int, n_valid: list[int],
              wbytes: int, kvbytes: int) -> dict:
    """Bytes and flops a step must move / do (see the module doc). n_valid: accepted rows per request."""
    L = cfg.num_hidden_layers
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, int(cfg.head_dim)
    kv_row = Hkv * D * 2 * kvbytes                                          # K and V of one key, one layer
    T = B * (K + 1)
    if mode == "parallel":
        forwards = [(T + B * (K - 1), B * K, [ctx + nv + K for nv in n_valid], T + B * (K - 1))]
        weight_elems = pc["fc"] + pc["layers"] + pc["lm_head"]
        fc_rows = T
    else:   # first forward over the expanded K+1 rows (K=1 expansion), then K-1 single-row forwards
        forwards = [(T, B, [ctx + nv + 1 for nv in n_valid], T)]
        forwards += [(B, B, [ctx + nv + 1 + i for nv in n_valid], B) for i in range(1, K)]
        weight_elems = pc["fc"] + K * (pc["layers"] + pc["lm_head"])
        fc_rows = T
    kv_read = sum(L * sum(keys) * kv_row for _, _, keys, _ in forwards)
    kv_write = sum(L * rows * kv_row for _, _, _, rows in forwards)
    flops = 2 * fc_rows * pc["fc"]
    for rows, sample_rows, keys, _ in forwards:
        flops += 2 * rows * pc["layers"] + 2 * sample_rows * pc["lm_head"]
        flops += L * 4 * Hq * D * (rows / B) * sum(keys)                    # ~ rows per request x its keys
    return {"weight_bytes": weight_elems * wbytes, "kv_read_bytes": kv_read, "kv_write_bytes": kv_write,
            "bytes": weight_elems * wbytes + kv_read + kv_write, "flops": flops, "forwards": len(forwards)}


def floors(cost: dict, ceil: dict) -> dict:
    bw = ceil["hbm_GBps"] * 1e6                                              # bytes per ms
    rate = ceil["matmul_TFLOPs"] * 1e9                                       # flops per ms
    t_w = cost["weight_bytes"] / bw
    t_b = cost["bytes"] / bw
    t_f = cost["flops"] / rate
    return {"weight_floor_ms": t_w, "bytes_floor_ms": t_b, "flops_floor_ms": t_f, "floor_ms": max(t_b, t_f)}


# --------------------------------------------------------------------------------------------- one config
def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def compare(got: tuple, ref: tuple, dtype: torch.dtype) -> dict:
    """got/ref: (token_ids [B,K], margins [B,K], [hidden of each forward])."""
    h_err = max((rel_err(g, r) for g, r in zip(got[2], ref[2])), default=0.0)
    same = got[0] == ref[0]
    confident = ref[1] > MARGIN_TOL[dtype]
    return {"hidden_rel_err": h_err, "ids_agree": float(same.float().mean()),
            "confident_ids_agree": bool(same[confident].all()), "n_confident": int(confident.sum()),
            "forwards": len(got[2]) == len(ref[2])}


@dataclass
class Bench:
    device: torch.device
    dtype: torch.dtype
    dry: bool
    ceilings: dict
    min_iters: int = 10
    max_iters: int = 60
    target_s: float = 0.15
    gen: torch.Generator = field(default=None)

    @property
    def graphs(self) -> bool:
        return self.device.type == "cuda"

    def run_config(self, drafter: Drafter, cache: ContiguousKVCache, mode: str, B: int, K: int, ctx: int,
                   verify: bool = True, impl: str | None = None, profile: bool = False, ops=None,
                   path: str = "new") -> dict:
        """One config on one of `PATHS`; ``impl`` overrides the attention implementation, ``ops`` the
        elementwise ops. Verification: the graph replay against an eager run of the same path, and
        against an eager run of the plain-PyTorch path."""
        with use_path(drafter, cache, path):
            rec = self._run_config(drafter, cache, mode, B, K, ctx, verify, impl, profile, ops)
        rec["path"] = path
        return rec

    def _run_config(self, drafter: Drafter, cache: ContiguousKVCache, mode: str, B: int, K: int, ctx: int,
                    verify: bool, impl: str | None, profile: bool, ops) -> dict:
        cfg = drafter.config
        bufs = StepBuffers(B, K, ctx, cfg, self.device, self.dtype)
        bufs.fill(self.gen)
        view = cache.for_requests(torch.arange(B, device=self.device),
                                  max_query_len=2 * K if mode == "parallel" else K + 1,
                                  max_context=ctx + 2 * K + 1)
        fn = draft_parallel if mode == "parallel" else draft_autoregressive
        sink: list[torch.Tensor] = []
        hook = drafter.register_forward_hook(lambda m, a, o: sink.append(o[0]))
        saved_impl = cache.impl
        if impl is not None:
            cache.impl = impl
        if ops is not None:
            drafter.use_ops(ops)
        rec: dict = {"mode": mode, "B": B, "K": K, "ctx": ctx, "impl": cache.impl,
                     "elementwise": type(ops).__name__ if ops is not None else "auto"}

        def run():
            return fn(drafter, bufs.step, K, view)

        def eager(reference: bool = False):
            """An eager run of this path, or (reference) of the plain-PyTorch path on the same inputs."""
            from pedagle_core.kernels import decode_attention as DA

            saved = (cache.impl, draft_mod.top2, DA.TUNE, drafter.linear,
                     [(l.self_attn.qkv_proj, l.mlp.gate_up_proj) for l in drafter.layers], drafter.norm.ops)
            if reference:
                cache.impl = "torch"
                draft_mod.top2 = draft_mod.top2_reference
                drafter.use_ops(TORCH_OPS)
                drafter.use_linear(F.linear)
                drafter.unfuse_projections()
            try:
                sink.clear()
                o = run()
                hs = list(sink)
            finally:
                if reference:
                    cache.impl, draft_mod.top2, DA.TUNE = saved[0], saved[1], saved[2]
                    drafter.use_ops(saved[5])
                    drafter.use_linear(saved[3])
                    for l, (qkv, gu) in zip(drafter.layers, saved[4]):
                        l.self_attn.qkv_proj, l.mlp.gate_up_proj = qkv, gu
            return (o.token_ids.clone(), o.margins.clone(), [h.clone() for h in hs])

        try:
            t0 = time.perf_counter()
            if self.graphs:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        run()
                torch.cuda.current_stream().wait_stream(s)
                torch.cuda.synchronize()
                sink.clear()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    out = run()
                g_hidden = list(sink)
                rec["capture_s"] = time.perf_counter() - t0
                step_fn = g.replay
            else:
                out, g_hidden = None, None
                step_fn = run
            if verify:
                bufs.fill(self.gen)                                         # fresh random inputs
                if self.graphs:
                    g.replay()
                    torch.cuda.synchronize()
                    got = (out.token_ids.clone(), out.margins.clone(), [h.clone() for h in g_hidden])
                    rec["check_graph_vs_eager"] = compare(got, eager(), self.dtype)
                else:
                    got = eager()
                rec["check_vs_torch_attention"] = compare(got, eager(reference=True), self.dtype)   # full torch path
                c1 = rec.get("check_graph_vs_eager")
                c2 = rec["check_vs_torch_attention"]
                rec["verified"] = bool((c1 is None or (c1["hidden_rel_err"] < TOL_SAME_PATH and c1["confident_ids_agree"]))
                                       and c2["hidden_rel_err"] < TOL_REF[self.dtype] and c2["confident_ids_agree"]
                                       and c2["forwards"])
            est = statistics.median(_event_times(step_fn, 2, warmup=1))
            iters = int(min(self.max_iters, max(self.min_iters, self.target_s * 1e3 / max(est, 1e-3))))
            times = _event_times(step_fn, iters, warmup=3)
            rec.update(median_ms=statistics.median(times), min_ms=min(times),
                       p90_ms=sorted(times)[int(0.9 * (len(times) - 1))], iters=iters, times_ms=[round(t, 5) for t in times])
            if profile:
                rec["profile"] = kernel_profile(step_fn)
            n_valid = (K - bufs.step.num_rejected).tolist()
            rec["n_valid"] = n_valid
            rec["wall_s"] = time.perf_counter() - t0
            return rec
        finally:
            hook.remove()
            cache.impl = saved_impl
            sink.clear()


def kernel_profile(fn, top: int = 12) -> dict:
    """Kernels of one call (a graph replay) under the torch profiler: count, summed kernel time (GPU busy)
    and the wall time, whose difference is launch gaps / idle; the top kernels by time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if torch.cuda.is_available() and not t:
            continue
        rows.append((e.key, int(e.count), float(t) / 1e3))
    rows.sort(key=lambda r: -r[2])
    seq = []
    try:            # every kernel of the replay in launch order (name, us): per-kernel time vs its byte floor
        from torch.autograd import DeviceType

        evs = [e for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA]
        evs.sort(key=lambda e: e.time_range.start)
        seq = [[e.name[:60], round(e.time_range.elapsed_us(), 2)] for e in evs]
    except Exception as e:                                                      # noqa: BLE001 - report only
        seq = [["error", repr(e)[:200]]]
    return {"n_kernels": sum(r[1] for r in rows), "busy_ms": sum(r[2] for r in rows), "wall_ms": wall,
            "top": [{"name": k[:90], "count": c, "ms": t} for k, c, t in rows[:top]], "sequence": seq}


# --------------------------------------------------------------------------------------------- attention micro
def attention_micro(bench: Bench, family: str, cfg: DrafterConfig, shapes: list[tuple[int, int, int]]) -> list[dict]:
    """The decode attention alone (write + attention of one layer), Triton variants vs the torch path, at
    (B, ctx, rows per request); KV floor = visible keys x K/V bytes / bandwidth; L2 flushed before each call."""
    from pedagle_core.attention import CacheAttention
    from pedagle_core.kernels import decode_attention as DA

    out = []
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, int(cfg.head_dim)
    flush = None if bench.dry else torch.empty(128 << 20, dtype=torch.uint8, device=bench.device)   # > L2
    for B, ctx, rows in shapes:
        cache = ContiguousKVCache(1, B, ctx + rows + 8, Hkv, D, dtype=bench.dtype, device=bench.device,
                                  impl=default_impl(bench.device))
        cache.k_store.normal_(generator=bench.gen), cache.v_store.normal_(generator=bench.gen)
        T = B * rows
        pos = (ctx + torch.arange(rows, device=bench.device)).repeat(B)
        req = torch.arange(B, device=bench.device).repeat_interleave(rows)
        slots = req * cache.max_seq_len + pos
        q = torch.randn(T, Hq, D, device=bench.device, dtype=bench.dtype)
        k = torch.randn(T, Hkv, D, device=bench.device, dtype=bench.dtype)
        v = torch.randn(T, Hkv, D, device=bench.device, dtype=bench.dtype)
        keys = B * (ctx + rows)                                              # visible keys, summed over requests
        kv_bytes = keys * Hkv * D * 2 * cache.k.element_size()
        floor_ms = kv_bytes / (bench.ceilings["hbm_GBps"] * 1e6)
        base = dict(family=family, B=B, ctx=ctx, rows=rows, Hq=Hq, Hkv=Hkv, D=D, kv_bytes=kv_bytes, kv_floor_ms=floor_ms)
        cache_rows = torch.arange(B, device=bench.device)
        ref = None
        for impl in ("torch", "triton"):
            attn = CacheAttention(cache, pos, slots, req, cache_rows, impl=impl, max_query_len=rows,
                                  max_context=ctx + rows)
            try:
                o = attn(0, q, k, v, None)
                if impl == "torch":
                    ref = o.clone()
                t = statistics.median(_event_times(lambda: attn(0, q, k, v, None), 2 if bench.dry else 30,
                                                    flush=flush))
                rec = dict(base, variant=impl, median_ms=t, vs_floor=t / floor_ms,
                           rel_err=0.0 if impl == "torch" else rel_err(o, ref))
            except Exception as e:                                             # noqa: BLE001 - record and go on
                rec = dict(base, variant=impl, error=repr(e)[:300])
            out.append(rec)
        # Triton variants: the kernels alone (write included), split count and tile shapes swept.
        table = DA.build_row_table(req, B, rows)
        bt = cache_rows.view(-1, 1)
        if bench.dry:
            variants = [dict(), dict(num_splits=3), dict(block_n=32, num_warps=4, num_stages=2)]
        else:
            variants = [dict()] + [dict(num_splits=s) for s in (1, 2, 4, 8, 16, 32)]
            variants += [dict(block_n=bn, num_warps=w, num_stages=st) for bn, w, st in
                         ((64, 4, 3), (64, 8, 3), (32, 4, 3), (32, 8, 2), (128, 8, 2), (64, 8, 4))]
        for ov in variants:
            try:
                def call(ov=ov):
                    DA.write_kv(k, v, slots, cache.k[0], cache.v[0])
                    return DA.decode_attention(q, cache.k[0], cache.v[0], pos, table, bt, cache.max_seq_len,
                                               cache.max_seq_len, None, max_context=ctx + rows, **ov)
                o = call()
                t = statistics.median(_event_times(call, 2 if bench.dry else 30, flush=flush))
                lc = DA.launch_config(T, B, rows, Hq, Hkv, D, ctx + rows, cache.k.element_size(), bench.device, **ov)
                out.append(dict(base, variant="triton:" + (",".join(f"{a}={b}" for a, b in ov.items()) or "auto"),
                                launch=lc, median_ms=t, vs_floor=t / floor_ms, rel_err=rel_err(o, ref)))
            except Exception as e:                                             # noqa: BLE001
                out.append(dict(base, variant="triton:" + str(ov), error=repr(e)[:300]))
    return out


# --------------------------------------------------------------------------------------------- driver
def source_digest() -> str:
    """sha256 over the core's Python sources (identifies the code when no git metadata travels)."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "pedagle_core").rglob("*.py")):
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    n = torch.cuda.get_device_name(device).lower()
    for tag in ("h200", "h100", "b200", "a100", "l40s", "l4"):
        if tag in n:
            return tag
    return n.replace(" ", "_")[:20]


def metadata(device: torch.device) -> dict:
    import triton

    return {"device": device_name(device), "device_tag": device_tag(device),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": code_commit() or "unknown", "source_digest": source_digest(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "sm_count": torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None}


@dataclass
class Plan:
    families: list[str]
    batches: list[int]
    ks: list[int]
    ctxs: list[int]
    modes: tuple[str, ...] = ("parallel", "autoregressive")
    ar_ks: list[int] | None = None          # K values of the autoregressive mode (None: ks)
    paths: tuple[str, ...] = PATHS
    pairs: list[tuple[int, int]] | None = None     # only these (B, ctx) pairs (None: every batch x ctx)
    verify: bool = True
    micro: bool = True
    baselines: bool = True


def default_plan(dry: bool) -> Plan:
    if dry:
        return Plan(families=list(DRY_FAMILIES), batches=[1, 2], ks=[1, 3], ctxs=[24, 40])
    return Plan(families=list(FAMILIES), batches=[1, 8, 64], ks=[1, 3, 5, 7, 10], ctxs=[512, 8192], ar_ks=[1, 3, 5, 7])


def run_sweep(plan: Plan, device: torch.device, dtype: torch.dtype, dry: bool, budget_s: float,
              log=print, seed: int = 0) -> dict:
    """Measure ceilings, then every (family, batch, ctx, K, mode) of the plan in priority order (batches
    <= 8 of every family first, then the larger ones), then the attention micro-benchmark and the
    torch-attention baselines; configs past ``budget_s`` are listed as skipped. Returns the JSON dict."""
    t_start = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    res: dict = {"meta": metadata(device), "dtype": str(dtype), "dry_run": dry, "plan": plan.__dict__,
                 "results": [], "paths": {}, "skipped": [], "attention_micro": [], "baselines": [], "heads": {}}
    log(f"[bench_drafter] {res['meta']['device']} torch {torch.__version__} triton {res['meta']['triton']} "
        f"commit {res['meta']['commit']} digest {res['meta']['source_digest']}")
    ceil = measure_ceilings(device, dry)
    res["ceilings"] = ceil
    log(f"[bench_drafter] ceilings: HBM {ceil['hbm_GBps']:.0f} GB/s (copy, read+write), "
        f"matmul {ceil['matmul_TFLOPs']:.0f} TFLOP/s ({ceil['matmul_dtype']} {ceil['matmul_n']}^3)")
    bench = Bench(device, dtype, dry, ceil, gen=gen)
    if dry:
        bench.min_iters, bench.max_iters = 1, 2

    # Heads and caches: allocated once per family, reused by every config.
    models: dict = {}
    max_b, max_ctx = max(plan.batches), max(plan.ctxs)
    for fam in plan.families:
        cfg_p, cfg_a = head_config(fam, PARALLEL_LAYERS, dry), head_config(fam, AR_LAYERS, dry)
        dp = build_drafter(cfg_p, device, dtype, seed)
        da = build_drafter(cfg_a, device, dtype, seed + 1)
        caches = {}
        for name, cfg in (("parallel", cfg_p), ("autoregressive", cfg_a)):
            c = ContiguousKVCache(cfg.num_hidden_layers, max_b, max_ctx + 2 * MAX_K + 8, cfg.num_key_value_heads,
                                  int(cfg.head_dim), dtype=dtype, device=device, impl=default_impl(device))
            c.k_store.normal_(generator=gen), c.v_store.normal_(generator=gen)
            caches[name] = c
        models[fam] = {"parallel": dp, "autoregressive": da, "caches": caches}
        res["heads"][fam] = {"parallel": {"config": cfg_p.to_dict(), "params": param_counts(dp)},
                             "autoregressive": {"config": cfg_a.to_dict(), "params": param_counts(da)}}
        log(f"[bench_drafter] {fam}: parallel head {sum(param_counts(dp).values()) / 1e6:.0f}M params, "
            f"AR head {sum(param_counts(da).values()) / 1e6:.0f}M params")
    for alias, fam in ALIASES.items():
        if fam in plan.families:
            res["heads"][alias] = {"alias_of": fam, "why": "same head shape (hidden 2880, 64/8 heads x 64, vocab 201088)"}

    small = [b for b in plan.batches if b <= 8]
    large = [b for b in plan.batches if b > 8]
    order = [(fam, b, ctx, K, mode) for batches in (small, large) for fam in plan.families for ctx in plan.ctxs
             for b in batches for K in plan.ks for mode in plan.modes
             if (mode == "parallel" or plan.ar_ks is None or K in plan.ar_ks)
             and (plan.pairs is None or (b, ctx) in plan.pairs)]
    wbytes = torch.finfo(dtype).bits // 8
    n_fail = 0
    for i, (fam, B, ctx, K, mode) in enumerate(order):
        if time.perf_counter() - t_start > budget_s:
            res["skipped"].append(dict(family=fam, B=B, ctx=ctx, K=K, mode=mode, why="time budget"))
            continue
        d, cache = models[fam][mode], models[fam]["caches"][mode]
        times = {}
        for path in plan.paths:                       # "new" first: verified against the plain-PyTorch path
            dest = res["results"] if path == "new" else res["paths"].setdefault(path, [])
            try:
                rec = bench.run_config(d, cache, mode, B, K, ctx, verify=plan.verify and path == "new", path=path)
            except Exception as e:                                              # noqa: BLE001 - record, go on
                n_fail += 1
                dest.append(dict(family=fam, mode=mode, B=B, K=K, ctx=ctx, path=path, error=repr(e)[:500]))
                log(f"[bench_drafter] ERROR {fam} {mode} B={B} K={K} ctx={ctx} path {path}: {e!r}"[:400])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                continue
            rec["family"] = fam
            rec["layers"] = d.config.num_hidden_layers
            cost = step_cost(d.config, res["heads"][fam][mode]["params"], mode, B, K, ctx, rec["n_valid"], wbytes, wbytes)
            rec.update(cost=cost, **floors(cost, ceil))
            rec["vs_floor"] = rec["median_ms"] / rec["floor_ms"]
            dest.append(rec)
            times[path] = rec["median_ms"]
            if path == "new":
                new = rec
        if "new" not in times:
            continue
        rec = new
        v = "ok" if rec.get("verified", True) else "VERIFY-FAIL"
        chk = rec.get("check_vs_torch_attention", {})
        others = "  ".join(f"{p} {times[p]:7.3f}" for p in plan.paths if p != "new" and p in times)
        log(f"[{i + 1}/{len(order)} {time.perf_counter() - t_start:5.0f}s] {fam:20s} {mode:14s} B={B:<3d} ctx={ctx:<5d} "
            f"K={K:<2d} new {rec['median_ms']:7.3f} ms  {others}  floor {rec['floor_ms']:7.3f}  x{rec['vs_floor']:5.2f}  {v} "
            f"(vs torch path: err {chk.get('hidden_rel_err', float('nan')):.1e}, ids {chk.get('ids_agree', float('nan')):.2f})")

    # Kernel profiles of a few graphs: how much of a step is kernels, how much is gaps between them.
    res["profiles"] = []
    if plan.baselines and device.type == "cuda":
        fam = plan.families[0]
        k7 = min(7, max(plan.ks))
        extra = [("parallel", 1, plan.ctxs[0], k7, "kernels")] if "kernels" in plan.paths else []
        for (mode, B, ctx, K, path) in [("parallel", 1, plan.ctxs[0], 1, "new"), ("parallel", 1, plan.ctxs[0], k7, "new"),
                                        ("autoregressive", 1, plan.ctxs[0], k7, "new"),
                                        ("parallel", min(8, max_b), max_ctx, k7, "new")] + extra:
            if time.perf_counter() - t_start > budget_s + 30:
                break
            try:
                rec = bench.run_config(models[fam][mode], models[fam]["caches"][mode], mode, B, K, ctx, verify=False,
                                       profile=True, path=path)
                p = rec["profile"]
                res["profiles"].append(dict(family=fam, mode=mode, B=B, ctx=ctx, K=K, path=path,
                                            median_ms=rec["median_ms"], **p))
                log(f"[profile] {fam} {mode} B={B} ctx={ctx} K={K} path {path}: {p['n_kernels']} kernels, busy {p['busy_ms']:.3f} ms "
                    f"of {rec['median_ms']:.3f} ms; top: " + ", ".join(f"{t['name'][:40]} {t['ms']:.3f}" for t in p["top"][:4]))
            except Exception as e:                                              # noqa: BLE001
                res["profiles"].append(dict(family=fam, mode=mode, B=B, ctx=ctx, K=K, error=repr(e)[:300]))
                log(f"[profile] ERROR {e!r}"[:300])

    # Baselines: the same graphs with the torch reference attention (sync-free path with static hints).
    if plan.baselines:
        fam = plan.families[0]
        for (B, ctx, K) in ((1, plan.ctxs[0], 1), (1, plan.ctxs[0], min(7, max(plan.ks))),
                            (min(8, max_b), max_ctx, min(7, max(plan.ks)))):
            if time.perf_counter() - t_start > budget_s:
                res["skipped"].append(dict(family=fam, B=B, ctx=ctx, K=K, mode="parallel", why="baseline: time budget"))
                continue
            for what, kw in (("torch attention", dict(impl="torch")), ("torch elementwise", dict(ops=TORCH_OPS)),
                             ("torch elementwise+readout", dict(ops=TORCH_OPS))):
                saved_top2 = draft_mod.top2
                if what.endswith("readout"):                       # the reference argmax + topk readout
                    draft_mod.top2 = draft_mod.top2_reference
                try:
                    rec = bench.run_config(models[fam]["parallel"], models[fam]["caches"]["parallel"], "parallel", B, K,
                                           ctx, verify=False, **kw)
                    rec["family"], rec["baseline"] = fam, what
                    res["baselines"].append(rec)
                    now = _get(res, fam, "parallel", B, ctx, K)
                    log(f"[baseline {what}] {fam} parallel B={B} ctx={ctx} K={K}: {rec['median_ms']:.3f} ms"
                        + (f" (default path {now['median_ms']:.3f} ms, x{rec['median_ms'] / now['median_ms']:.2f})" if now else ""))
                except Exception as e:                                          # noqa: BLE001
                    res["baselines"].append(dict(family=fam, B=B, ctx=ctx, K=K, baseline=what, error=repr(e)[:500]))
                    log(f"[baseline {what}] ERROR {e!r}"[:300])
                finally:
                    draft_mod.top2 = saved_top2
    del models
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if plan.micro:
        for fam in plan.families:
            if time.perf_counter() - t_start > budget_s + 45:
                res["skipped"].append(dict(family=fam, why="attention micro: time budget"))
                continue
            cfg = head_config(fam, 1, dry)
            shapes = [(2, 40, 6)] if dry else [(8, 8192, 14), (1, 8192, 14), (64, 8192, 20), (8, 512, 14)]
            try:
                res["attention_micro"] += attention_micro(bench, fam, cfg, shapes)
            except Exception as e:                                              # noqa: BLE001
                res["attention_micro"].append(dict(family=fam, error=repr(e)[:500]))
    from pedagle_core.kernels import measured_choice
    res["decisions"] = measured_choice.decisions()
    from pedagle_core.kernels import norm_rope
    res["fusions_failed"] = dict(norm_rope.FAILED)           # kernels that fell back to PyTorch (none expected)
    if norm_rope.FAILED:
        log(f"[bench_drafter] ERROR fused kernels fell back to PyTorch: {norm_rope.FAILED}")
    res["gemm_efficiency"] = gemm_efficiency(res)
    res["elapsed_s"] = time.perf_counter() - t_start
    res["n_errors"] = n_fail
    return res


# --------------------------------------------------------------------------------------------- reporting
def gemm_efficiency(res: dict) -> list[dict]:
    """Per timed GEMM shape (the dispatch's measurements, L2 flushed): cuBLAS and the best kernel variant
    against the shape's byte floor (weights + rows in + rows out, once, at the measured copy bandwidth)."""
    bw = res["ceilings"]["hbm_GBps"] * 1e6                                   # bytes per ms
    out = []
    for d in res.get("decisions", []):
        if d["kind"] != "skinny_gemm":
            continue
        M, N, K = d["key"][:3]
        esz = 2
        nbytes = (N * K + M * K + M * N) * esz
        tri = {k: v for k, v in d["times_ms"].items() if k != "cublas"}
        best = min(tri, key=tri.get) if tri else None
        floor_ms = nbytes / bw
        out.append(dict(M=M, N=N, K=K, chosen=d["chosen"], floor_ms=floor_ms, cublas_ms=d["times_ms"].get("cublas"),
                        best_kernel=best, best_kernel_ms=tri.get(best) if best else None,
                        cublas_x_floor=d["times_ms"].get("cublas", float("nan")) / floor_ms,
                        kernel_x_floor=(tri[best] / floor_ms) if best else None))
    return out


def gemm_table(res: dict, rows: tuple[int, ...] = (7, 8, 14, 16, 20, 56, 80, 112, 160)) -> str:
    eff = [e for e in res.get("gemm_efficiency", []) if e["M"] in rows]
    if not eff:
        return ""
    lines = ["GEMMs (dispatch timings, L2 flushed; x = time over the byte floor at the copy bandwidth):",
             f"  {'M':>4s} {'N':>7s} {'K':>6s} | {'cuBLAS':>16s} | {'best kernel':>16s} | chosen"]
    for e in sorted(eff, key=lambda e: (e["M"], e["N"], e["K"])):
        lines.append(f"  {e['M']:4d} {e['N']:7d} {e['K']:6d} | {e['cublas_ms']:7.4f} ms x{e['cublas_x_floor']:5.2f} | "
                     + (f"{e['best_kernel_ms']:7.4f} ms x{e['kernel_x_floor']:5.2f}" if e["best_kernel"] else "-")
                     + f" | {e['chosen']}")
    return "\n".join(lines)


def attention_table(res: dict) -> str:
    """The decode attention's launch-variant choices (each variant timed as a CUDA graph of back-to-back
    calls), against the K/V-read floor of the shape (every request reading max_context keys)."""
    bw = res["ceilings"]["hbm_GBps"] * 1e6                                   # bytes per ms
    lines = []
    for d in res.get("decisions", []):
        if d["kind"] != "decode_attention":
            continue
        q_shape, table_shape, hkv, _, max_ctx = d["key"][:5]
        q_shape, table_shape = [int(v) for v in str(q_shape).strip("()[]").split(",") if v.strip()], \
            [int(v) for v in str(table_shape).strip("()[]").split(",") if v.strip()]
        B, D = table_shape[0], q_shape[2]
        floor = B * int(max_ctx) * int(hkv) * D * 2 * 2 / bw
        t = d["times_ms"]
        auto = t.get("auto", float("nan"))
        best = t[d["chosen"]]
        lines.append(f"attn: T={q_shape[0]:<4d} B={B:<3d} rows<={table_shape[1]:<3d} heads {q_shape[1]}/{hkv} D={D} ctx<={max_ctx}: "
                     f"heuristic {auto * 1e3:6.1f} us, chosen {best * 1e3:6.1f} us ({d['chosen']}), KV floor {floor * 1e3:5.1f} us, "
                     f"chosen x{best / floor:4.2f}")
    return "\n".join(lines)


def _get_path(res: dict, path: str, fam: str, mode: str, B: int, ctx: int, K: int) -> dict | None:
    if path == "new":
        return _get(res, fam, mode, B, ctx, K)
    for r in res.get("paths", {}).get(path, []):
        if (r.get("family"), r.get("mode"), r.get("B"), r.get("ctx"), r.get("K")) == (fam, mode, B, ctx, K) and "median_ms" in r:
            return r
    return None


def paths_table(res: dict) -> str:
    """Per config: plain PyTorch, today's path, the new path, the floors, and the ratios (one run)."""
    lines = [f"{'family':20s} {'mode':5s} {'B':>3s} {'ctx':>5s} {'K':>2s} | {'torch':>7s} {'today':>7s} {'no-PDL':>7s} "
             f"{'new':>7s} | {'w-floor':>7s} {'floor':>7s} | new/w-fl today/w-fl new/floor new/today new/no-PDL"
             f" | {'prefch':>7s} {'kernels':>7s} pf/new kern/new"]
    lines.append("-" * len(lines[0]))
    slower = []
    for r in res["results"]:
        if "median_ms" not in r:
            continue
        key = (r["family"], r["mode"], r["B"], r["ctx"], r["K"])
        t = _get_path(res, "torch", *key)
        o = _get_path(res, "today", *key)
        npdl = _get_path(res, "nopdl", *key)
        pf, kn = _get_path(res, "prefetch", *key), _get_path(res, "kernels", *key)
        f = lambda x: f"{x['median_ms']:7.3f}" if x else "      -"  # noqa: E731
        lines.append(f"{key[0]:20s} {key[1][:5]:5s} {key[2]:3d} {key[3]:5d} {key[4]:2d} | {f(t)} {f(o)} {f(npdl)} {f(r)} | "
                     f"{r['weight_floor_ms']:7.3f} {r['floor_ms']:7.3f} | {r['median_ms'] / r['weight_floor_ms']:8.2f} "
                     + (f"{o['median_ms'] / r['weight_floor_ms']:10.2f} " if o else "         - ")
                     + f"{r['median_ms'] / r['floor_ms']:9.2f} " + (f"{r['median_ms'] / o['median_ms']:9.3f}" if o else "        -")
                     + (f" {r['median_ms'] / npdl['median_ms']:10.3f}" if npdl else "          -")
                     + f" | {f(pf)} {f(kn)}" + "".join(f" {x['median_ms'] / r['median_ms']:7.3f}" if x else "       -"
                                                       for x in (pf, kn)))
        if o and r["median_ms"] > 1.03 * o["median_ms"]:
            slower.append(f"{key}: new {r['median_ms']:.3f} ms vs today {o['median_ms']:.3f} ms")
    lines.append("(ms per draft step, CUDA-graph replay medians; pf/new, kern/new < 1: that path beat the default; w-floor = weights read once at the copy bandwidth; "
                 "floor = max(weights+KV bytes, flops))")
    lines.append(f"new path slower than today's by > 3% on {len(slower)} configs" + (": " + "; ".join(slower) if slower else ""))
    return "\n".join(lines)



def _get(res: dict, fam: str, mode: str, B: int, ctx: int, K: int) -> dict | None:
    for r in res["results"]:
        if (r.get("family"), r.get("mode"), r.get("B"), r.get("ctx"), r.get("K")) == (fam, mode, B, ctx, K) and "median_ms" in r:
            return r
    return None


def goals(res: dict) -> list[str]:
    """Issue 13's goals, evaluated where the sweep has the numbers: each as new path (today's path) from
    this one run."""
    out = []
    ks, ctxs, bs = res["plan"]["ks"], res["plan"]["ctxs"], res["plan"]["batches"]
    k_lo, k_hi, k7 = min(ks), max(ks), (7 if 7 in ks else max(ks))
    c_lo, c_hi, b8 = min(ctxs), max(ctxs), (8 if 8 in bs else max(bs))
    limit_w = {"gpt-oss-20b": 1.15, "qwen3-coder-30b-a3b": 1.25}

    def both(fn, fam, *key):
        n, o = _get_path(res, "new", fam, *key), _get_path(res, "today", fam, *key)
        return (fn(n) if n else None), (fn(o) if o else None)

    def fmt(v):
        return "-" if v is None else f"{v:.2f}"

    for fam in res["plan"]["families"]:
        lim = limit_w.get(fam, 1.15)
        n, o = both(lambda r: r["median_ms"] / r["weight_floor_ms"], fam, "parallel", 1, c_lo, k7)
        if n is not None:
            out.append(f"{fam} B=1 ctx={c_lo} K={k7}: parallel / weight-read floor = {fmt(n)} (today {fmt(o)}; "
                       f"goal <= {lim}) {'PASS' if n <= lim else 'miss'}")
        n, o = both(lambda r: r["median_ms"] / r["bytes_floor_ms"], fam, "parallel", b8, c_hi, k7)
        if n is not None:
            out.append(f"{fam} B={b8} ctx={c_hi} K={k7}: parallel / (weights+KV floor) = {fmt(n)} (today {fmt(o)}; "
                       f"goal <= 1.4) {'PASS' if n <= 1.4 else 'miss'}")
        for ctx in ctxs:
            rn = [_get_path(res, p, fam, "parallel", b8, ctx, k) for p in ("new", "today") for k in (k_hi, k_lo)]
            if rn[0] and rn[1]:
                r_new = rn[0]["median_ms"] / rn[1]["median_ms"]
                r_old = rn[2]["median_ms"] / rn[3]["median_ms"] if rn[2] and rn[3] else None
                out.append(f"{fam} B={b8} ctx={ctx}: parallel K={k_hi}/K={k_lo} = {r_new:.2f} (today {fmt(r_old)}; "
                           f"goal <= 1.15) {'PASS' if r_new <= 1.15 else 'miss'}")
        a, p = _get(res, fam, "autoregressive", 1, c_lo, k7), _get(res, fam, "parallel", 1, c_lo, k7)
        if a and p:
            out.append(f"{fam} B=1 ctx={c_lo} K={k7}: AR(1-layer, {k7} steps) / parallel = "
                       f"{a['median_ms'] / p['median_ms']:.2f} (new path both)")
    n_cmp = n_slow = 0
    for r in res["results"]:
        o = _get_path(res, "today", r.get("family"), r.get("mode"), r.get("B"), r.get("ctx"), r.get("K")) \
            if "median_ms" in r else None
        if o:
            n_cmp += 1
            n_slow += r["median_ms"] > 1.03 * o["median_ms"]
    out.append(f"never slower than today's path: {n_cmp - n_slow} of {n_cmp} configs within 3% or faster "
               f"{'PASS' if n_slow == 0 else 'miss'}")
    n_ver = sum(1 for r in res["results"] if r.get("verified") is True)
    out.append(f"drafts checked against the plain-PyTorch path before timing: {n_ver} of {len(res['results'])} verified")
    return out


def summary_table(res: dict) -> str:
    ks = res["plan"]["ks"]
    show = [k for k in (1, 3, 5, 7, 10) if k in ks] or ks
    lines = []
    hdr = f"{'family':20s} {'B':>3s} {'ctx':>5s} | " + " ".join(f"P K={k:<2d}" for k in show) + " | " + \
          " ".join(f"AR K={k:<2d}" for k in show) + " | P7/flr  AR7/P7"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    k7 = 7 if 7 in ks else max(ks)
    for fam in res["plan"]["families"]:
        for ctx in res["plan"]["ctxs"]:
            for B in res["plan"]["batches"]:
                ps = [_get(res, fam, "parallel", B, ctx, k) for k in show]
                ars = [_get(res, fam, "autoregressive", B, ctx, k) for k in show]
                if not any(ps) and not any(ars):
                    continue
                f = lambda r: f"{r['median_ms']:6.3f}" if r else "     -"  # noqa: E731
                p7, a7 = _get(res, fam, "parallel", B, ctx, k7), _get(res, fam, "autoregressive", B, ctx, k7)
                lines.append(f"{fam:20s} {B:3d} {ctx:5d} | " + " ".join(f(r) for r in ps) + " | " +
                             " ".join(f"{f(r):>7s}" for r in ars) + " | " +
                             (f"{p7['vs_floor']:5.2f}  " if p7 else "    -  ") +
                             (f"{a7['median_ms'] / p7['median_ms']:5.2f}" if p7 and a7 else "    -"))
    lines.append("(ms per draft step: CUDA-graph replay median on a GPU, eager on the CPU; P = P-EAGLE 4-layer parallel, AR = EAGLE-3 1-layer "
                 "x K; P7/flr = parallel K=7 over max(bytes, flops) floor)")
    for alias, fam in ALIASES.items():
        if fam in res["plan"]["families"]:
            lines.append(f"{alias}: same head shape as {fam} (reported as its alias)")
    return "\n".join(lines)


def micro_table(res: dict) -> str:
    """Per shape: the torch path, the Triton path as wired (CacheAttention), and the fastest variant."""
    rows = [r for r in res["attention_micro"] if "median_ms" in r]
    if not rows:
        return ""
    lines = ["attention, one layer (write + attend; L2 flushed):   torch   | triton (as wired) | best triton variant"]
    shapes = sorted({(r["family"], r["B"], r["ctx"], r["rows"]) for r in rows}, key=lambda x: (x[0], x[2], x[1]))
    for fam, B, ctx, nr in shapes:
        rs = [r for r in rows if (r["family"], r["B"], r["ctx"], r["rows"]) == (fam, B, ctx, nr)]
        by = {r["variant"]: r for r in rs}
        variants = [r for r in rs if r["variant"].startswith("triton:")]
        best = min(variants, key=lambda r: r["median_ms"]) if variants else None
        f = lambda r: f"{r['median_ms']:7.4f} ms x{r['vs_floor']:5.2f}" if r else "      -          "  # noqa: E731
        lines.append(f"  {fam:20s} B={B:<3d} ctx={ctx:<5d} rows={nr:<3d} | {f(by.get('torch'))} | {f(by.get('triton'))} | "
                     + (f"{f(best)} {best['variant'][7:]} err {best['rel_err']:.0e}" if best else "-"))
    lines.append("  (x = time over the K/V-read floor at the measured bandwidth; every variant in the JSON)")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    """One panel per measured (family, batch, context): ms per step (log scale) against K for the new path and
    every other path of the run (parallel mode; the autoregressive head dashed), with the bytes floor dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = sorted({(r["family"], r["B"], r["ctx"]) for r in res["results"] if "median_ms" in r},
                    key=lambda p: (res["plan"]["families"].index(p[0]) if p[0] in res["plan"]["families"] else 0,
                                   p[1], p[2]))
    if not panels:
        raise ValueError("nothing measured to plot")
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    series = [("new", "parallel", "-o", "new (default)")] + [
        (p, "parallel", "-", p) for p in res["plan"].get("paths", ()) if p != "new"] + [
        ("new", "autoregressive", "--s", "EAGLE-3 1L x K (new)")]
    for ax, (fam, B, ctx) in zip(axes.flat, panels):
        floor = None
        for name, mode, style, label in series:
            pts = sorted((r["K"], r["median_ms"], r["floor_ms"]) for r in
                         (res["results"] if name == "new" else res.get("paths", {}).get(name, []))
                         if r.get("family") == fam and r.get("mode") == mode and r.get("B") == B
                         and r.get("ctx") == ctx and "median_ms" in r)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, lw=1.5 if name == "new" else 0.9,
                        label=label)
                if mode == "parallel" and floor is None:
                    floor = pts
        if floor:
            ax.plot([p[0] for p in floor], [p[2] for p in floor], ":", color="black", lw=1, label="floor")
        ax.set_title(f"{fam} B={B} ctx={ctx}", fontsize=8)
        ax.set_xlabel("K", fontsize=7)
        ax.set_ylabel("ms / draft step (log)", fontsize=7)
        ax.set_yscale("log")                       # the plain-PyTorch path is 10x the others at long contexts
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(matplotlib.ticker.FormatStrFormatter("%.2g"))
        ax.tick_params(which="both", labelsize=6)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=5.5)
    fig.suptitle(f"drafter step latency, {res['meta']['device']} ({res['meta']['date']}, {res['meta']['commit'][:10]})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes (CPU: eager, Triton interpreter)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/drafter_<device>.json)")
    ap.add_argument("--plot", default=None, help="PNG path (default beside --out)")
    ap.add_argument("--families", default=None, help="comma list (default all measured families)")
    ap.add_argument("--batches", default=None)
    ap.add_argument("--ks", default=None)
    ap.add_argument("--ctxs", default=None)
    ap.add_argument("--pairs", default=None, help="only these B:ctx pairs, e.g. 1:512,8:8192")
    ap.add_argument("--modes", default=None, help="comma list of parallel,autoregressive")
    ap.add_argument("--paths", default=None, help=f"comma list of {','.join(PATHS)} (default all; 'new' always "
                    "runs, first)")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip sweep configs after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.dry_run:
        ap.error("no CUDA device: use --dry-run (tiny shapes on the CPU)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    plan = default_plan(args.dry_run)
    if args.families:
        plan.families = args.families.split(",")
    for name in ("batches", "ks", "ctxs"):
        if getattr(args, name):
            setattr(plan, name, [int(x) for x in getattr(args, name).split(",")])
    plan.verify, plan.micro = not args.no_verify, not args.no_micro
    if args.pairs:
        plan.pairs = [tuple(int(v) for v in p.split(":")) for p in args.pairs.split(",")]
    if args.modes:
        plan.modes = tuple(args.modes.split(","))
    if args.paths:
        bad = [p for p in args.paths.split(",") if p not in PATHS]
        if bad:
            ap.error(f"--paths: unknown {bad}; expected some of {','.join(PATHS)}")
        plan.paths = ("new",) + tuple(p for p in args.paths.split(",") if p != "new")
    tag = device_tag(device) + ("_dry" if args.dry_run else "")
    out = args.out or str(ROOT / "bench" / "results" / f"drafter_{tag}.json")
    png = args.plot or str(Path(out).with_suffix(".png"))

    res = run_sweep(plan, device, dtype, args.dry_run, args.budget_s, seed=args.seed)
    res["goals"] = goals(res)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1, default=str))
    try:
        plot(res, png)
        res["plot"] = png
    except Exception as e:                                                      # noqa: BLE001
        print(f"[bench_drafter] plot failed: {e!r}")
    n_bad = sum(1 for r in res["results"] if r.get("verified") is False)
    print()
    print(gemm_table(res))
    print(micro_table(res))
    print(attention_table(res))
    for p in res.get("profiles", []):
        if "n_kernels" in p:
            print(f"profile: {p['family']} {p['mode']} B={p['B']} ctx={p['ctx']} K={p['K']} path {p.get('path', 'new')}: "
                  f"{p['n_kernels']} kernels, "
                  f"kernel time {p['busy_ms']:.3f} ms of {p['median_ms']:.3f} ms per replay")
    print()
    for g in res["goals"]:
        print("goal:", g)
    print(f"[bench_drafter] {len(res['results'])} configs, {n_bad} failed verification, {res['n_errors']} errors, "
          f"{len(res['skipped'])} skipped, {res['elapsed_s']:.0f} s; JSON {out}; plot {png}")
    print(summary_table(res))
    print()
    print(paths_table(res))
    return res


if __name__ == "__main__":
    main()
