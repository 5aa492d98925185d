"""The V2 speculator's drafting math on the CPU, against pedagle_core's reference drafting.

`PedagleSpeculator.propose` = `v2_inputs.prepare_peagle_inputs` into the persistent buffers, one drafter forward
whose attention follows V2's metadata (KV written at ``slot_mapping``; query row j of request r at position
``seq_lens[r] - query_len_r + j``, keys read through the block table), then argmax over the ``sample_rows``.
Here that forward runs with a small paged attention written from those rules (`PagedAttention`), over a
random P-EAGLE drafter, for a prefill step and then a decode step with rejections (CUDA-graph padding rows
included), and the drafts must equal `pedagle_core.draft.draft_parallel` over pedagle's own KV cache exactly
(float32). A wrong ``seq_lens`` (the K-1 extension), slot mapping or ``query_start_loc`` changes drafts."""

from __future__ import annotations

import pytest
import torch

from pedagle_backends.vllm.v2_inputs import DraftBuffers, prepare_peagle_inputs
from pedagle_core.attention import ContiguousKVCache
from pedagle_core.config import DrafterConfig
from pedagle_core.draft import StepInput, draft_parallel
from pedagle_core.model import Drafter

pytestmark = pytest.mark.vllm_hooks

V, HT, N_AUX, MASK = 96, 32, 3, 1
BLOCK, MAX_LEN, MAX_ROWS, MAX_REQS = 4, 64, 128, 4


def _drafter(seed: int = 0) -> Drafter:
    cfg = DrafterConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, intermediate_size=96, vocab_size=V, target_hidden_size=HT,
                        aux_layer_ids=(1, 2, 3), mask_token_id=MASK, parallel_depth=8, max_position_embeddings=128)
    g = torch.Generator().manual_seed(seed)
    d = Drafter(cfg).float().eval()
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1) + (1.0 if p.dim() == 1 else 0))
    return d


class PagedAttention:
    """Attention as V2's metadata describes it (module docstring); k/v caches [n_slots, kv_heads, D]."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, buf: DraftBuffers, num_reqs: int, block_table: torch.Tensor,
                 block_size: int = BLOCK):
        self.k, self.v, self.buf, self.B, self.block_table = k, v, buf, num_reqs, block_table
        self.block_size = block_size

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window) -> torch.Tensor:
        assert layer_idx == 0 and window is None
        n = q.shape[0]
        slots = self.buf.slot_mapping[:n]
        live = slots >= 0
        self.k[slots[live]], self.v[slots[live]] = k[live], v[live]
        out = torch.zeros_like(q)
        qsl, seq_lens = self.buf.query_start_loc.long(), self.buf.seq_lens.long()
        rep = q.shape[1] // k.shape[1]
        for r in range(self.B):
            s, e, L = int(qsl[r]), int(qsl[r + 1]), int(seq_lens[r])
            for i in range(s, e):
                pos = L - (e - s) + (i - s)
                key_pos = torch.arange(max(pos, 0) + 1)       # (a wrong seq_len may put a row before 0)
                bs = self.block_size
                ks = self.block_table[r, key_pos // bs].long() * bs + key_pos % bs
                kk = self.k[ks].repeat_interleave(rep, dim=1)          # [P, hq, D]
                vv = self.v[ks].repeat_interleave(rep, dim=1)
                w = torch.softmax(torch.einsum("hd,phd->hp", q[i], kk) * q.shape[-1] ** -0.5, dim=-1)
                out[i] = torch.einsum("hp,phd->hd", w, vv)
        return out


def _buffers(rows: int, reqs: int, K: int) -> DraftBuffers:
    return DraftBuffers(input_ids=torch.zeros(rows, dtype=torch.int32), positions=torch.zeros(rows, dtype=torch.int64),
                        hidden_states=torch.zeros(rows, 64), slot_mapping=torch.zeros(rows, dtype=torch.int64),
                        query_start_loc=torch.zeros(reqs + 1, dtype=torch.int32),
                        seq_lens=torch.zeros(reqs, dtype=torch.int32),
                        sample_rows=torch.zeros(reqs * K, dtype=torch.int64))


def _v2_drafts(d: Drafter, buf: DraftBuffers, cache: tuple, step: StepInput, seq_lens: torch.Tensor,
               block_table: torch.Tensor, K: int, pad_rows: int) -> torch.Tensor:
    B = step.batch_size
    lens = (step.query_start_loc[1:] - step.query_start_loc[:-1]).tolist()
    n = int(step.query_start_loc[-1]) + B * (K - 1)
    with torch.no_grad():
        prepare_peagle_inputs(buf, token_ids=step.token_ids, positions=step.positions,
                              query_start_loc=step.query_start_loc, num_rejected=step.num_rejected,
                              next_tokens=step.next_token_ids, fc_out=d.project_hidden(step.aux_hidden),
                              mask_vec=d.mask_hidden_projected(), seq_lens=seq_lens, K=K, mask_token_id=MASK,
                              block_table=block_table, block_size=BLOCK, max_model_len=MAX_LEN,
                              num_scheduled_tokens=lens, num_rows_padded=n + pad_rows, impl="torch")
        rows = n + pad_rows                                    # a FULL graph runs the padded rows too
        attn = PagedAttention(*cache, buf, B, block_table)
        out, _ = d(buf.input_ids[:rows].long(), buf.positions[:rows], buf.hidden_states[:rows], attn)
        logits = d.compute_logits(out[buf.sample_rows[:B * K]])
        return d.to_target_ids(logits.argmax(-1)).view(B, K)


@pytest.mark.parametrize("K", [1, 3, 5])
def test_v2_drafts_equal_the_reference_over_two_steps(K):
    d = _drafter()
    g = torch.Generator().manual_seed(K)
    prompt_lens = [5, 9, 3]
    B = len(prompt_lens)
    buf = _buffers(MAX_ROWS, MAX_REQS, K)
    block_table = torch.randperm(B * 16, generator=g).view(B, 16).int()
    paged = (torch.zeros(B * 16 * BLOCK + 1, 2, 16), torch.zeros(B * 16 * BLOCK + 1, 2, 16))
    ref_cache = ContiguousKVCache(1, B, MAX_LEN, 2, 16, impl="torch")
    view = ref_cache.for_requests(torch.arange(B))

    def step_of(lens, starts, rejected):
        qsl = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)))
        T = int(qsl[-1])
        return StepInput(token_ids=torch.randint(2, V, (T,), generator=g),
                         positions=torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens)]),
                         query_start_loc=qsl, num_rejected=rejected,
                         next_token_ids=torch.randint(2, V, (B,), generator=g),
                         aux_hidden=torch.randn(T, N_AUX * HT, generator=g))

    # step 1: the prefill (nothing rejected); step 2: a decode step of K+1 rows per request, rejections 0..K
    prefill = step_of(prompt_lens, [0] * B, torch.zeros(B, dtype=torch.long))
    decode = step_of([K + 1] * B, prompt_lens, torch.tensor([0, K, min(1, K)]))
    for step, seq_lens, pad in ((prefill, torch.tensor(prompt_lens), 0),
                                (decode, torch.tensor(prompt_lens) + K + 1, 2 * K)):
        ref = draft_parallel(d, step, K, view).token_ids
        got = _v2_drafts(d, buf, paged, step, seq_lens, block_table, K, pad)
        assert torch.equal(got, ref), (got, ref)


def test_a_wrong_query_extension_changes_the_drafts():
    """The check has teeth: V2 metadata whose seq_lens lack the K-1 extension gives other drafts."""
    K = 4
    d = _drafter(1)
    g = torch.Generator().manual_seed(0)
    lens = [7, 6]
    qsl = torch.tensor([0, 7, 13])
    step = StepInput(token_ids=torch.randint(2, V, (13,), generator=g),
                     positions=torch.cat([torch.arange(7), torch.arange(6)]), query_start_loc=qsl,
                     num_rejected=torch.zeros(2, dtype=torch.long),
                     next_token_ids=torch.randint(2, V, (2,), generator=g),
                     aux_hidden=torch.randn(13, N_AUX * HT, generator=g))
    buf = _buffers(64, 2, K)
    bt = torch.arange(32).view(2, 16).int()
    ref_cache = ContiguousKVCache(1, 2, MAX_LEN, 2, 16, impl="torch").for_requests(torch.arange(2))
    ref = draft_parallel(d, step, K, ref_cache).token_ids
    cache = lambda: (torch.zeros(129, 2, 16), torch.zeros(129, 2, 16))   # noqa: E731
    ok = _v2_drafts(d, buf, cache(), step, torch.tensor(lens), bt, K, 0)
    assert torch.equal(ok, ref)
    # the same rows with seq_lens not extended by K-1: every row attends as if K-1 positions earlier
    wrong = _v2_drafts(d, buf, cache(), step, torch.tensor(lens) - (K - 1), bt, K, 0)
    assert not torch.equal(wrong, ref)
