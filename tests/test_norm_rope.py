"""Triton RMSNorm / RoPE kernels (pedagle_core/kernels/norm_rope.py) against the PyTorch references in
pedagle_core/model.py; on CPU interpreted (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA compiled.
Also: the automatic choice of implementation and the cached fc(mask_hidden)."""

from __future__ import annotations

import pytest
import torch

from pedagle_core import Drafter, DrafterConfig
from pedagle_core.model import TORCH_OPS, apply_rope, auto_ops, rms_norm_reference
from helpers_kernels import DEVICE, kernel_module

NR = kernel_module("norm_rope")
needs_triton = pytest.mark.skipif(NR is None, reason="Triton norm/rope kernels cannot run here")


def _ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference in units of the dtype's spacing at b."""
    a, b = a.double(), b.double()
    eps = torch.finfo(a.dtype if a.dtype.is_floating_point else torch.float32).eps
    spacing = b.abs().clamp_min(1e-30) * torch.finfo(torch.bfloat16).eps
    return float(((a - b).abs() / spacing).max()) if eps else 0.0


@needs_triton
@pytest.mark.parametrize("H", [16, 37, 256])
@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                          (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(H, dtype, wdtype, with_residual):
    g = torch.Generator().manual_seed(H)
    x = (torch.randn(5, 3, H, generator=g) * 3).to(dtype).to(DEVICE)
    w = (torch.rand(H, generator=g) + 0.5).to(wdtype).to(DEVICE)
    r = (torch.randn(5, 3, H, generator=g)).to(dtype).to(DEVICE) if with_residual else None
    got = NR.rms_norm_triton(x, w, 1e-6, r)
    want = rms_norm_reference(x, w, 1e-6, r)
    got, want = (got, want) if with_residual else ((got,), (want,))
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:   # float32 sums in another order: at most one bf16 rounding step apart, almost always equal
            assert _ulps(a, b) <= 1.01
            assert (a == b).float().mean() > 0.97
    if with_residual:                                       # the new residual is exactly x + r, rounded
        assert torch.equal(got[1], (x.float() + r.float()).to(dtype))


@needs_triton
def test_rms_norm_with_a_float32_residual_under_bf16_activations():
    """Autocast (training, evaluation) keeps the residual stream in float32 while x comes out of a bf16
    matmul: the kernel follows the reference (the sum is stored back in x's dtype)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 256, generator=g).bfloat16().to(DEVICE)
    r = torch.randn(9, 256, generator=g).to(DEVICE)
    w = (torch.rand(256, generator=g) + 0.5).to(DEVICE)
    (y, res), (ry, rres) = NR.rms_norm_triton(x, w, 1e-6, r), rms_norm_reference(x, w, 1e-6, r)
    assert y.dtype == ry.dtype == torch.float32 and res.dtype == rres.dtype == torch.bfloat16
    assert torch.equal(res, rres)
    torch.testing.assert_close(y, ry, rtol=1e-2, atol=1e-2)
    assert (y == ry).float().mean() > 0.97


@needs_triton
def test_rms_norm_strided_rows_and_empty():
    x = torch.randn(6, 64, device=DEVICE)[:, :32]           # row stride 64
    w = torch.rand(32, device=DEVICE)
    torch.testing.assert_close(NR.rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5))
    assert NR.rms_norm_triton(torch.empty(0, 32, device=DEVICE), w, 1e-5).shape == (0, 32)
    with pytest.raises(ValueError, match=r"weight shape \(32,\); expected \(16,\)"):
        NR.rms_norm_triton(torch.randn(2, 16, device=DEVICE), w, 1e-5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hk,D,block_h", [(4, 2, 64, None), (3, 1, 16, None), (8, 8, 128, None),
                                             (5, 2, 16, 4), (64, 8, 64, None)])   # blocks mixing q and k heads
def test_rope_matches_reference(dtype, hq, hk, D, block_h):
    g = torch.Generator().manual_seed(hq * D)
    T = 7
    qkv = torch.randn(T, (hq + 2 * hk) * D, generator=g).to(dtype).to(DEVICE)
    q = qkv[:, :hq * D].view(T, hq, D)                        # strided views, as from a fused projection
    k = qkv[:, hq * D:(hq + hk) * D].view(T, hk, D)
    pos = torch.randint(0, 5000, (T,), generator=g).float()
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    f = pos[:, None] * inv[None]
    cos, sin = f.cos().to(DEVICE), f.sin().to(DEVICE)
    gq, gk = NR.rope_triton(q, k, cos, sin, block_h=block_h)
    for a, b in ((gq, apply_rope(q, cos, sin)), (gk, apply_rope(k, cos, sin))):
        assert a.dtype == dtype and a.shape == b.shape
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert _ulps(a, b) <= 1.01 and (a == b).float().mean() > 0.97
    with pytest.raises(ValueError, match="expected k"):
        NR.rope_triton(q, k, cos[:3], sin[:3])


def _drafter(seed: int = 0, dtype=torch.float32) -> Drafter:
    torch.manual_seed(seed)
    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=40, target_hidden_size=16, mask_token_id=39,
                        parallel_depth=4)
    d = Drafter(cfg)
    with torch.no_grad():
        for n, p in d.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.3)
    return d.to(dtype)


@needs_triton
def test_drafter_with_triton_ops_equals_reference():
    from pedagle_core.attention import ContiguousKVCache
    from pedagle_core.draft import StepInput, draft_parallel

    d = _drafter().to(DEVICE)
    T = 9
    g = torch.Generator().manual_seed(3)
    step = StepInput(torch.randint(0, 39, (T,), generator=g), torch.arange(T), torch.tensor([0, T]), None,
                     torch.tensor([5]), torch.randn(T, 48, generator=g))
    step = StepInput(*(t.to(DEVICE) if t is not None else None for t in
                       (step.token_ids, step.positions, step.query_start_loc, step.num_rejected,
                        step.next_token_ids, step.aux_hidden)))
    outs = []
    for ops in (TORCH_OPS, NR.TRITON_OPS):
        d.use_ops(ops)
        cache = ContiguousKVCache(2, 1, 32, 2, 8, dtype=torch.float32, device=DEVICE).for_requests(
            torch.tensor([0], device=DEVICE))
        outs.append(draft_parallel(d, step, 4, cache, temperature=1.0, generator=torch.Generator(DEVICE).manual_seed(0)))
    torch.testing.assert_close(outs[1].probs, outs[0].probs, rtol=1e-4, atol=1e-6)
    d.use_ops(None)
    assert all(m.ops is None for m in d.modules() if hasattr(m, "ops"))


def test_auto_ops_keeps_cpu_and_autograd_on_the_reference():
    x = torch.randn(2, 8)
    assert auto_ops(x) is TORCH_OPS                                  # CPU tensors: always the reference
    if torch.cuda.is_available() and NR is not None:
        xc, w = x.cuda(), torch.nn.Parameter(torch.ones(8, device="cuda"))
        assert auto_ops(xc, w) is TORCH_OPS                          # autograd tracks w: no backward in Triton
        with torch.no_grad():
            assert auto_ops(xc, w) is NR.TRITON_OPS


def test_mask_hidden_projection_is_cached_until_a_weight_changes():
    d = _drafter(1)
    want = d.project_hidden(d.mask_hidden.view(1, -1)).view(-1)
    with torch.no_grad():
        a, b = d.mask_hidden_projected(), d.mask_hidden_projected()
        assert a is b and torch.equal(a, want)                      # cached
        d.mask_hidden.mul_(2.0)                                      # an in-place change
        c = d.mask_hidden_projected()
        assert c is not a and torch.allclose(c, d.project_hidden(d.mask_hidden.view(1, -1)).view(-1))
        d.load_state_dict({**d.state_dict(), "fc.weight": torch.randn_like(d.fc.weight)})
        e = d.mask_hidden_projected()
        assert e is not c and torch.allclose(e, d.project_hidden(d.mask_hidden.view(1, -1)).view(-1))
    d64 = d.double()                                                  # a cast invalidates it too
    with torch.no_grad():
        assert d64.mask_hidden_projected().dtype == torch.float64
    out = d64.mask_hidden_projected()                                # with autograd: recomputed, differentiable
    assert out.requires_grad
    out.sum().backward()
    assert d64.mask_hidden.grad is not None and d64.mask_hidden.grad.abs().sum() > 0
