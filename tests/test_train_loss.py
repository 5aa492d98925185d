"""KL loss, count normalisation, per-depth weights, metrics (pedagle_core/train/loss.py)."""

import math

import torch

from pedagle_core.train.loss import depth_stats, kl_loss, kl_per_element, target_logits, weighted_kl_sum
from pedagle_core.train.vocab import select_draft_vocab


def test_kl_matches_manual_and_restricted_renormalisation():
    g = torch.Generator().manual_seed(0)
    V, Ht = 12, 5
    W = torch.randn(V, Ht, generator=g, dtype=torch.float64)
    h = torch.randn(3, Ht, generator=g, dtype=torch.float64)
    counts = torch.arange(V)
    d2t, t2d = select_draft_vocab(counts, 7)
    draft = torch.randn(3, 7, generator=g, dtype=torch.float64)
    tl = target_logits(h, W[t2d])
    kl = kl_per_element(draft, tl)
    # manual: full target probs restricted to the draft vocabulary and renormalised
    p_full = torch.softmax(h @ W.t(), -1)
    p = p_full[:, t2d] / p_full[:, t2d].sum(-1, keepdim=True)
    q = torch.softmax(draft, -1)
    for i in range(3):
        manual = sum(float(p[i, j]) * (math.log(float(p[i, j])) - math.log(float(q[i, j]))) for j in range(7))
        assert abs(float(kl[i]) - manual) < 1e-12
    assert bool((kl >= 0).all())
    assert float(kl_per_element(tl, tl).abs().max()) < 1e-12


def test_count_normalisation_and_depth_weights():
    g = torch.Generator().manual_seed(1)
    draft = torch.randn(6, 9, generator=g, dtype=torch.float64)
    tgt = torch.randn(6, 9, generator=g, dtype=torch.float64)
    depth = torch.tensor([0, 0, 0, 1, 1, 2])
    kl = kl_per_element(draft, tgt)
    assert abs(float(kl_loss(draft, tgt, depth)) - float(kl.mean())) < 1e-12
    # one shared denominator: two halves with the total count sum to the whole
    a = kl_loss(draft[:4], tgt[:4], depth[:4], denominator=6) + kl_loss(draft[4:], tgt[4:], depth[4:], denominator=6)
    assert abs(float(a) - float(kl.mean())) < 1e-12
    w = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    want = float((kl * w[depth]).sum() / 6)
    assert abs(float(kl_loss(draft, tgt, depth, w)) - want) < 1e-12
    assert abs(float(weighted_kl_sum(draft, tgt, depth, w)) - want * 6) < 1e-12


def test_depth_stats():
    tgt = torch.tensor([[0.0, 5.0], [5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    draft = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    c, n, kl = depth_stats(draft, tgt, torch.tensor([0, 0, 1, 2]), 4)
    assert c.tolist() == [1.0, 1.0, 1.0, 0.0] and n.tolist() == [2.0, 1.0, 1.0, 0.0]
    assert kl[3] == 0 and bool((kl[:3] > 0).all())
