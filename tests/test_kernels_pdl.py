"""Programmatic dependent launch (pedagle_core/kernels/pdl.py): the switch, and every kernel of the drafter
step compiled for sm_90 with PDL on (Triton's compiler, in a child without TRITON_INTERPRET; no GPU needed).
The interpreter runs the kernels with PDL off, so this is where the PDL form of each kernel is built in CI:
each must wait for its predecessor (griddepcontrol.wait) and release its successor
(griddepcontrol.launch_dependents); the skinny GEMM must ask L2 for its first weight lines before waiting.
On the GPU the kernel tests run with PDL on (the default on Hopper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pedagle_core.kernels import pdl

_CHILD = r"""
import json, sys
sys.path.insert(0, ".")
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pedagle_core.kernels import decode_attention as DA, expand_triton as ET, norm_rope as NR, skinny_gemm as SG, top2 as T2

def build(fn, const, types=None, floats=(), pdl=True, warps=4):
    types = types or {}
    sig = {}
    for n in fn.arg_names:
        sig[n] = ("constexpr" if n in const else types.get(n) or ("*bf16" if n.endswith("_ptr") else
                  "fp32" if n in floats else "i32"))
    const = dict(const, PDL=pdl)
    sig["PDL"] = "constexpr"
    k = triton.compile(ASTSource(fn, sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, launch_pdl=pdl))
    return k.asm["ptx"]

out = {}
skinny = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT=True, EVEN_K=False, HAS_BIAS=True, IEEE=False, UPCAST=False,
              SILU_GATE_UP=True, ACCURATE=True, Y_BF16=True, PREFETCH_LINES=8, LINE=64)
st = dict(ws_ptr="*fp32", cnt_ptr="*i32")
out["skinny_gemm(silu epilogue, split, prefetch)"] = build(SG._skinny_kernel, skinny, st)
out["skinny_gemm(no PDL)"] = build(SG._skinny_kernel, dict(skinny, PREFETCH_LINES=0, SILU_GATE_UP=False), st, pdl=False)
da = dict(G=8, G_PAD=8, ROWS=2, HEAD_DIM=64, D_PAD=64, BLOCK_N=64, HAS_WINDOW=False, PAGED=False, SPLIT=True,
          IEEE=False, UPCAST=False, INTERIOR=False)
out["decode_attention(split, merged in kernel)"] = build(DA._decode_attn_kernel, da, dict(
    pos_ptr="*i64", table_ptr="*i32", bt_ptr="*i64", po_ptr="*fp32", plse_ptr="*fp32", cnt_ptr="*i32"), ("qk_scale",))
out["row_table"] = build(DA._row_table_kernel, dict(BLOCK=128), dict(req_ptr="*i64", table_ptr="*i32"))
out["write_kv"] = build(DA._write_kv_kernel, dict(ROW=512, BLOCK=512), dict(slot_ptr="*i64"))
out["rms_norm(residual)"] = build(NR._rms_norm_kernel, dict(HAS_RESIDUAL=True, X_BF16=True, OUT_BF16=True, BLOCK=4096),
                                  floats=("eps",), warps=16)
out["rope(write kv)"] = build(NR._rope_kernel, dict(BF16=True, HALF=32, BLOCK=32, BLOCK_H=64, WRITE_KV=True),
                              dict(cos_ptr="*fp32", sin_ptr="*fp32", slot_ptr="*i64"))
out["embed_norm_cat"] = build(NR._embed_norm_cat_kernel, dict(X_BF16=True, OUT_BF16=True, BLOCK=4096),
                              dict(ids_ptr="*i64"), floats=("eps",), warps=16)
out["silu_mul"] = build(NR._silu_mul_kernel, dict(BF16=True, ACCURATE=True, BLOCK=2048))
out["rope_cos_sin"] = build(NR._rope_cos_sin_kernel, dict(HALF=32, ACCURATE=True, BLOCK_T=64, BLOCK_D=32),
                            dict(pos_ptr="*i64", inv_ptr="*fp32", cos_ptr="*fp32", sin_ptr="*fp32"), ("scale",))
out["top2_chunk"] = build(T2._top2_chunk_kernel, dict(CHUNK=4096, BLOCK=1024),
                          dict(m1_ptr="*fp32", i1_ptr="*i32", m2_ptr="*fp32"))
out["top2_merge(readout)"] = build(T2._top2_merge_kernel, dict(BLOCK_C=64, READOUT=True),
                                  dict(m1_ptr="*fp32", i1_ptr="*i32", m2_ptr="*fp32", top_ptr="*fp32", idx_ptr="*i64",
                                       d2t_ptr="*i64", tgt_ptr="*i64", margin_ptr="*fp32"), warps=1)
for name, k in ET.compile_for_target(arch=90, pdl_on=True).items():
    out[name] = k.asm["ptx"]
print(json.dumps({n: dict(wait="griddepcontrol.wait" in p, release="griddepcontrol.launch_dependents" in p,
                          prefetch="prefetch.global.L2::evict_last" in p) for n, p in out.items()}))
"""


def test_switch_is_off_on_the_cpu_and_when_disabled(monkeypatch):
    assert not pdl.enabled(torch.device("cpu")) and pdl.launch_kwargs(torch.device("cpu")) == {}
    monkeypatch.setattr(pdl, "ENABLED", False)
    assert not pdl.enabled(torch.device("cuda", 0)) and pdl.launch_kwargs(torch.device("cuda", 0)) == {}


def test_every_step_kernel_builds_for_sm90_with_pdl():
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got) >= 15, sorted(got)
    for name, flags in got.items():
        if name == "skinny_gemm(no PDL)":
            assert flags == dict(wait=False, release=False, prefetch=False), flags
        else:
            assert flags["wait"] and flags["release"], (name, flags)
    assert got["skinny_gemm(silu epilogue, split, prefetch)"]["prefetch"]


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9),
                    reason="programmatic dependent launch needs a Hopper (sm_90) or newer GPU")
def test_draft_step_with_pdl_gives_the_bits_of_the_step_without():
    """A P-EAGLE step (fused projections, MLP activation in the gate/up epilogue, RoPE + cache write, split attention merged
    in-kernel, top-2) captured in a CUDA graph with PDL on, replayed on fresh inputs, equals the eager step
    with PDL off bit for bit (every kernel is deterministic; a kernel reading before its wait would not be)."""
    from pedagle_core.attention import ContiguousKVCache
    from pedagle_core.config import DrafterConfig
    from pedagle_core.draft import StepInput, draft_parallel
    from pedagle_core.model import Drafter

    assert pdl.enabled(torch.device("cuda"))
    cfg = DrafterConfig(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=4,
                        head_dim=64, intermediate_size=2816, vocab_size=32000, mask_token_id=1, parallel_depth=8)
    torch.manual_seed(0)
    d = Drafter(cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.02)
    d = d.to(torch.bfloat16).cuda().eval()
    d.fuse_projections()
    B, K, ctx, S = 2, 7, 600, 1024
    cache = ContiguousKVCache(2, B, S, 4, 64, dtype=torch.bfloat16, device="cuda", impl="triton")
    cache.k.normal_(), cache.v.normal_()
    view = cache.for_requests(torch.arange(B, device="cuda"), max_query_len=2 * K, max_context=ctx + 2 * K)
    gen = torch.Generator().manual_seed(3)

    def step() -> StepInput:
        T = B * (K + 1)
        return StepInput(
            token_ids=torch.randint(0, cfg.vocab_size, (T,), generator=gen).cuda(),
            positions=(ctx + torch.arange(K + 1)).repeat(B).cuda(),
            query_start_loc=(torch.arange(B + 1) * (K + 1)).cuda(),
            num_rejected=torch.randint(0, K + 1, (B,), generator=gen).cuda(),
            next_token_ids=torch.randint(0, cfg.vocab_size, (B,), generator=gen).cuda(),
            aux_hidden=torch.randn(T, cfg.fc_input_size, generator=gen).cuda().bfloat16())

    static = step()
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):                                   # the measured choices are made here
                draft_parallel(d, static, K, view)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = draft_parallel(d, static, K, view)
        for _ in range(4):
            fresh = step()
            for name in ("token_ids", "positions", "query_start_loc", "num_rejected", "next_token_ids", "aux_hidden"):
                getattr(static, name).copy_(getattr(fresh, name))
            g.replay()
            torch.cuda.synchronize()
            got = (out.token_ids.clone(), out.margins.clone())
            pdl.ENABLED = False
            try:
                ref = draft_parallel(d, fresh, K, view)
            finally:
                pdl.ENABLED = True
            assert torch.equal(got[0], ref.token_ids) and torch.equal(got[1], ref.margins)


def test_kernels_and_shared_helpers_defined_in_one_mode():
    """Kernels call ``@triton.jit`` helpers of another module (jit_math); an interpreted kernel cannot call a
    compiled helper ("Cannot call @triton.jit'd outside of the scope of a kernel", vLLM CI at e5d0d7b, where a
    test unset TRITON_INTERPRET while a kernel module was first imported). tests/conftest.py defines every
    kernel up front: all of them, helpers included, are of one kind."""
    pytest.importorskip("triton")
    import importlib
    import pkgutil

    import triton

    import pedagle_core.kernels as pkg

    kinds = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, triton.runtime.jit.KernelInterface):
                kinds[f"{info.name}.{name}"] = type(obj).__name__
    assert "jit_math.gdc_wait_and_release" in kinds and "expand_triton._expand_metadata_kernel" in kinds, kinds
    assert len(set(kinds.values())) == 1, kinds
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1" and not torch.cuda.is_available()
    assert (set(kinds.values()) == {"InterpretedFunction"}) == interpreted, kinds
