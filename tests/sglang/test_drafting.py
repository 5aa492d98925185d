"""The drafter on SGLang's own attention stack, on the CPU, against pedagle's reference drafting.

pedagle's SGLang drafter (`PedagleSglangDrafter`: pedagle_core's model + one RadixAttention per layer, loaded by
pedagle_core.formats) runs over SGLang's real ``ReqToTokenPool`` / ``MHATokenToKVPool`` with SGLang's
``TorchNativeAttnBackend`` (the attention backend that runs on a CPU) under SGLang's forward context, with the
worker's row layout (`layout`) and expansion (`drafting.plan_step`). The same steps go through
`pedagle_core.draft.draft_parallel` with the reference `ContiguousKVCache`. Drafts must be equal and logits
close, over a prefill and several decode steps with varied acceptance, a sliding-window layer and a reduced
draft vocabulary (d2t). Not covered here: SGLang's CUDA attention backends, the scheduler and the worker's
forward loop (see bench/sglang_gpu_e2e.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pedagle_backends.sglang import layout
from pedagle_backends.sglang.drafting import greedy_drafts, plan_step
from pedagle_core.attention import ContiguousKVCache
from pedagle_core.draft import StepInput, draft_parallel
from tiny import MASK_ID, TARGET_HIDDEN, VOCAB, save_checkpoint, tiny_drafter

pytestmark = pytest.mark.sglang_versions          # part of the --sglang-cases versions subset

MAXLEN = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tiny_drafter(seed=3, num_layers=2, window=4)
    root = tmp_path_factory.mktemp("drafting")
    save_checkpoint(d, root / "vllm", "vllm")
    save_checkpoint(d, root / "spec", "speculators")
    return d, root


def sglang_drafter(path):
    from pedagle_backends.sglang.model import PedagleSglangDrafter

    m = PedagleSglangDrafter(config=None, checkpoint=path)
    m.load_weights(iter(()))
    return m.float().eval()


@pytest.mark.parametrize("fmt", ["vllm", "spec"])
def test_loads_every_format_with_mask_hidden(ckpt, fmt):
    d, root = ckpt
    m = sglang_drafter(root / fmt)
    ref = d.state_dict()
    got = m.drafter.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k].float(), ref[k].float()), k
    assert torch.count_nonzero(got["mask_hidden"]) > 0                  # the learned MASK input is loaded
    assert m.has_own_embed_tokens and m.has_own_lm_head


def test_missing_mask_hidden_is_an_error(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    from pedagle_core.formats import CheckpointError
    from pedagle_backends.sglang.model import PedagleSglangDrafter

    d, root = ckpt
    import shutil

    shutil.copytree(root / "vllm", tmp_path / "h")
    f = next((tmp_path / "h").glob("*.safetensors"))
    t = load_file(str(f))
    t = {k: v for k, v in t.items() if "mask_hidden" not in k}
    save_file(t, str(f))
    with pytest.raises(CheckpointError, match="mask_hidden"):
        m = PedagleSglangDrafter(config=None, checkpoint=tmp_path / "h")
        m.load_weights(iter(()))


class SglangSide:
    """SGLang's pools + torch-native attention backend, page table: request b, position p -> slot 1+b*MAXLEN+p."""

    def __init__(self, model, B):
        from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool

        cfg = model.pedagle_config
        self.model, self.B = model, B
        self.rtt_pool = ReqToTokenPool(size=B, max_context_len=MAXLEN, device="cpu", enable_memory_saver=False)
        self.kv = MHATokenToKVPool(size=B * MAXLEN + 8, page_size=1, dtype=torch.float32,
                                   head_num=cfg.num_key_value_heads, head_dim=int(cfg.head_dim),
                                   layer_num=cfg.num_hidden_layers, device="cpu", enable_memory_saver=False)
        self.req = torch.arange(1, B + 1)                                  # row 0 of req_to_token is SGLang's pad row
        rtt = self.rtt_pool.req_to_token
        rtt[self.req] = (1 + torch.arange(B)[:, None] * MAXLEN + torch.arange(MAXLEN)[None]).to(rtt.dtype)
        runner = SimpleNamespace(device="cpu", req_to_token_pool=self.rtt_pool, token_to_kv_pool=self.kv)
        self.backend = TorchNativeAttnBackend(runner)

    @property
    def rtt(self):
        return self.rtt_pool.req_to_token

    def run(self, step: StepInput, K: int, lay: layout.ExtendLayout, mode):
        from sglang.srt.model_executor.forward_batch_info import ForwardBatch
        from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

        plan = plan_step(step, K, MASK_ID)
        e = plan.expanded
        fb = ForwardBatch(forward_mode=mode, batch_size=self.B, input_ids=e.input_ids, req_pool_indices=self.req,
                          seq_lens=lay.seq_lens, out_cache_loc=lay.out_cache_loc, seq_lens_sum=int(lay.seq_lens.sum()),
                          positions=e.positions, extend_prefix_lens=lay.prefix_lens, extend_seq_lens=lay.extend_lens,
                          spec_info=SimpleNamespace(pedagle_plan=plan))
        self.backend.init_forward_metadata(fb)
        with torch.no_grad(), forward_context(ForwardContext(attn_backend=self.backend)):
            logits = self.model.compute_sample_logits(fb)
        assert logits.shape == (self.B * K, self.model.pedagle_config.draft_vocab_size)   # sample rows only
        ids, _ = greedy_drafts(self.model.drafter, logits, self.B, K)
        return ids, logits


def reference_logits(drafter, step, K, cache, rows):
    """Logits of the sample rows through the core's reference path (same expansion, reference cache)."""
    from pedagle_core.draft import forward_expanded

    with torch.no_grad():
        batch, out, _ = forward_expanded(drafter, step, K, cache.for_requests(rows), MASK_ID)
        return drafter.compute_logits(out[batch.sample_rows])


@pytest.mark.parametrize("K", [1, 2, 4])
def test_drafts_equal_reference_over_prefill_and_decode_steps(ckpt, K):
    d, root = ckpt
    model = sglang_drafter(root / "vllm")
    ref = d
    B = 3
    g = torch.Generator().manual_seed(10 + K)
    sg = SglangSide(model, B)
    cfg = ref.config
    cache = ContiguousKVCache(cfg.num_hidden_layers, B, MAXLEN, cfg.num_key_value_heads, int(cfg.head_dim),
                              dtype=torch.float32, impl="torch")
    rows = torch.arange(B)
    n_aux = cfg.fc_input_size
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    # ---- prefill: prompts of 5, 9, 2 tokens (no cached prefix)
    lens = torch.tensor([5, 9, 2])
    ids = torch.randint(2, VOCAB, (int(lens.sum()),), generator=g)
    tail = torch.randint(2, VOCAB, (B,), generator=g)
    aux = torch.randn(int(lens.sum()), n_aux, generator=g)
    step = layout.prefill_step_input(ids, lens, torch.zeros(B, dtype=torch.long), tail, aux)
    # the worker's scratch MASK slots: here the request's own slots at positions seq_len .. seq_len+K-2
    mpos = layout.prefill_mask_positions(lens, K)
    mask_locs = sg.rtt[sg.req[:, None], mpos].long()
    prompt_locs = torch.cat([sg.rtt[sg.req[b], : int(lens[b])].long() for b in range(B)])
    lay = layout.prefill_extend_layout(prompt_locs, lens, torch.zeros(B, dtype=torch.long), mask_locs, K)
    got, lg = sg.run(step, K, lay, ForwardMode.EXTEND)
    want = draft_parallel(ref, step, K, cache.for_requests(rows))
    assert torch.equal(got, want.token_ids)
    torch.testing.assert_close(lg, reference_logits(ref, step, K, cache, rows), rtol=1e-4, atol=1e-4)

    # ---- decode steps: verify [bonus, drafts] with varied acceptance
    seq_lens, bonus, drafts = lens.clone(), tail.clone(), got
    for s in range(4):
        acc = torch.randint(1, K + 2, (B,), generator=g)                   # accepted + 1, in [1, K+1]
        if s == 0:
            acc[0], acc[1] = 1, K + 1                                         # none / all accepted
        new_bonus = torch.randint(2, VOCAB, (B,), generator=g)
        aux = torch.randn(B * (K + 1), n_aux, generator=g)
        step = layout.decode_step_input(bonus, drafts, seq_lens, acc, new_bonus, aux)
        # the same step as pedagle's reference engine builds it (rows: last token + K drafts at c .. n+k)
        ref_step = StepInput(token_ids=torch.cat([torch.cat([bonus[b:b + 1], drafts[b]]) for b in range(B)]),
                             positions=torch.cat([torch.arange(int(seq_lens[b]), int(seq_lens[b]) + K + 1)
                                                  for b in range(B)]),
                             query_start_loc=torch.arange(B + 1) * (K + 1), num_rejected=K - (acc - 1),
                             next_token_ids=new_bonus, aux_hidden=aux)
        for f in ("token_ids", "positions", "query_start_loc", "num_rejected", "next_token_ids"):
            assert torch.equal(getattr(step, f), getattr(ref_step, f)), f
        lay = layout.decode_extend_layout(sg.rtt, sg.req, seq_lens, K)
        got, lg = sg.run(step, K, lay, ForwardMode.DRAFT_EXTEND_V2)
        want = draft_parallel(ref, ref_step, K, cache.for_requests(rows))
        assert torch.equal(got, want.token_ids), f"decode step {s}"
        torch.testing.assert_close(lg, reference_logits(ref, ref_step, K, cache, rows), rtol=1e-4, atol=1e-4)
        seq_lens = seq_lens + acc
        bonus, drafts = new_bonus, got
    assert int(seq_lens.max()) + layout.decode_window(K) <= MAXLEN
