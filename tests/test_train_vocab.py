"""Draft vocabulary and MASK token (pedagle_core/train/vocab.py)."""

import pytest
import torch

from pedagle_core.train.vocab import (count_tokens, draft_to_target_ids, resolve_mask_token_id, select_draft_vocab,
                                      target_to_draft_ids)


def test_top_n_by_frequency_in_target_id_order():
    counts = count_tokens([torch.tensor([5, 5, 5, 2, 2, 9, 7, 7, 7, 7]), torch.tensor([3])], 12)
    d2t, t2d = select_draft_vocab(counts, 4)
    tids = draft_to_target_ids(d2t)
    assert tids.tolist() == [2, 3, 5, 7]            # 7, 5, 2, then 3 and 9 tie (once each): lower id wins
    counts2 = count_tokens([torch.tensor([1, 1, 4, 4, 9, 3])], 12)
    assert draft_to_target_ids(select_draft_vocab(counts2, 3)[0]).tolist() == [1, 3, 4]
    assert bool((d2t[1:] >= d2t[:-1]).all())         # increasing target ids => non-decreasing offsets
    assert t2d.sum() == 4 and t2d[tids].all()


def test_round_trip_and_fill_and_exclude():
    V = 50
    counts = torch.zeros(V, dtype=torch.long)
    counts[[3, 17, 40]] = torch.tensor([5, 9, 1])
    d2t, t2d = select_draft_vocab(counts, 10, exclude=[0])
    tids = draft_to_target_ids(d2t)
    assert set(tids.tolist()) >= {3, 17, 40} and 0 not in tids.tolist()
    t2d_ids = target_to_draft_ids(t2d)
    # round trip: draft -> target -> draft is the identity; target ids outside the vocab map to -1
    assert torch.equal(t2d_ids[tids], torch.arange(10))
    assert int((t2d_ids >= 0).sum()) == 10 and bool((t2d_ids[~t2d] == -1).all())
    full_d2t, full_t2d = select_draft_vocab(counts, V)
    assert bool((full_d2t == 0).all()) and bool(full_t2d.all())
    with pytest.raises(ValueError):
        select_draft_vocab(counts, V, exclude=[1])


def test_mask_token_resolution():
    counts = torch.ones(10, dtype=torch.long)
    counts[6] = 0
    assert resolve_mask_token_id(10, explicit=3) == 3
    with pytest.raises(ValueError):
        resolve_mask_token_id(10, explicit=10)
    with pytest.raises(ValueError):
        resolve_mask_token_id(10, explicit=-1)
    assert resolve_mask_token_id(10, tokenizer_mask_id=2, tokenizer_len=8) == 2
    assert resolve_mask_token_id(10, tokenizer_len=8, counts=counts) == 8
    assert resolve_mask_token_id(10, tokenizer_len=10, counts=counts) == 6
    with pytest.raises(ValueError):
        resolve_mask_token_id(10, tokenizer_len=10, counts=torch.ones(10, dtype=torch.long))
