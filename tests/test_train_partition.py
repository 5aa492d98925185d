"""Sequence partitioning: S segments give the single-pass loss and gradients (float64, CPU)."""

import pytest
import torch

from pedagle_core import Drafter, DrafterConfig
from pedagle_core.train.cod import sample_cod
from pedagle_core.train.module import TrainableDrafter
from pedagle_core.train.partition import PackedRows, plan_segments, run_pack


pytestmark = pytest.mark.usefixtures("one_thread")

K = 5


def _setup(window: bool, seed: int = 0, head_dim: int | None = None):
    torch.manual_seed(seed)
    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                        intermediate_size=48, vocab_size=50, draft_vocab_size=40, target_hidden_size=24,
                        mask_token_id=49, parallel_depth=K,
                        layer_types=["full_attention", "sliding_attention"] if window else None,
                        sliding_window=6 if window else None)
    dr = Drafter(cfg)
    with torch.no_grad():
        for n, p in dr.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in n else torch.randn_like(p) * 0.3)
    mod = TrainableDrafter(dr.double(), parallel=True)
    lens = [20, 3, 31, 1, 17]
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
    pos = torch.cat([torch.arange(n) for n in lens])
    m = doc.numel()
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(m, generator=g) < 0.85
    rows = PackedRows(torch.randint(0, 49, (m,), generator=g), pos, doc, valid,
                      torch.randn(m, 72, generator=g, dtype=torch.float64),
                      torch.randn(m, 24, generator=g, dtype=torch.float64))
    el = sample_cod(valid, doc, K, 0.8, 0.3, torch.Generator().manual_seed(seed))
    W = torch.randn(40, 24, generator=g, dtype=torch.float64)
    return mod, rows, el, W


def _run(mod, rows, el, W, S, backend="sdpa", weights=None):
    mod.zero_grad(set_to_none=True)
    n_sup = int(rows.valid[el.target_row].sum())
    st = run_pack(mod, rows, el, num_depths=K, mask_token_id=49, head_weight=W, num_segments=S,
                  loss_scale=1.0 / n_sup, backend=backend, depth_weights=weights)
    grads = {n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None}
    return float(st.loss_sum) / n_sup, grads, st


@pytest.mark.parametrize("window", [False, True])
def test_partition_equals_single_pass(window):
    mod, rows, el, W = _setup(window)
    l1, g1, st1 = _run(mod, rows, el, W, 1)
    assert {"mask_embed", "drafter.mask_hidden", "drafter.fc.weight", "drafter.lm_head.weight"} <= set(g1)
    for S in ((4,) if window else (2, 4, 8)):
        lS, gS, stS = _run(mod, rows, el, W, S)
        assert abs(lS - l1) < 1e-10
        assert set(gS) == set(g1)
        for n in g1:
            torch.testing.assert_close(gS[n], g1[n], rtol=0, atol=1e-10, msg=f"S={S} {n}")
        assert torch.equal(stS.count, st1.count) and torch.equal(stS.correct, st1.correct)
        assert stS.peak_segment_elements < st1.peak_segment_elements


def test_partition_depth_weights_and_flex_forward():
    mod, rows, el, W = _setup(False, seed=1)
    w = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=torch.float64)
    l1, g1, _ = _run(mod, rows, el, W, 1, weights=w)
    l4, g4, _ = _run(mod, rows, el, W, 4, weights=w)
    assert abs(l4 - l1) < 1e-10
    for n in g1:
        torch.testing.assert_close(g4[n], g1[n], rtol=0, atol=1e-10)
    # FlexAttention has no CPU backward: check its forward (S = 1 and 4) against the dense path
    n_sup = int(rows.valid[el.target_row].sum())
    for S in (1, 4):
        st = run_pack(mod, rows, el, num_depths=K, mask_token_id=49, head_weight=W, num_segments=S,
                      backend="flex_eager", depth_weights=w, backward=False)
        assert abs(float(st.loss_sum) / n_sup - l1) < 1e-10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs CUDA")
def test_partition_flex_cuda():
    """Compiled FlexAttention (float32; the Triton kernel has no float64) against the float64 dense pass."""
    mod, rows, el, W = _setup(False, seed=2, head_dim=16)       # FlexAttention's kernels need head_dim >= 16
    l1, g1, _ = _run(mod, rows, el, W, 1)
    mod, W = mod.float().cuda(), W.float().cuda()
    rows = PackedRows(rows.input_ids, rows.positions, rows.doc, rows.valid, rows.aux.float(),
                      rows.final_hidden.float()).to("cuda")
    for S in (1, 4):
        lS, gS, _ = _run(mod, rows, el, W, S, backend="flex")
        assert abs(lS - l1) < 1e-4 * max(1.0, abs(l1))
        for n in g1:
            torch.testing.assert_close(gS[n].cpu().double(), g1[n], rtol=2e-3, atol=2e-4)


def test_plan_keeps_chains_whole_and_covers_everything():
    _, rows, el, _ = _setup(False)
    segs = plan_segments(el, rows.doc, 4)
    assert 1 < len(segs) <= 4
    seen = torch.cat([s.elem_idx for s in segs])
    assert torch.equal(seen.sort().values, torch.arange(len(el)))
    for s in segs:
        a = el.anchor[s.elem_idx]
        assert bool(((a >= s.lo) & (a < s.hi)).all())        # every chain lies in its anchor's segment
        assert s.prefix_lo <= s.lo
        assert int((rows.doc[s.prefix_lo:s.lo] != rows.doc[s.lo]).sum()) == 0
