"""COD sampling properties (pedagle_core/train/cod.py)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pedagle_core.train.cod import doc_starts, element_meta, sample_cod


def _packed(doc_lens, valid_p, seed):
    g = torch.Generator().manual_seed(seed)
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(doc_lens)])
    pos = torch.cat([torch.arange(n) for n in doc_lens])
    valid = torch.rand(doc.numel(), generator=g) < valid_p
    return doc, pos, valid


@settings(max_examples=60, deadline=None)
@given(doc_lens=st.lists(st.integers(1, 40), min_size=1, max_size=5), valid_p=st.floats(0.0, 1.0),
       K=st.integers(1, 9), r=st.floats(0.3, 1.0), r_min=st.floats(0.0, 0.5), seed=st.integers(0, 1000))
def test_cod_properties(doc_lens, valid_p, K, r, r_min, seed):
    doc, pos, valid = _packed(doc_lens, valid_p, seed)
    m = doc.numel()
    el = sample_cod(valid, doc, K, r, r_min, torch.Generator().manual_seed(seed))
    a, d = el.anchor, el.depth
    # depth 0 keeps every row, in order, first
    assert torch.equal(a[:m], torch.arange(m)) and bool((d[:m] == 0).all())
    # ordered by (depth, anchor), no duplicates
    key = d * (m + 1) + a
    assert bool((key[1:] > key[:-1]).all())
    deep = d > 0
    t = el.target_row
    # anchors are real rows (no -1 leak), targets inside the sequence, same document, supervised
    assert bool((a >= 0).all()) and bool((t < m).all())
    assert bool((doc[a[deep]] == doc[t[deep]]).all())
    assert bool(valid[t[deep]].all())
    # document-local position of the anchor: the chain never starts before its document
    assert bool((pos[a] >= 0).all()) and bool((pos[t] == pos[a] + d).all())
    # chains complete: (a, d) sampled => (a, d-1) sampled
    have = set(zip(a.tolist(), d.tolist()))
    for ai, di in have:
        assert di == 0 or (ai, di - 1) in have
    # counts: depth d keeps at most int((n_valid - d) * max(r^d, r_min)) elements
    n_valid = int(valid.sum())
    counts = el.counts_per_depth(K)
    for dd in range(1, K):
        assert int(counts[dd]) <= int(max(n_valid - dd, 0) * max(r ** dd, r_min))
        assert int(counts[dd]) <= int(counts[dd - 1]) or dd == 1
    # meta
    meta = element_meta(el, pos, doc, valid)
    assert torch.equal(meta["pos"], pos[a] + d) and torch.equal(meta["doc"], doc[a])


def test_cod_counts_full_pool():
    """With everything supervised and one long document, depth d holds exactly int((n-d)*max(r^d, r_min))."""
    m, K, r, rmin = 400, 8, 0.7, 0.2
    doc = torch.zeros(m, dtype=torch.long)
    valid = torch.ones(m, dtype=torch.bool)
    el = sample_cod(valid, doc, K, r, rmin, torch.Generator().manual_seed(0))
    counts = el.counts_per_depth(K).tolist()
    assert counts[0] == m
    for d in range(1, K):
        assert counts[d] == min(int((m - d) * max(r ** d, rmin)), counts[d - 1])


def test_position_zero_never_anchors_previous_document():
    # two documents; every row supervised: the first row of document 1 may not be a depth-1 target
    doc = torch.tensor([0] * 5 + [1] * 5)
    valid = torch.ones(10, dtype=torch.bool)
    el = sample_cod(valid, doc, 4, 1.0, 1.0)
    deep = el.depth > 0
    assert 0 not in el.target_row[deep].tolist()            # would be anchor -1
    assert 5 not in el.target_row[el.depth == 1].tolist()  # would anchor at row 4 (document 0)
    # ratio 1: every in-document chain whose targets are valid is present
    assert el.counts_per_depth(4).tolist() == [10, 8, 6, 4]


def test_seeded_and_doc_starts():
    doc = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert doc_starts(doc).tolist() == [0, 0, 0, 3, 3, 5, 5, 5, 5]
    valid = torch.ones(9, dtype=torch.bool)
    e1 = sample_cod(valid, doc, 4, 0.5, 0.1, torch.Generator().manual_seed(3))
    e2 = sample_cod(valid, doc, 4, 0.5, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(e1.anchor, e2.anchor) and torch.equal(e1.depth, e2.depth)
