"""The drafter's elementwise-ops seam traces under torch.compile with a plain-class ops object (as the
Triton ops are): code traced by dynamo must not branch on the truthiness of a bound method. torch 2.11's
dynamo (vLLM 0.26's torch) raises "Data-dependent branching" on ``fn or reference`` (seen on an H200,
2026-12-02); torch 2.13 accepts it, so this test fails only on 2.11 with such code."""

from __future__ import annotations

import torch

import pedagle_core.model as M
from helpers_models import tiny_drafter, tiny_target


class PlainOps:
    """Not an ElementwiseOps subclass: a user-defined object, like kernels.norm_rope.TritonOps."""

    def rms_norm(self, *a):
        return M.rms_norm_reference(*a)

    def rope(self, q, k, cos, sin):
        return M.apply_rope(q, cos, sin), M.apply_rope(k, cos, sin)

    def silu_mul(self, gate, up):
        return M.silu_mul_reference(gate, up)

    def rope_cos_sin(self, positions, inv_freq, scale):
        return M.rope_cos_sin_reference(positions, inv_freq, scale)


def test_rope_table_and_mlp_trace_fullgraph_with_plain_ops() -> None:
    torch.manual_seed(0)
    d = tiny_drafter(tiny_target(dtype=torch.float32), dtype=torch.float32)
    ops = PlainOps()
    for m in d.modules():
        if hasattr(m, "ops"):
            m.ops = ops
    pos = torch.arange(7)
    torch._dynamo.reset()
    cos, sin = torch.compile(lambda p: d.rope(p), fullgraph=True, backend="eager")(pos)
    ref_cos, ref_sin = M.rope_cos_sin_reference(pos, d.inv_freq, d.rope_scale)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)
    mlp = next(m for m in d.modules() if isinstance(m, M.MLP))
    x = torch.randn(3, d.config.hidden_size)
    got = torch.compile(lambda t: mlp(t), fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(got, mlp(x))


def test_fused_projections_trace_fullgraph() -> None:
    """The backends fuse q/k/v and gate/up on CUDA (functions over concatenated weights, not modules): those
    products must trace without a graph break under the torch of every supported vLLM."""
    torch.manual_seed(0)
    d = tiny_drafter(tiny_target(dtype=torch.float32), dtype=torch.float32)
    mlp = next(m for m in d.modules() if isinstance(m, M.MLP))
    attn = next(m for m in d.modules() if isinstance(m, M.Attention))
    x = torch.randn(3, d.config.hidden_size)
    xa = torch.randn(3, attn.q_proj.in_features)
    want_mlp = mlp(x)
    want_qkv = torch.cat([attn.q_proj(xa), attn.k_proj(xa), attn.v_proj(xa)], -1)
    d.fuse_projections()
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(lambda t: mlp(t), fullgraph=True, backend="eager")(x), want_mlp)
    got_qkv = torch.compile(lambda t: attn.qkv_proj(t), fullgraph=True, backend="eager")(xa)
    torch.testing.assert_close(got_qkv, want_qkv)
