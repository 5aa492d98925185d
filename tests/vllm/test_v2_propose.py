"""`PedagleSpeculator.propose` itself on the CPU (vLLM 0.26-0.33's V2 interface, built from a real `VllmConfig`).

Model runner V2 cannot run on vLLM's CPU build (no Triton), so what the runner would hand the speculator is made
here: the speculator is constructed by its real constructor from the engine config vLLM builds for the tiny
family's P-EAGLE head; what ``load_model`` and ``set_attn`` would attach (the drafter, its KV-cache group, block
table, slot buffer) is attached by hand; vLLM's attention-metadata builder is replaced by one that records its
arguments, and the drafter's attention follows those arguments over a paged cache (`test_v2_math.PagedAttention`).
``propose`` then gets a V2-shaped call (positional, as the 0.26 runner makes it) for a prefill step and a decode
step with rejections; its drafts must equal `pedagle_core.draft.draft_parallel` step by step, the metadata it
builds must describe the extended queries, and the recorder must write what V1's writes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pedagle_core.attention import ContiguousKVCache
from pedagle_core.draft import StepInput, draft_parallel
from pedagle_core.formats import load_drafter

from test_v2_math import PagedAttention

pytestmark = pytest.mark.vllm_hooks

K, BLOCK, MAX_REQS = 3, 16, 4


class StandInModel:
    """What the speculator calls on pedagle's vLLM model class, over the same pedagle Drafter."""

    def __init__(self, drafter, spec, block_table, cache):
        self.d, self.spec, self.block_table, self.cache = drafter, spec, block_table, cache
        self.pedagle_config = drafter.config

    def combine_hidden_states(self, h):
        return self.d.project_hidden(h)

    def compute_logits(self, h):
        return self.d.compute_logits(h)

    def __call__(self, input_ids, positions, hidden_states, inputs_embeds=None):
        attn = PagedAttention(*self.cache, self.spec.buffers(), MAX_REQS, self.block_table, BLOCK)
        return self.d(input_ids.long(), positions, hidden_states, attn)


@pytest.fixture()
def speculator(family, monkeypatch, tmp_path):
    from vllm.engine.arg_utils import EngineArgs

    from pedagle_backends.vllm import v2_speculator

    record = tmp_path / "drafts.jsonl"
    monkeypatch.setenv("PEDAGLE_RECORD_DRAFTS", str(record))
    cfg = EngineArgs(model=family["target"], dtype="float32", max_model_len=256, max_num_seqs=MAX_REQS,
                     max_num_batched_tokens=256, skip_tokenizer_init=True, kv_cache_memory_bytes=64 << 20,
                     speculative_config={"method": "eagle3", "model": family["peagle"], "num_speculative_tokens": K,
                                         "parallel_drafting": True}).create_engine_config()
    spec = v2_speculator.PedagleSpeculator(cfg, torch.device("cpu"))
    drafter = load_drafter(family["peagle"], target=family["target"]).float().eval()
    kv = drafter.config.num_key_value_heads
    cache = (torch.zeros(MAX_REQS * 16 * BLOCK + 1, kv, 64), torch.zeros(MAX_REQS * 16 * BLOCK + 1, kv, 64))
    block_table = torch.zeros(MAX_REQS, 16, dtype=torch.int32)
    block_table[:] = torch.randperm(MAX_REQS * 16, generator=torch.Generator().manual_seed(0)).view(MAX_REQS, 16)
    # what load_model / set_attn attach on a GPU
    spec.model = StandInModel(drafter, spec, block_table, cache)
    spec.mask_token_id = int(drafter.config.mask_token_id)
    with torch.no_grad():
        spec.mask_vec = drafter.mask_hidden_projected()
    spec.attn_groups, spec.draft_group, spec.block_size = [["draft layers"]], 0, BLOCK
    spec.draft_slots = torch.full((1, spec.max_rows), -1, dtype=torch.int64)
    spec.block_tables = SimpleNamespace(input_block_tables=[block_table])
    group = SimpleNamespace(layer_names=["model.layers.4.self_attn.attn"])
    spec.kv_cache_config = SimpleNamespace(kv_cache_groups=[group])
    built = []
    monkeypatch.setattr(v2_speculator, "build_attn_metadata", lambda **kw: built.append(kw) or {"metadata": kw})
    return spec, drafter, record, built


def _batch(lens, starts, g, B):
    qsl = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    T = int(qsl[-1])
    return SimpleNamespace(num_reqs=B, num_tokens=T, num_scheduled_tokens=np.array(lens, dtype=np.int32),
                           idx_mapping=torch.tensor([2, 0, 1][:B], dtype=torch.int32),
                           input_ids=torch.randint(2, 100, (T,), generator=g, dtype=torch.int32),
                           positions=torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens)]),
                           query_start_loc=torch.from_numpy(qsl.copy()), query_start_loc_np=qsl,
                           seq_lens=torch.tensor([s + n for s, n in zip(starts, lens)], dtype=torch.int32),
                           seq_lens_cpu_upper_bound=torch.tensor([s + n for s, n in zip(starts, lens)]),
                           req_ids=[f"{i}-r" for i in range(B)])


def test_propose_equals_the_reference_and_records(speculator):
    spec, drafter, record, built = speculator
    g = torch.Generator().manual_seed(1)
    B, prompt_lens = 3, [5, 9, 4]
    ref_view = ContiguousKVCache(1, B, 256, drafter.config.num_key_value_heads, 64, impl="torch").for_requests(
        torch.arange(B))
    last_sampled = torch.randint(2, 100, (MAX_REQS, 1), generator=g)       # RequestState.last_sampled_tokens
    next_prefill = torch.randint(2, 100, (MAX_REQS,), generator=g)
    steps = [(prompt_lens, [0] * B, [0] * B, [1, 1, 1]),                       # prefill (all sampled once)
             ([K + 1] * B, prompt_lens, [0, K, 1], [K + 1, 1, 3])]            # decode: rejections 0, K, 1
    for lens, starts, rejected, sampled in steps:
        batch = _batch(lens, starts, g, B)
        aux = [torch.randn(batch.num_tokens, 128, generator=g) for _ in range(3)]
        num_rejected = torch.tensor(rejected, dtype=torch.int32)
        num_sampled = torch.tensor(sampled, dtype=torch.int32)
        built.clear()
        drafts = spec.propose(batch, {}, {}, aux[-1], aux, num_sampled, num_rejected, last_sampled, next_prefill,
                              torch.zeros(MAX_REQS), torch.zeros(MAX_REQS, dtype=torch.int64))
        nxt = last_sampled[batch.idx_mapping.long(), 0]
        step = StepInput(token_ids=batch.input_ids.long(), positions=batch.positions,
                         query_start_loc=batch.query_start_loc.long(), num_rejected=num_rejected.long(),
                         next_token_ids=nxt, aux_hidden=torch.cat(aux, dim=-1))
        ref = draft_parallel(drafter, step, K, ref_view).token_ids
        assert torch.equal(drafts, ref), (drafts, ref)
        # the metadata describes queries K-1 rows longer than the target's, over the speculator's own buffers
        [kw] = built
        n = batch.num_tokens + B * (K - 1)
        assert kw["num_tokens"] == n and kw["num_reqs"] == B
        assert kw["query_start_loc_cpu"].tolist() == (batch.query_start_loc_np + np.arange(B + 1) * (K - 1)).tolist()
        assert kw["max_query_len"] == max(lens) + K - 1
        assert kw["seq_lens"].tolist() == (batch.seq_lens + K - 1).tolist()
        assert kw["seq_lens"].data_ptr() == spec.input_buffers.seq_lens.data_ptr()      # persistent buffers
        assert kw["slot_mappings"].data_ptr() == spec.draft_slots.data_ptr()
    records = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(records) == 2 and all(r["runner"] == "v2" and r["K"] == K for r in records)
    assert records[1]["req_ids"] == ["0-r", "1-r", "2-r"] and records[1]["num_rejected"] == [0, K, 1]
    # bonus row = the last accepted target row: position start + (K+1) - 1 - rejected
    assert records[1]["bonus_positions"] == [p + K - r for p, r in zip(prompt_lens, [0, K, 1])]
    assert records[1]["drafts"] == drafts.tolist()


def test_dummy_runs_stay_within_the_compiled_token_range(speculator):
    """The runner's memory profile (and compile warm-up) hands propose max_num_batched_tokens target rows:
    the drafter forward must not exceed that count (vLLM compiles it for token counts up to it only)."""
    spec, _, _, _ = speculator
    calls = []
    spec._draft = lambda num_reqs, num_tokens, *a, **kw: calls.append((num_reqs, num_tokens))
    g = torch.Generator().manual_seed(2)
    M = spec.max_num_tokens
    batch = _batch([M // MAX_REQS] * MAX_REQS, [0] * MAX_REQS, g, MAX_REQS)
    batch.idx_mapping = torch.arange(MAX_REQS, dtype=torch.int32)
    aux = [torch.randn(M, 128, generator=g) for _ in range(3)]
    ones, zeros = torch.ones(MAX_REQS, dtype=torch.int32), torch.zeros(MAX_REQS, dtype=torch.int32)
    last, nxt = torch.zeros(MAX_REQS, 1, dtype=torch.int64), torch.zeros(MAX_REQS, dtype=torch.int32)
    for skip_attn in (True, False):
        calls.clear()
        drafts = spec.propose(batch, None, None, aux[-1], aux, ones, zeros, last, nxt, torch.zeros(MAX_REQS),
                              torch.zeros(MAX_REQS, dtype=torch.int64), dummy_run=True,
                              skip_attn_for_dummy_run=skip_attn, is_profile=skip_attn)
        assert calls == [(MAX_REQS, M)] and drafts.shape == (MAX_REQS, K)
    # a real step that large (only vLLM's warm-up makes one) gets no drafts rather than an out-of-range forward
    calls.clear()
    drafts = spec.propose(batch, None, None, aux[-1], aux, ones, zeros, last, nxt, torch.zeros(MAX_REQS),
                          torch.zeros(MAX_REQS, dtype=torch.int64))
    assert calls == [] and drafts.tolist() == [[0] * K] * MAX_REQS


def test_probabilistic_draft_sampling_is_refused(family):
    from vllm.engine.arg_utils import EngineArgs

    from pedagle_backends.vllm.v2_speculator import PedagleSpeculator

    cfg = EngineArgs(model=family["target"], dtype="float32", max_model_len=256, max_num_seqs=MAX_REQS,
                     skip_tokenizer_init=True,
                     speculative_config={"method": "eagle3", "model": family["peagle"], "num_speculative_tokens": K,
                                         "parallel_drafting": True, "draft_sample_method": "probabilistic"}
                     ).create_engine_config()
    with pytest.raises(ValueError, match="draft_sample_method"):
        PedagleSpeculator(cfg, torch.device("cpu"))
