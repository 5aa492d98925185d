"""The weight-streaming GEMM (pedagle_core/kernels/skinny_gemm.py) against its plain-PyTorch reference; on CPU
interpreted (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA compiled. Also the drafter's dispatch
seam (`Drafter.use_linear`) and the measured choice between variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers_kernels import DEVICE, kernel_module

SG = kernel_module("skinny_gemm")
pytestmark = pytest.mark.skipif(SG is None, reason="Triton skinny GEMM kernel cannot run here")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _case(M, N, K, dtype, bias, seed, **ov):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(N, K, generator=g) * 0.05).to(dtype).to(DEVICE)
    b = torch.randn(N, generator=g).to(dtype).to(DEVICE) if bias else None
    y = torch.full((M, N), float("nan"), dtype=dtype, device=DEVICE)        # poisoned: every element written
    SG.skinny_linear(x, w, b, out=y, **ov)
    ref64 = x.double() @ w.double().T + (b.double() if bias else 0)
    assert torch.isfinite(y).all()
    tol = 1e-6 if dtype == torch.float32 else 8e-3                          # bf16: one output rounding
    assert _rel(y, ref64) < tol
    ref = SG.skinny_linear_reference(x, w, b)                                # same rounding point
    assert _rel(y, ref) < (1e-6 if dtype == torch.float32 else 8e-3)   # interpreter: casts truncate
    return y


# (M, N, K, overrides): single slice, split-K with even and ragged K, N not a multiple of the tile,
# the largest row block, and wide tiles.
CASES = [
    (1, 64, 64, {}),
    (3, 40, 96, {}),
    (14, 70, 320, dict(split_k=3)),
    (20, 33, 100, dict(split_k=2, block_k=64)),
    (7, 130, 512, dict(block_n=128, split_k=4)),
    (33, 48, 192, dict(split_k=3)),
    (100, 300, 192, dict(block_n=256, split_k=2, num_warps=8)),      # the wide tiles tried above 64 rows
    (7, 50, 600, dict(block_n=16, block_k=256, split_k=1)),           # narrow deep tiles, ragged K
    (9, 40, 1024, dict(block_n=32, block_k=256, split_k=2)),
]


@pytest.mark.parametrize("M,N,K,ov", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(M, N, K, ov, dtype):
    _case(M, N, K, dtype, bias=(M % 2 == 1), seed=M * 1000 + N, **ov)


# (M, I, K, overrides) of the gate/up product with the activation in the epilogue: single slice, split-K
# with ragged K and I not a multiple of the half tile, narrow deep tiles, wide tiles.
SILU_CASES = [(3, 40, 96, {}), (14, 70, 320, dict(split_k=3)), (7, 50, 200, dict(block_n=16, block_k=256, split_k=1)),
              (20, 96, 128, dict(block_n=128, split_k=2))]


@pytest.mark.parametrize("M,I,K,ov", SILU_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_epilogue_equals_product_then_activation(M, I, K, ov, dtype):
    """skinny_linear(x, [gate; up], silu_gate_up=True) gives the values of the same product (same overrides)
    followed by silu_mul_triton, and agrees with the plain-PyTorch reference."""
    NR = kernel_module("norm_rope")
    g = torch.Generator().manual_seed(M * 7 + K)
    x = torch.randn(M, K + 3, generator=g).to(dtype).to(DEVICE)[:, :K]                   # strided rows
    w = (torch.randn(2 * I, K, generator=g) * 0.1).to(dtype).to(DEVICE)
    b = torch.randn(2 * I, generator=g).to(dtype).to(DEVICE) if M % 2 else None
    y = SG.skinny_linear(x, w, b, silu_gate_up=True, **ov)
    assert y.shape == (M, I)
    gate, up = SG.skinny_linear(x, w, b, **ov).chunk(2, dim=-1)
    two = NR.silu_mul_triton(gate, up)
    # the same dot products in a differently shaped tile: equal but where the matmul's float32 summation
    # order differs (the interpreter's numpy matmul blocks by shape), then at most one ulp of the dtype
    if dtype == torch.float32:
        torch.testing.assert_close(y, two, rtol=1e-5, atol=1e-6)
    else:
        ulp = two.double().abs().clamp_min(1e-30) * torch.finfo(dtype).eps
        assert float(((y.double() - two.double()).abs() / ulp).max()) <= 1.01
        assert (y == two).float().mean() > 0.95
    assert _rel(y, SG.silu_gate_up_reference(x, w, b)) < (1e-5 if dtype == torch.float32 else 1.2e-2)
    assert int(SG._counters(x.device).abs().sum()) == 0
    with pytest.raises(ValueError, match=r"expected \[2I, K\]"):
        SG.skinny_linear(x, w[1:], silu_gate_up=True)


def test_silu_dispatch_is_the_two_launches_where_it_cannot_time():
    """Off CUDA (and for float32) `silu_gate_up` is `linear` then silu_mul; on CUDA whichever was measured
    fastest, which must agree with the reference."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, 64, generator=g).to(DEVICE)
    w = (torch.randn(96, 64, generator=g) * 0.1).to(DEVICE)
    NR = kernel_module("norm_rope")
    assert torch.equal(SG.silu_gate_up(x, w), NR.silu_mul_triton(*SG.linear(x, w).chunk(2, dim=-1)))
    if DEVICE.type == "cuda":
        xb, wb = x.bfloat16(), w.bfloat16()
        assert _rel(SG.silu_gate_up(xb, wb), SG.silu_gate_up_reference(xb, wb)) < 1.2e-2


def test_split_k_is_deterministic_and_leaves_counters_zero():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 384, generator=g).to(DEVICE)
    w = torch.randn(72, 384, generator=g).to(DEVICE)
    a = SG.skinny_linear(x, w, split_k=3)
    b = SG.skinny_linear(x, w, split_k=3)
    assert torch.equal(a, b)
    assert int(SG._counters(x.device).abs().sum()) == 0                    # the next launch starts from zero
    assert SG.launch_config(6, 72, 384, x.device, split_k=3)["split_k"] == 3


def test_strided_input_and_errors():
    x = torch.randn(5, 200, device=DEVICE)[:, :128]
    w = torch.randn(32, 128, device=DEVICE)
    assert _rel(SG.skinny_linear(x, w), x @ w.T) < 1e-6
    with pytest.raises(ValueError, match=r"expected \[M, K\] and \[N, K\]"):
        SG.skinny_linear(x, torch.randn(32, 100, device=DEVICE))
    with pytest.raises(ValueError, match="at most"):
        SG.skinny_linear(torch.randn(SG.MAX_ROWS + 1, 16, device=DEVICE), torch.randn(8, 16, device=DEVICE))
    with pytest.raises(ValueError, match=r"bias \(7,\); expected \(32,\)"):
        SG.skinny_linear(x, w, torch.randn(7, device=DEVICE))
    assert SG.skinny_linear(torch.empty(0, 128, device=DEVICE), w).shape == (0, 32)


def test_launch_config_split_covers_k_exactly():
    for M, N, K in ((14, 2880, 11520), (14, 5120, 2880), (160, 2880, 4096), (7, 201088, 2880)):
        c = SG.launch_config(M, N, K, DEVICE)
        assert c["split_k"] >= 1 and c["k_split"] % c["BLOCK_K"] == 0
        assert (c["split_k"] - 1) * c["k_split"] < K <= c["split_k"] * c["k_split"]        # no empty slice
        for ov in SG.candidates(M, N, K, DEVICE):
            launch = {k: v for k, v in ov.items() if k != "prefetch"}          # a launch option, not a tile one
            assert SG.launch_config(M, N, K, DEVICE, **launch)["split_k"] == ov["split_k"]
    # the pipeline depth keeps the buffered tiles in shared memory (float32, 128-wide tiles on the H200
    # asked for 240 KB of 227); bfloat16 tiles keep the full depth
    assert SG.launch_config(20, 192, 128, DEVICE, block_n=128, itemsize=4)["num_stages"] == 3
    assert SG.launch_config(20, 192, 128, DEVICE, block_n=128, itemsize=2)["num_stages"] == 4
    assert SG.launch_config(112, 2880, 4096, DEVICE, block_n=256, num_warps=8)["num_stages"] == 3


def test_linear_dispatch_equals_f_linear_where_it_cannot_time():
    """Off CUDA (and for float32) the dispatch is F.linear itself; on CUDA it is whichever variant was
    measured fastest, which must agree with the reference."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 96, generator=g).to(DEVICE)
    w = torch.randn(80, 96, generator=g).to(DEVICE)
    b = torch.randn(80, generator=g).to(DEVICE)
    assert torch.equal(SG.linear(x, w, b), F.linear(x, w, b))
    if DEVICE.type == "cuda":
        xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
        assert _rel(SG.linear(xb, wb, bb), SG.skinny_linear_reference(xb.view(-1, 96), wb, bb).view(2, 4, 80)) < 4e-3


def test_drafter_use_linear_routes_every_linear():
    """`Drafter.use_linear(fn)`: q/k/v, o, gate/up, down, fc and lm_head all go through fn, fused or not;
    with the kernel as fn the step equals the F.linear step."""
    from pedagle_core import Drafter, DrafterConfig

    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=40, target_hidden_size=16, attention_bias=True)
    torch.manual_seed(0)
    d = Drafter(cfg).to(DEVICE).eval()
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    calls: list[tuple[int, ...]] = []

    def spy(x, w, b=None):
        calls.append(tuple(w.shape))
        return SG.skinny_linear(x.reshape(-1, x.shape[-1]), w, b).view(*x.shape[:-1], w.shape[0])

    T = 5
    ids = torch.randint(0, cfg.vocab_size, (T,), device=DEVICE)
    pos = torch.arange(T, device=DEVICE)
    hid = torch.randn(T, cfg.fc_input_size, device=DEVICE)

    def attn(layer, q, k, v, window):
        return F.scaled_dot_product_attention(q.transpose(0, 1), k.repeat_interleave(q.shape[1] // k.shape[1], 1)
                                              .transpose(0, 1), v.repeat_interleave(q.shape[1] // k.shape[1], 1)
                                              .transpose(0, 1), is_causal=True).transpose(0, 1)

    with torch.no_grad():
        ref_out, _ = d(ids, pos, d.project_hidden(hid), attn)
        ref_logits = d.compute_logits(ref_out)
        d.use_linear(spy)
        out, _ = d(ids, pos, d.project_hidden(hid), attn)
        logits = d.compute_logits(out)
        n_plain = len(calls)
        d.fuse_projections(lambda w, b: (lambda x: spy(x, w, b)))
        calls.clear()
        out2, _ = d(ids, pos, d.project_hidden(hid), attn)
        d.use_linear(None)
    L = cfg.num_hidden_layers
    assert n_plain == 1 + L * 7 + 1                                   # fc, q k v o gate up down, lm_head
    assert len(calls) == 1 + L * 4                                    # fused: fc, qkv o gate_up down
    assert _rel(out, ref_out) < 1e-5 and _rel(logits, ref_logits) < 1e-5 and _rel(out2, ref_out) < 1e-5


def test_measured_choice_picks_the_fastest_beyond_the_margin(monkeypatch):
    """The dispatch's choice rule, with the timings given (no GPU needed): the fallback wins ties within
    the margin, a faster candidate wins beyond it, the choice is cached, a failing fallback is an error."""
    from pedagle_core.kernels import measured_choice as MC

    dev = torch.device("cuda", 0)                       # a device object only: nothing runs on it here
    MC.reset()
    timings = {"a": [1.0, 0.99, 1.2], "b": [1.0, 0.5, 0.7], "c": [float("inf"), 0.5]}
    for kind, t in timings.items():
        monkeypatch.setattr(MC, "time_candidates", lambda fns, device, t=t: list(t))
        names = [f"v{i}" for i in range(len(t))]
        if kind == "c":
            with pytest.raises(RuntimeError, match="the fallback 'v0'"):
                MC.choose(kind, (1, 2), names, [None] * len(t), dev)
            continue
        assert MC.choose(kind, (1, 2), names, [None] * len(t), dev) == {"a": 0, "b": 1}[kind]
    monkeypatch.setattr(MC, "time_candidates", lambda fns, device: pytest.fail("timed twice"))
    assert MC.choose("b", (1, 2), ["v0", "v1", "v2"], [None] * 3, dev) == 1           # cached
    assert MC.choose("a", (1, 2), ["v0"], [None], torch.device("cpu")) == 0          # never timed off CUDA
    d = MC.decisions("b")
    assert len(d) == 1 and d[0]["chosen"] == "v1" and d[0]["key"] == [1, 2] and d[0]["times_ms"]["v1"] == 0.5
    MC.reset()
    assert MC.decisions() == []


def test_time_in_graphs_times_every_weight_copy_per_variant(monkeypatch):
    """The GEMM timing hands `measured_choice.time_graphs` one function per variant that runs the product over
    all R weight copies (R from the L2 size), and reports per-product times (no GPU needed: the graph timing
    and the device query are replaced; the products run on the CPU)."""
    import types

    from pedagle_core.kernels import measured_choice as MC

    l2 = 1 << 14                                        # a weight of 4 KiB: R = ceil(3 * 16 KiB / 4 KiB) = 12 -> 8
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: types.SimpleNamespace(L2_cache_size=l2))
    seen: list[tuple] = []
    real_linear = F.linear

    def spy_linear(x, w, b=None):
        seen.append(("cublas", w.data_ptr()))
        return real_linear(x, w, b)

    def spy_skinny(x, w, b=None, **ov):
        seen.append((ov["tag"], w.data_ptr()))
        return real_linear(x, w, b)

    def fake_time_graphs(fns, device, repeat=8, reps=7):
        assert repeat == 1
        out = []
        for i, fn in enumerate(fns):
            seen.clear()
            fn()
            out.append(10.0 * (i + 1))
            assert [s[0] for s in seen] == [["cublas", "k1"][i]] * 8, seen
            assert len({s[1] for s in seen}) == 8      # eight distinct weight copies
        return out

    monkeypatch.setattr(SG.F, "linear", spy_linear)
    monkeypatch.setattr(SG, "skinny_linear", spy_skinny)
    monkeypatch.setattr(MC, "time_graphs", fake_time_graphs)
    x, w = torch.randn(3, 32), torch.randn(32, 32)     # 32 x 32 float32 = 4 KiB
    assert SG.time_in_graphs(x, w, None, [None, {"tag": "k1"}]) == [10.0 / 8, 20.0 / 8]


def test_apply_linear_leaves_backend_modules_alone():
    """A backend's own linear module (a subclass, e.g. vLLM's CPU GEMM wrapper) runs its own forward;
    a plain nn.Linear goes through the function given (or auto_linear)."""
    from pedagle_core.model import apply_linear

    class Own(torch.nn.Linear):
        def forward(self, x):
            return torch.full((x.shape[0], self.out_features), 7.0)

    plain, own = torch.nn.Linear(4, 3), Own(4, 3)
    x = torch.randn(2, 4)
    assert torch.equal(apply_linear(None, own, x), torch.full((2, 3), 7.0))
    assert torch.equal(apply_linear(lambda x, w, b: torch.zeros(x.shape[0], w.shape[0]), plain, x), torch.zeros(2, 3))
    torch.testing.assert_close(apply_linear(None, plain, x), plain(x))


def test_prefetch_plan_budget():
    """'auto': the first wave (two programs per SM) asks for as much of each weight row's K slice as fits
    in half of L2 together, in a power of two of 128-byte lines; an int: that many bytes for every program."""
    from pedagle_core.kernels.device_info import l2_bytes, sm_count

    dev = torch.device(DEVICE)
    wave, half = 2 * sm_count(dev), l2_bytes(dev) // 2
    assert SG.prefetch_plan(0, 500, 64, 4096, dev) == (0, 0)
    assert SG.prefetch_plan(1024, 500, 64, 4096, dev) == (8, 500)
    assert SG.prefetch_plan("auto", 3, 64, 1024, dev) == (8, 3)                   # the whole slice, every program
    lines, n = SG.prefetch_plan("auto", 10 * wave, 64, 1 << 30, dev)              # the budget binds
    assert n == wave and lines & (lines - 1) == 0
    assert lines * 128 * 64 * wave <= half < 2 * lines * 128 * 64 * wave
    assert SG.prefetch_plan("auto", 10 * wave, 64, 100, dev) == (0, 0)            # under one line per row
    with pytest.raises(ValueError, match="prefetch = 'all'"):
        SG.prefetch_plan("all", 1, 64, 128, dev)


@pytest.mark.parametrize("prefetch", [0, 1024, "auto"])
def test_prefetch_changes_no_bits(prefetch):
    """The prefetch is a hint before the PDL wait (no PDL off Hopper and in the interpreter: no prefetch);
    the product is the same bits with and without it."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(14, 640, generator=g).to(torch.bfloat16).to(DEVICE)
    w = (torch.randn(192, 640, generator=g) * 0.05).to(torch.bfloat16).to(DEVICE)
    want = SG.skinny_linear(x, w, split_k=2, prefetch=0)
    assert torch.equal(SG.skinny_linear(x, w, split_k=2, prefetch=prefetch), want)
    assert torch.equal(SG.skinny_linear(x, w, silu_gate_up=True, prefetch=prefetch),
                       SG.skinny_linear(x, w, silu_gate_up=True, prefetch=0))


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the dispatch times and chooses on CUDA only")
def test_kernels_only_never_takes_cublas(monkeypatch):
    """With cuBLAS chosen for a shape, KERNELS_ONLY still runs the kernel (its fastest timed variant)."""
    from pedagle_core.kernels import measured_choice

    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 256, generator=g).to(torch.bfloat16).to(DEVICE)
    w = (torch.randn(96, 256, generator=g) * 0.05).to(torch.bfloat16).to(DEVICE)
    key = (x.device.index, 6, 96, 256, x.dtype, False)
    SG._CHOSEN.pop(key, None)
    measured_choice.force("skinny_gemm", key[1:], x.device, 0)                  # cuBLAS
    calls = []
    real = SG.skinny_linear
    monkeypatch.setattr(SG, "skinny_linear", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert torch.equal(SG.linear(x, w), F.linear(x, w)) and not calls
    monkeypatch.setattr(SG, "KERNELS_ONLY", True)
    y = SG.linear(x, w)
    assert calls == [SG._FASTEST_KERNEL[key]]
    assert _rel(y, SG.skinny_linear_reference(x, w)) < 8e-3
