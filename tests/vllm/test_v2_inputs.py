"""Model runner V2's P-EAGLE step inputs (`pedagle_backends.vllm.v2_inputs`), on the CPU: what the V2
speculator writes into its persistent buffers equals pedagle_core's reference expansion, the CUDA-graph padding
is inert, and bad arguments are refused by name. Pure PyTorch (no vLLM engine), so it runs on every vLLM in CI."""

from __future__ import annotations

import pytest
import torch

from pedagle_backends.vllm.v2_inputs import (DraftBuffers, bonus_positions, next_token_ids, prepare_peagle_inputs,
                                             uniform_query_len)
from pedagle_core.expand import expand_metadata_reference, place_hidden_reference

pytestmark = pytest.mark.vllm_hooks

MAX_TOKENS, MAX_REQS, H, BLOCK, MAX_LEN = 96, 6, 8, 4, 64


def _buffers(K: int) -> DraftBuffers:
    return DraftBuffers(input_ids=torch.full((MAX_TOKENS,), -7, dtype=torch.int32),
                        positions=torch.full((MAX_TOKENS,), -7, dtype=torch.int64),
                        hidden_states=torch.full((MAX_TOKENS, H), -7.0),
                        slot_mapping=torch.full((MAX_TOKENS,), -7, dtype=torch.int64),
                        query_start_loc=torch.full((MAX_REQS + 1,), -7, dtype=torch.int32),
                        seq_lens=torch.full((MAX_REQS,), -7, dtype=torch.int32),
                        sample_rows=torch.full((MAX_REQS * K,), -7, dtype=torch.int64))


def _step(lens: list[int], rejected: list[int], computed: list[int], seed: int = 0):
    """A V2 target batch: query lengths, rejected rows, tokens already computed per request."""
    g = torch.Generator().manual_seed(seed)
    B = len(lens)
    qsl = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    positions = torch.cat([torch.arange(c, c + n) for c, n in zip(computed, lens)])
    T = int(qsl[-1])
    return dict(token_ids=torch.randint(2, 50, (T,), generator=g, dtype=torch.int32), positions=positions,
                query_start_loc=qsl, num_rejected=torch.tensor(rejected, dtype=torch.int32),
                next_tokens=torch.randint(2, 50, (B,), generator=g), fc_out=torch.randn(T, H, generator=g),
                mask_vec=torch.randn(H, generator=g),
                seq_lens=torch.tensor([c + n for c, n in zip(computed, lens)], dtype=torch.int32),
                block_table=torch.randperm(B * 16, generator=g).view(B, 16).int())


@pytest.mark.parametrize("K, lens, rejected, computed", [
    (3, [4, 4, 4], [0, 2, 3], [10, 7, 30]),          # a decode step: K+1 rows each, 2K drafter rows each
    (3, [4, 9, 1], [1, 0, 0], [12, 0, 40]),          # mixed: decode, a prefill chunk, a one-token request
    (1, [2, 2], [1, 0], [5, 9]),                     # K = 1: no MASK rows
    (5, [6, 3], [5, 0], [0, 3]),
])
def test_buffers_equal_the_reference_expansion(K, lens, rejected, computed):
    step = _step(lens, rejected, computed)
    buf = _buffers(K)
    B, T = len(lens), sum(lens)
    n = T + B * (K - 1)
    padded = n + 5
    out = prepare_peagle_inputs(buf, **step, K=K, mask_token_id=1, block_size=BLOCK, max_model_len=MAX_LEN,
                                num_scheduled_tokens=lens, num_rows_padded=padded, impl="torch")
    ref = expand_metadata_reference(step["token_ids"], step["positions"], step["query_start_loc"],
                                    step["num_rejected"], step["next_tokens"], K, 1, step["block_table"], BLOCK,
                                    MAX_LEN)
    hidden = place_hidden_reference(step["fc_out"], ref, step["mask_vec"])
    assert (out.num_reqs, out.num_rows) == (B, n)
    assert out.max_query_len == max(lens) + K - 1
    assert out.uniform == all(x == K + 1 for x in lens)
    assert torch.equal(buf.input_ids[:n].long(), ref.input_ids)
    assert torch.equal(buf.positions[:n], ref.positions)
    assert torch.equal(buf.hidden_states[:n], hidden)
    assert torch.equal(buf.slot_mapping[:n], ref.slot_mapping)
    assert torch.equal(buf.query_start_loc[:B + 1].long(), ref.query_start_loc)
    assert torch.equal(buf.sample_rows[:B * K], ref.sample_rows)
    # each drafter query is K-1 rows longer than the target's, so its last live row sits at seq_len + K - 2
    assert torch.equal(buf.seq_lens[:B], step["seq_lens"] + K - 1)
    # CUDA-graph padding: rows write no KV, padding requests have empty queries and no length
    assert (buf.slot_mapping[n:padded] == -1).all() and (buf.input_ids[n:padded] == 0).all()
    assert (buf.slot_mapping[padded:] == -7).all()          # nothing past the padded rows is touched
    assert (buf.query_start_loc[B + 1:] == n).all() and (buf.seq_lens[B:] == 0).all()
    assert (buf.sample_rows[B * K:] == 0).all()
    # the recorder's bonus positions: the row each request's first draft is read from
    first = ref.sample_rows.view(B, K)[:, 0]
    assert torch.equal(bonus_positions(buf, B, K), ref.positions[first])
    assert torch.equal(ref.input_ids[first], step["next_tokens"])


def test_uniform_decode_batch_is_2K_rows_per_request():
    K = 4
    step = _step([K + 1] * 3, [0, 1, 4], [3, 20, 9])
    buf = _buffers(K)
    out = prepare_peagle_inputs(buf, **step, K=K, mask_token_id=1, block_size=BLOCK, max_model_len=MAX_LEN,
                                num_scheduled_tokens=[K + 1] * 3, impl="torch")
    assert out.uniform and uniform_query_len([K + 1] * 3, K) == 2 * K
    assert buf.query_start_loc[:4].tolist() == [0, 2 * K, 4 * K, 6 * K]
    assert uniform_query_len([K + 1, K], K) is None and uniform_query_len([], K) is None


def test_next_token_ids_takes_sampled_or_the_next_prompt_token():
    idx = torch.tensor([2, 0, 1])
    last_sampled = torch.tensor([10, 11, 12])
    prefill = torch.tensor([20, 21, 22])
    sampled = torch.tensor([1, 0, 3])
    assert next_token_ids(idx, sampled, last_sampled, prefill).tolist() == [12, 20, 11]
    # vLLM 0.32+: [lookahead, max_reqs], row 0 is the next prompt token
    assert next_token_ids(idx, sampled, last_sampled, torch.stack([prefill, prefill + 100])).tolist() == [12, 20, 11]
    # vLLM 0.26-0.34 hand RequestState.last_sampled_tokens, [max_reqs, 1]: still one token per request
    out = next_token_ids(idx, sampled, last_sampled[:, None], prefill)
    assert out.shape == (3,) and out.tolist() == [12, 20, 11]


def test_bad_arguments_are_named():
    K = 3
    step = _step([4, 4], [0, 1], [5, 5])
    with pytest.raises(ValueError, match="num_scheduled_tokens"):
        prepare_peagle_inputs(_buffers(K), **step, K=K, mask_token_id=1, block_size=BLOCK, max_model_len=MAX_LEN,
                              num_scheduled_tokens=[4, 3], impl="torch")
    with pytest.raises(ValueError, match="num_rows_padded"):
        prepare_peagle_inputs(_buffers(K), **step, K=K, mask_token_id=1, block_size=BLOCK, max_model_len=MAX_LEN,
                              num_scheduled_tokens=[4, 4], num_rows_padded=3, impl="torch")
    bad = _buffers(K)
    bad.sample_rows = torch.zeros(MAX_REQS * K - 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="sample_rows"):
        prepare_peagle_inputs(bad, **step, K=K, mask_token_id=1, block_size=BLOCK, max_model_len=MAX_LEN,
                              num_scheduled_tokens=[4, 4], impl="torch")
    with pytest.raises(ValueError, match="fc_out"):
        prepare_peagle_inputs(_buffers(K), **{**step, "fc_out": step["fc_out"][:-1]}, K=K, mask_token_id=1,
                              block_size=BLOCK, max_model_len=MAX_LEN, num_scheduled_tokens=[4, 4], impl="torch")
