"""The worker's per-step bookkeeping (pure functions over plain CPU tensors), checked by hand and against
pedagle's expansion."""

from __future__ import annotations

import pytest
import torch

from pedagle_backends.sglang import layout
from pedagle_core.expand import compute_slot_mapping, expand_metadata

K = 3


def page_table(B=2, width=40):
    """A req_to_token-like table: request b's position p lives in slot 1 + 100*b + p (slot 0 is SGLang's pad)."""
    return (1 + 100 * torch.arange(B)[:, None] + torch.arange(width)[None]).to(torch.int32)


def test_verify_window():
    seq = torch.tensor([5, 9])
    assert layout.verify_positions(seq, K).tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    toks = layout.verify_tokens(torch.tensor([7, 8]), torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert toks.tolist() == [7, 1, 2, 3, 8, 4, 5, 6]
    idx, nxt, sib = layout.chain_retrieve_indices(2, K)
    assert idx.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert nxt.tolist() == [[1, 2, 3, -1]] * 2 and sib.tolist() == [[-1] * 4] * 2
    assert layout.select_index(torch.tensor([1, 4]), K).tolist() == [0, 7]


def test_decode_step_input_and_row_layout():
    seq, acc = torch.tensor([5, 9]), torch.tensor([1, 4])      # request 0 accepted nothing, request 1 all K
    bonus, drafts, new = torch.tensor([7, 8]), torch.tensor([[11, 12, 13], [21, 22, 23]]), torch.tensor([30, 40])
    aux = torch.randn(2 * (K + 1), 6)
    step = layout.decode_step_input(bonus, drafts, seq, acc, new, aux)
    assert step.num_rejected.tolist() == [3, 0]
    assert step.query_start_loc.tolist() == [0, 4, 8]
    rtt = page_table()
    bt, bs, mml = layout.block_table(rtt, torch.tensor([0, 1]))
    e = expand_metadata(step.token_ids, step.positions, step.query_start_loc, step.num_rejected, step.next_token_ids,
                        K, 99, bt.long(), bs, mml, impl="torch")
    assert e.num_rows == 2 * layout.decode_window(K)            # 2K rows per request
    # request 0: bonus row (new token) at 5, MASK rows at 6, 7, then 3 padding rows
    assert e.input_ids[:6].tolist() == [30, 99, 99, 0, 0, 0]
    assert e.positions[:3].tolist() == [5, 6, 7] and e.is_rejected[:6].tolist() == [False] * 3 + [True] * 3
    # request 1: accepted drafts at 9..11, bonus row at 12, MASK rows at 13, 14
    assert e.input_ids[6:].tolist() == [21, 22, 23, 40, 99, 99]
    assert e.positions[6:].tolist() == [9, 10, 11, 12, 13, 14]
    assert e.sample_rows.tolist() == [0, 1, 2, 9, 10, 11]
    # the bonus row takes the target hidden of SGLang's select_index row
    assert e.hidden_src[e.sample_rows.view(2, K)[:, 0]].tolist() == layout.select_index(acc, K).tolist()
    lay = layout.decode_extend_layout(rtt, torch.tensor([0, 1]), seq, K)
    assert lay.extend_lens.tolist() == [6, 6] and lay.seq_lens.tolist() == [11, 15]
    live = ~e.is_rejected
    assert torch.equal(lay.out_cache_loc[live], e.slot_mapping[live])   # live rows: the core's slots
    assert lay.out_cache_loc[:6].tolist() == [1 + 5 + j for j in range(6)]  # padding: the request's own window


def test_accept_lens_checked():
    with pytest.raises(ValueError, match="accept_lens"):
        layout.decode_step_input(torch.tensor([1]), torch.tensor([[1, 2, 3]]), torch.tensor([4]), torch.tensor([5]),
                                 torch.tensor([1]), torch.zeros(4, 3))


def test_cache_locs_bounds():
    with pytest.raises(ValueError, match="req_to_token rows hold"):
        layout.draft_extend_cache_locs(page_table(width=10), torch.tensor([0]), torch.tensor([6]), 6)


def test_prefill_step_input_and_layout():
    ids = torch.tensor([10, 11, 12, 20, 21])                     # request 0: 3 new rows after a cached prefix of 4
    ext, pre, tail = torch.tensor([3, 2]), torch.tensor([4, 0]), torch.tensor([13, 22])
    step = layout.prefill_step_input(ids, ext, pre, tail, torch.randn(5, 6))
    assert step.positions.tolist() == [4, 5, 6, 0, 1] and step.num_rejected is None
    assert step.query_start_loc.tolist() == [0, 3, 5]
    e = expand_metadata(step.token_ids, step.positions, step.query_start_loc, None, step.next_token_ids, K, 99,
                        page_table().long(), 1, 40, impl="torch")
    assert e.input_ids.tolist() == [11, 12, 13, 99, 99, 21, 22, 99, 99]
    assert e.positions.tolist() == [4, 5, 6, 7, 8, 0, 1, 2, 3]
    seq_after = pre + ext
    assert layout.prefill_mask_positions(seq_after, K).tolist() == [[7, 8], [2, 3]]
    mask_locs = torch.tensor([[900, 901], [902, 903]])
    lay = layout.prefill_extend_layout(torch.tensor([50, 51, 52, 60, 61]), ext, pre, mask_locs, K)
    assert lay.out_cache_loc.tolist() == [50, 51, 52, 900, 901, 60, 61, 902, 903]
    assert lay.extend_lens.tolist() == [5, 4] and lay.seq_lens.tolist() == [9, 4]


def test_alloc_len_per_decode():
    assert layout.alloc_len_per_decode(3, 4) == 6                 # stock chain: max(K, K+1) = 4 < 2K
    assert layout.alloc_len_per_decode(1, 2) == 2
    with pytest.raises(ValueError):
        layout.decode_window(0)


@pytest.mark.parametrize("K", range(1, 17))
def test_decode_reserve_covers_the_overlap_lag(K):
    """SGLang reserves 2 * alloc_len_per_decode slots past the committed length; under the overlap scheduler that
    length lags one verify step (up to K+1 tokens), and the step then writes its verify window and its 2K-row draft
    window past the current length: all inside the reserve (and nothing to spare at lag 2, as for SGLang's EAGLE)."""
    reserve = 2 * layout.alloc_len_per_decode(K, K + 1)
    assert layout.decode_reach(K, 0) == 2 * K if K > 1 else layout.decode_reach(K, 0) == 2
    assert layout.decode_reach(K, 1) <= reserve
    # brute force over every accepted count of the lagging step: the last slot any row writes
    for acc in range(1, K + 2):
        cur = acc                                                   # committed length 0, one step not counted
        last = max(cur + K, cur + layout.decode_window(K) - 1)      # verify window, then the draft window
        assert last < reserve
    with pytest.raises(ValueError):
        layout.decode_reach(K, -1)


def test_prefill_extend_layout_on_a_batch():
    """The prompt rows of each request, then its K-1 MASK rows, for prompts of different lengths (no host read
    of the lengths: a scatter on the device)."""
    K, ext, pre = 4, torch.tensor([2, 1, 3]), torch.tensor([0, 5, 2])
    prompt = torch.tensor([10, 11, 20, 30, 31, 32])
    mask = torch.tensor([[100, 101, 102], [200, 201, 202], [300, 301, 302]])
    lay = layout.prefill_extend_layout(prompt, ext, pre, mask, K)
    assert lay.out_cache_loc.tolist() == [10, 11, 100, 101, 102, 20, 200, 201, 202, 30, 31, 32, 300, 301, 302]
    assert lay.extend_lens.tolist() == [5, 4, 6] and lay.seq_lens.tolist() == [5, 9, 8]
    one = layout.prefill_extend_layout(prompt, ext, pre, torch.zeros((3, 0), dtype=torch.int64), 1)
    assert one.out_cache_loc.tolist() == prompt.tolist()


def test_slot_mapping_rule_is_req_to_token():
    rtt = page_table()
    r, pos = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 7])
    bt, bs, mml = layout.block_table(rtt, torch.tensor([0, 1]))
    assert compute_slot_mapping(bt.long(), r, pos, bs, mml).tolist() == [4, 101, 108]
