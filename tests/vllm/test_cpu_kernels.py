"""The vLLM backend's CPU kernels for the drafter (backends/vllm/cpu.py): the same math as pedagle's
reference (RoPE bit for bit; the GEMMs up to rounding), the same parameters."""

from __future__ import annotations

import pytest
import torch

from pedagle_core import Drafter, DrafterConfig
from pedagle_core.attention import ContiguousKVCache
from pedagle_core.draft import StepInput, draft_parallel
from pedagle_core.model import apply_rope

pytestmark = pytest.mark.vllm_hooks      # vLLM's CPU GEMM dispatch: on every supported vLLM in CI


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,hq,hk", [(1, 4, 2), (7, 8, 1), (33, 4, 4)])
def test_rope_is_the_reference_bit_for_bit(dtype, T, hq, hk):
    from pedagle_backends.vllm.cpu import VLLM_CPU_OPS

    g = torch.Generator().manual_seed(T)
    q, k = torch.randn(T, hq, 64, generator=g).to(dtype), torch.randn(T, hk, 64, generator=g).to(dtype)
    ang = torch.rand(T, 32, generator=g) * 100
    cos, sin = ang.cos(), ang.sin()
    q2, k2 = VLLM_CPU_OPS.rope(q, k, cos, sin)
    assert torch.equal(q2, apply_rope(q, cos, sin)) and torch.equal(k2, apply_rope(k, cos, sin))
    assert q2.dtype == dtype and q2.shape == q.shape and k2.shape == k.shape


def _drafter(dtype: torch.dtype) -> Drafter:
    torch.manual_seed(0)
    cfg = DrafterConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, vocab_size=40, target_hidden_size=32, mask_token_id=39,
                        parallel_depth=4, draft_vocab_size=24)
    d = Drafter(cfg)
    with torch.no_grad():
        for n, p in d.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.3)
    return d.to(dtype).eval()


def _draft(d: Drafter, dtype: torch.dtype):
    T = 9
    g = torch.Generator().manual_seed(3)
    step = StepInput(torch.randint(0, 39, (T,), generator=g), torch.arange(T), torch.tensor([0, T]), None,
                     torch.tensor([5]), torch.randn(T, 96, generator=g).to(dtype))
    cache = ContiguousKVCache(2, 1, 32, 2, 16, dtype=dtype).for_requests(torch.tensor([0]))
    with torch.no_grad():
        return draft_parallel(d, step, 4, cache, temperature=1.0, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drafter_on_vllm_cpu_kernels(dtype):
    from pedagle_backends.vllm.cpu import VLLM_CPU_OPS, VllmCpuLinear, use_vllm_cpu_kernels

    d = _drafter(dtype)
    params = {n: p for n, p in d.named_parameters()}
    want = _draft(d, dtype)
    use_vllm_cpu_kernels(d)
    assert {n: p for n, p in d.named_parameters()} == params          # the same parameter objects, same names
    assert isinstance(d.fc, VllmCpuLinear) and isinstance(d.lm_head, VllmCpuLinear)
    assert all(isinstance(layer.self_attn.o_proj, VllmCpuLinear) and type(layer.self_attn.q_proj) is torch.nn.Linear
               and layer.self_attn.qkv_proj is not None and layer.mlp.gate_up_proj is not None for layer in d.layers)
    assert all(m.ops is VLLM_CPU_OPS for m in d.modules() if hasattr(m, "ops"))
    got = _draft(d, dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.02)
    torch.testing.assert_close(got.probs.float(), want.probs.float(), **tol)


@pytest.mark.parametrize("on_cpu", [True, False])
def test_platform_linears_fuse_qkv_and_gate_up_on_every_platform(monkeypatch, on_cpu):
    """vLLM computes its own drafters' q/k/v and gate/up with one product each; pedagle's drafter does the
    same on both platforms (on CUDA with pedagle's default linear, here exercised on the CPU: torch's GEMM)."""
    import pedagle_backends.vllm.model as vm
    from pedagle_backends.vllm.cpu import VllmCpuLinear

    monkeypatch.setattr(vm, "_on_cpu", lambda: on_cpu)
    d = _drafter(torch.float32)
    want = _draft(d, torch.float32)
    vm.use_platform_linears(d)
    assert all(layer.self_attn.qkv_proj is not None and layer.mlp.gate_up_proj is not None for layer in d.layers)
    assert isinstance(d.lm_head, VllmCpuLinear) is on_cpu             # vLLM's CPU GEMM on the CPU build only
    torch.testing.assert_close(_draft(d, torch.float32).probs, want.probs, rtol=1e-4, atol=1e-5)
