"""The MLP activation (silu(gate) * up) and the RoPE table (cos/sin of position x inv_freq) as one Triton launch
each (pedagle_core/kernels/norm_rope.py) against their plain-PyTorch references in pedagle_core/model.py; on the
CPU interpreted (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA compiled. Also: the drafter routes both
through its ops (`Drafter.use_ops`), and the custom ops pass torch's op checks."""

from __future__ import annotations

import pytest
import torch

from pedagle_core import Drafter, DrafterConfig
from pedagle_core.model import TORCH_OPS, rope_cos_sin_reference, rope_inv_freq, silu_mul_reference
from helpers_kernels import DEVICE, kernel_module

NR = kernel_module("norm_rope")
pytestmark = pytest.mark.skipif(NR is None, reason="Triton elementwise kernels cannot run here")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,I", [(1, 8), (7, 300), (14, 2100)])
def test_silu_mul_matches_reference_on_the_halves_of_a_fused_product(dtype, rows, I):
    g = torch.Generator().manual_seed(rows * I)
    gate_up = (torch.randn(rows, 2 * I, generator=g) * 4).to(dtype).to(DEVICE)
    gate, up = gate_up.chunk(2, dim=-1)                                 # strided rows, as the MLP has them
    got, want = NR.silu_mul_triton(gate, up), silu_mul_reference(gate, up)
    assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous()
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)
    else:                       # both round silu to bf16, then the product: equal but for exp's last fp32 bit
        spacing = want.double().abs().clamp_min(1e-30) * torch.finfo(torch.bfloat16).eps
        assert float(((got.double() - want.double()).abs() / spacing).max()) <= 1.01
        assert (got == want).float().mean() > 0.99


def test_silu_mul_errors_and_empty():
    x = torch.randn(3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="silu_mul"):
        NR.silu_mul_triton(x, x[:, :4])
    assert NR.silu_mul_triton(x[:0], x[:0]).shape == (0, 8)


@pytest.mark.parametrize("rope", [dict(rope_theta=10000.0), dict(rope_theta=150000.0, rope_type="yarn", factor=32.0,
                                                                   original_max_position_embeddings=4096)])
@pytest.mark.parametrize("D", [16, 64, 128])
def test_rope_table_matches_reference(rope, D):
    cfg = DrafterConfig(hidden_size=4 * D, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=D, intermediate_size=32, vocab_size=32, rope_parameters=rope,
                        max_position_embeddings=131072)
    inv, scale = rope_inv_freq(cfg)
    pos = torch.tensor([0, 1, 7, 511, 4095, 8199, 32767, 131071, 3, 3], device=DEVICE)
    got = NR.rope_cos_sin_triton(pos, inv.to(DEVICE), scale)
    want = rope_cos_sin_reference(pos, inv.to(DEVICE), scale)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and a.shape == (pos.shape[0], D // 2)
        # the same float32 angle; cos/sin of large angles within a few float32 ulps of torch's
        torch.testing.assert_close(a, b, rtol=0, atol=4e-6)
    assert NR.rope_cos_sin_triton(pos[:0], inv.to(DEVICE), scale)[0].shape == (0, D // 2)


def _drafter(dtype):
    torch.manual_seed(0)
    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=40, target_hidden_size=16)
    d = Drafter(cfg)
    with torch.no_grad():
        for n, p in d.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.3)
    return d.to(dtype).to(DEVICE).eval()


def _unfused_ops():
    """The Triton ops without the optional fused methods (``rope_write_kv``, ``embed_norm_cat``): the drafter
    takes its several-launch paths."""
    class Unfused:
        rms_norm, rope = NR.TRITON_OPS.rms_norm, NR.TRITON_OPS.rope
        silu_mul, rope_cos_sin = NR.TRITON_OPS.silu_mul, NR.TRITON_OPS.rope_cos_sin
    return Unfused()


def _spy_ops(method: str, calls: list):
    """The Triton ops, appending ``method`` to ``calls`` each time the drafter calls that method."""
    base = type(NR.TRITON_OPS)

    def spy(self, *a):
        calls.append(method)
        return getattr(base, method)(self, *a)
    return type("Spy", (base,), {method: spy})()


def _sdpa(layer, q, k, v, window):
    """A causal attention provider over the step's own rows (plain PyTorch)."""
    r = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(r, 1).transpose(0, 1), v.repeat_interleave(r, 1).transpose(0, 1),
        is_causal=True).transpose(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drafter_routes_activation_and_rope_table_through_its_ops(dtype):
    d = _drafter(dtype)
    T = 6
    ids = torch.randint(0, 40, (T,), device=DEVICE)
    pos = torch.arange(100, 100 + T, device=DEVICE)
    hid = torch.randn(T, d.config.hidden_size, device=DEVICE).to(dtype)
    calls = []

    class Spy(type(NR.TRITON_OPS)):
        def silu_mul(self, gate, up):
            calls.append("silu_mul")
            return super().silu_mul(gate, up)

        def rope_cos_sin(self, positions, inv_freq, scale):
            calls.append("rope_cos_sin")
            return super().rope_cos_sin(positions, inv_freq, scale)

    with torch.no_grad():
        d.use_ops(TORCH_OPS)
        ref, _ = d(ids, pos, hid, _sdpa)
        d.use_ops(Spy())
        got, _ = d(ids, pos, hid, _sdpa)
        d.use_ops(None)
    assert calls.count("rope_cos_sin") == 1 and calls.count("silu_mul") == d.config.num_hidden_layers
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert float((got.double() - ref.double()).norm() / ref.double().norm()) < tol
    assert all(m.ops is None for m in d.modules() if hasattr(m, "ops"))


def test_backend_ops_without_the_new_methods_use_the_references():
    """A backend's ops object with only rms_norm/rope (e.g. vLLM's CPU ops) keeps working: the activation
    and the RoPE table fall back to the references."""
    d = _drafter(torch.float32)

    class Minimal:
        rms_norm = TORCH_OPS.rms_norm
        rope = TORCH_OPS.rope

    pos = torch.arange(5, device=DEVICE)
    d.use_ops(Minimal())
    cos, sin = d.rope(pos)
    want = rope_cos_sin_reference(pos, d.inv_freq, d.rope_scale)
    assert torch.equal(cos, want[0]) and torch.equal(sin, want[1])
    x = torch.randn(5, 32, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(d.layers[0].mlp(x), silu_mul_reference(
            d.layers[0].mlp.gate_proj(x), d.layers[0].mlp.up_proj(x)) @ d.layers[0].mlp.down_proj.weight.T)
    d.use_ops(None)


def test_custom_ops_pass_torch_op_checks():
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_static")
    gu = torch.randn(3, 16, device=DEVICE).bfloat16()
    torch.library.opcheck(torch.ops.pedagle.silu_mul.default, (gu[:, :8], gu[:, 8:]), test_utils=tests)
    torch.library.opcheck(torch.ops.pedagle.rope_cos_sin.default,
                          (torch.arange(4, device=DEVICE), torch.rand(8, device=DEVICE), 1.0), test_utils=tests)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hk,D", [(4, 2, 16), (8, 1, 64), (6, 6, 32)])
def test_rope_write_kv_equals_rope_then_cache_write(dtype, hq, hk, D):
    """One launch: q rotated as `rope_triton` rotates it, rotated k and v in the cache at the row's slot as
    `decode_attention.write_kv` writes them; rows with slot -1 write nothing."""
    DA = kernel_module("decode_attention")
    g = torch.Generator().manual_seed(hq * 100 + D)
    T, N = 7, 20
    qkv = (torch.randn(T, (hq + 2 * hk) * D, generator=g) * 2).to(dtype).to(DEVICE)
    q, k, v = qkv.split([hq * D, hk * D, hk * D], dim=-1)                  # strided views, as the model has them
    q, k, v = q.view(T, hq, D), k.view(T, hk, D), v.view(T, hk, D)
    f = torch.rand(T, D // 2, generator=g) * 6
    cos, sin = f.cos().to(DEVICE), f.sin().to(DEVICE)
    slots = torch.tensor([3, -1, 0, 19, 7, -1, 11], device=DEVICE)
    kc, vc = (torch.full((N, hk, D), 5.0, dtype=dtype, device=DEVICE) for _ in range(2))
    kc2, vc2 = kc.clone(), vc.clone()
    q_got = NR.rope_write_kv_triton(q, k, v, cos, sin, slots, kc, vc)
    q_want, k_rot = NR.rope_triton(q, k, cos, sin)
    DA.write_kv(k_rot, v, slots, kc2, vc2)
    assert torch.equal(q_got, q_want) and torch.equal(kc, kc2) and torch.equal(vc, vc2)
    assert bool((kc[[1, 2, 4, 5, 6, 8]] == 5.0).all())                     # slots nobody writes: untouched
    with pytest.raises(ValueError, match="rope_write_kv"):
        NR.rope_write_kv_triton(q, k, v, cos, sin, slots[:3], kc, vc)
    with pytest.raises(ValueError, match="caches"):
        NR.rope_write_kv_triton(q, k, v, cos, sin, slots, kc.new_zeros(N, hk + 1, D), vc.new_zeros(N, hk + 1, D))


def test_drafter_writes_the_cache_with_rope_when_the_provider_offers_it():
    """A provider with ``kv_cache_slots`` (the core's Triton cache attention) and ops with ``rope_write_kv``:
    RoPE and the cache write in one launch per layer; the step's output and the cache equal those of the
    two-launch path (ops without the method), and the torch-attention path within tolerance."""
    from pedagle_core.attention import ContiguousKVCache

    DA = kernel_module("decode_attention")
    if DA is None:
        pytest.skip("Triton decode attention cannot run here")
    d = _drafter(torch.float32)
    T, calls = 5, []

    ids = torch.randint(0, 40, (T,), device=DEVICE)
    pos = torch.arange(3, 3 + T, device=DEVICE)
    hid = torch.randn(T, 32, device=DEVICE)
    outs, caches = [], []
    for impl, ops in (("triton", _spy_ops("rope_write_kv", calls)), ("triton", _unfused_ops()),
                      ("torch", _unfused_ops())):
        cache = ContiguousKVCache(2, 1, 16, 2, 8, device=DEVICE, impl=impl)
        view = cache.for_requests(torch.zeros(1, dtype=torch.long, device=DEVICE), max_query_len=T, max_context=16)
        attn = view.attention(pos, pos.clone(), torch.zeros(T, dtype=torch.long, device=DEVICE))
        d.use_ops(ops)
        with torch.no_grad():
            outs.append(d(ids, pos, hid, attn)[0])
        caches.append((cache.k.clone(), cache.v.clone()))
    d.use_ops(None)
    assert calls == ["rope_write_kv"] * d.config.num_hidden_layers
    assert torch.equal(outs[0], outs[1]) and all(torch.equal(a, b) for a, b in zip(caches[0], caches[1]))
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,H", [(1, 32), (7, 96), (14, 2880)])
def test_embed_norm_cat_equals_lookup_two_norms_and_cat(dtype, T, H):
    """One launch: the same bits as the embedding lookup, `rms_norm_triton` on each half and torch.cat; and
    the plain-PyTorch layer-0 input within rounding."""
    from pedagle_core.model import rms_norm_reference

    g = torch.Generator().manual_seed(T * H)
    V = 50
    table = torch.randn(V, H, generator=g).to(dtype).to(DEVICE)
    x = (torch.randn(T, 2 * H, generator=g) * 3).to(dtype).to(DEVICE)[:, :H]        # strided rows
    we, wx = ((torch.rand(H, generator=g) + 0.5).to(dtype).to(DEVICE) for _ in range(2))
    ids = torch.randint(0, V, (T,), generator=g).to(DEVICE)
    got = NR.embed_norm_cat_triton(ids, table, x, we, wx, 1e-6)
    want = torch.cat([NR.rms_norm_triton(table[ids], we, 1e-6), NR.rms_norm_triton(x, wx, 1e-6)], dim=-1)
    assert got.shape == (T, 2 * H) and got.dtype == dtype and torch.equal(got, want)
    ref = torch.cat([rms_norm_reference(table[ids], we, 1e-6), rms_norm_reference(x, wx, 1e-6)], dim=-1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, ref, **tol)


def test_embed_norm_cat_errors():
    t, x, w = torch.randn(10, 8, device=DEVICE), torch.randn(3, 8, device=DEVICE), torch.ones(8, device=DEVICE)
    ids = torch.tensor([1, 2, 3], device=DEVICE)
    with pytest.raises(ValueError, match=r"embed_norm_cat: input_ids \(2,\)"):
        NR.embed_norm_cat_triton(ids[:2], t, x, w, w, 1e-6)
    with pytest.raises(ValueError, match="expected one dtype"):
        NR.embed_norm_cat_triton(ids, t, x, w.double(), w, 1e-6)
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
            NR.embed_norm_cat_triton(torch.tensor([1, 10, 3]), t, x, w, w, 1e-6)
    assert NR.embed_norm_cat_triton(ids[:0], t, x[:0], w, w, 1e-6).shape == (0, 16)
    assert NR.TRITON_OPS.embed_norm_cat(ids, t, x, w.double(), w, 1e-6) is None       # mixed dtypes: not here


@pytest.mark.parametrize("norm_before_residual", [False, True])
def test_drafter_first_layer_input_in_one_launch(norm_before_residual):
    """Ops with ``embed_norm_cat``: layer 0's input is one launch (unless norm_before_residual, or the caller
    passes embeddings), with the bits of the unfused ops."""
    d = _drafter(torch.float32)
    d.config.norm_before_residual = d.layers[0].norm_before_residual = norm_before_residual
    T, calls = 6, []
    ids = torch.randint(0, 40, (T,), device=DEVICE)
    pos = torch.arange(T, device=DEVICE)
    hid = torch.randn(T, 32, device=DEVICE)
    outs = []
    with torch.no_grad():
        for ops, embeds in ((_spy_ops("embed_norm_cat", calls), None), (_unfused_ops(), None),
                            (_spy_ops("embed_norm_cat", calls), d.embed_tokens(ids))):
            d.use_ops(ops)
            outs.append(d(ids, pos, hid, _sdpa, input_embeds=embeds))
    d.use_ops(None)
    assert calls == ([] if norm_before_residual else ["embed_norm_cat"])
    for got in outs[1:]:
        assert torch.equal(got[0], outs[0][0]) and torch.equal(got[1], outs[0][1])
