"""The drafter's Triton kernels under torch.compile (vLLM compiles the drafter with inductor, then captures
it in CUDA graphs).

* Each kernel is a custom op (``pedagle::rms_norm``, ``pedagle::fused_add_rms_norm``, ``pedagle::rope``,
  ``pedagle::top2``) with a fake implementation that torch's op checker accepts.
* A function calling them (and the whole drafter) traced by torch.compile ("aot_eager", and inductor's CPU
  backend) gives exactly the eager kernels' results, which the kernel tests compare with the references;
  on CPU the kernels run interpreted (tests/conftest.py sets TRITON_INTERPRET=1).
* The RMSNorm kernel compiles (Triton front end, no GPU needed) with ``eps`` typed float64, the signature
  inductor's launcher gave it on the H200 ("Cannot bitcast data-type of size 64 to data-type of size 32").
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pedagle_core import Drafter, DrafterConfig
from pedagle_core.draft import top2_reference
from pedagle_core.model import apply_rope, rms_norm_reference
from helpers_kernels import DEVICE, kernel_module

NR = kernel_module("norm_rope")
T2 = kernel_module("top2")
pytestmark = pytest.mark.skipif(NR is None or T2 is None, reason="Triton kernels cannot run here")

def _rand(*shape, dtype=torch.bfloat16, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_custom_ops_pass_torch_op_checks():
    x, r, w = _rand(4, 48), _rand(4, 48, seed=1), _rand(48, seed=2).abs() + 0.5
    q, k = _rand(3, 4, 16, seed=3), _rand(3, 2, 16, seed=4)
    cos, sin = torch.rand(3, 8).to(DEVICE), torch.rand(3, 8).to(DEVICE)
    # schema, fake (meta) implementation and dispatch consistency; no autograd (inference-only kernels)
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_static")
    torch.library.opcheck(torch.ops.pedagle.rms_norm.default, (x, w, 1e-6), test_utils=tests)
    torch.library.opcheck(torch.ops.pedagle.fused_add_rms_norm.default, (x, r, w, 1e-6), test_utils=tests)
    torch.library.opcheck(torch.ops.pedagle.rope.default, (q, k, cos, sin), test_utils=tests)
    torch.library.opcheck(torch.ops.pedagle.top2.default, (_rand(5, 300, seed=5),), test_utils=tests)


def _layer(x, res, w, q, k, cos, sin, logits):
    """One call of every kernel, as the drafter's compiled forward (and a compiled readout) makes them."""
    y = NR.TRITON_OPS.rms_norm(x, w, 1e-5)
    y2, res2 = NR.TRITON_OPS.rms_norm(y, w, 1e-5, res)
    q2, k2 = NR.TRITON_OPS.rope(q, k, cos, sin)
    idx, top = T2.top2(logits)
    return y, y2, res2, q2, k2, idx, top


@pytest.mark.parametrize("backend, dtype", [("aot_eager", torch.float32), ("aot_eager", torch.bfloat16),
                                            ("inductor", torch.bfloat16)])   # inductor's CPU compile is slow: once
def test_kernels_traced_by_torch_compile_equal_eager_and_reference(backend, dtype):
    T, H, hq, hk, D = 5, 64, 4, 2, 32
    x, res, w = _rand(T, H, dtype=dtype), _rand(T, H, dtype=dtype, seed=1), _rand(H, dtype=dtype, seed=2).abs() + .5
    q, k = _rand(T, hq, D, dtype=dtype, seed=3), _rand(T, hk, D, dtype=dtype, seed=4)
    pos = torch.arange(T, dtype=torch.float32)[:, None] * torch.rand(D // 2)[None, :]
    cos, sin = pos.cos().to(DEVICE), pos.sin().to(DEVICE)
    logits = _rand(T, 1000, dtype=dtype, seed=5)
    args = (x, res, w, q, k, cos, sin, logits)

    compiled = torch.compile(_layer, backend=backend, fullgraph=True)   # fullgraph: no graph break around them
    got = compiled(*args)
    eager = _layer(*args)
    for a, b in zip(got, eager):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    # and the compiled results against the plain-PyTorch references (the kernels' own tests give the bounds;
    # here: identical argmax/top-2, the norms and rope within one bfloat16 rounding)
    ridx, rtop = top2_reference(logits)
    assert torch.equal(got[5], ridx) and torch.equal(got[6], rtop)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], rms_norm_reference(x, w, 1e-5), **tol)
    y_ref = rms_norm_reference(got[0], w, 1e-5, res)
    torch.testing.assert_close(got[1], y_ref[0], **tol)
    assert torch.equal(got[2], y_ref[1])                               # x + residual, one rounding: exact
    torch.testing.assert_close(got[3], apply_rope(q, cos, sin), **tol)
    torch.testing.assert_close(got[4], apply_rope(k, cos, sin), **tol)


class _ContiguousAttention:
    """Causal attention over the call's own rows (an `AttentionProvider`, enough for a traced forward)."""

    def __call__(self, layer_idx, q, k, v, window):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                                             v.transpose(0, 1), is_causal=True)
        return o.transpose(0, 1)


@pytest.mark.parametrize("backend", ["aot_eager"])      # (inductor: on CUDA, bench/vllm_gpu_e2e.py's kernel phase)
def test_drafter_forward_compiled_with_triton_ops_equals_eager(backend):
    """The drafter's forward (all its RMSNorms and RoPEs through the Triton kernels, as vLLM runs it on CUDA)
    compiled without a graph break gives the eager forward's outputs bit for bit."""
    cfg = DrafterConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=300, draft_vocab_size=300,
                        target_hidden_size=64, mask_token_id=299)
    torch.manual_seed(0)
    d = Drafter(cfg).to(DEVICE).to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    d.use_ops(NR.TRITON_OPS)
    ids, pos = torch.randint(0, 300, (7,)).to(DEVICE), torch.arange(3, 10).to(DEVICE)
    hidden = _rand(7, 64, seed=9)
    attn = _ContiguousAttention()

    def fwd(ids, pos, hidden):
        return d(ids, pos, hidden, attn)

    with torch.no_grad():
        want = fwd(ids, pos, hidden)
        got = torch.compile(fwd, backend=backend, fullgraph=True)(ids, pos, hidden)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0) if backend == "aot_eager" else \
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)   # inductor may fuse the linears' epilogues


_FRONT_END = r"""
import sys
from triton._C.libtriton import ir
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from pedagle_core.kernels.norm_rope import _rms_norm_kernel

sig = {"x_ptr": "*bf16", "res_ptr": "*bf16", "w_ptr": "*bf16", "y_ptr": "*bf16", "res_out_ptr": "*bf16",
       "n_cols": "i32", "x_stride": "i32", "res_stride": "i32", "eps": "fp64", "HAS_RESIDUAL": "constexpr",
       "X_BF16": "constexpr", "OUT_BF16": "constexpr", "BLOCK": "constexpr", "PDL": "constexpr"}
target = GPUTarget("cuda", 90, 32)
be = CUDABackend(target)
opts = be.parse_options({})
for has_res in (True, False):
    ctx = ir.context()
    ir.load_dialects(ctx)
    be.load_dialects(ctx)
    src = ASTSource(_rms_norm_kernel, sig, {(9,): has_res, (10,): True, (11,): True, (12,): 128, (13,): False})
    mod = src.make_ir(target, opts, be.get_codegen_implementation(opts), be.get_module_map(), ctx)
    print("TTIR", "f64" in str(mod), "tt.bitcast" in str(mod))
"""


def test_rms_norm_kernel_compiles_with_float64_eps():
    """Triton's front end (AST -> TTIR for sm_90, no GPU needed; in a child without TRITON_INTERPRET) on the
    RMSNorm kernel with the signature inductor's launcher gave it in vLLM on the H200 (eps: fp64). Before
    the fix: CompilationError 'Cannot bitcast data-type of size 64 to data-type of size 32' in _round."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _FRONT_END], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # both variants built, with the float64 eps in the IR and the bfloat16 rounding's bitcasts
    assert out.stdout.split() == ["TTIR", "True", "True"] * 2, out.stdout
